"""The leaderboard's words and links from published rows (the pipeline test checks it on a real run)."""

from __future__ import annotations

from cnnlab.report import markdown


def row(project: str, uri: str) -> dict:
    return {"project": project, "test_accuracy": 0.6512, "reported_accuracy": 0.621, "params": 263_402, "epochs": 3,
            "early_stopped": project == "p01", "selection": {"epoch": 2}, "finished": "2026-12-01T22:22:53+00:00",
            "epoch_cap": 3, "train_seconds": 9.5, "device": "2-core CPU (no GPU)", "mlflow_run_id": "abcdef0123",
            "mlflow_experiment_id": "1", "mlflow_tracking_uri": uri,
            "data": {"name": "cifar10", "source": "mirror: JPEG copy (c.tar.gz)", "md5": "65ee", "sha256": "f" * 64}}


def test_rows_name_data_cap_device_in_percent_and_link_their_tracking_server() -> None:
    text = markdown([row("p00", "http://mlflow.example.org:5000/"), row("p01", "sqlite:///mlflow.db")])
    assert "Data: cifar10, mirror: JPEG copy (c.tar.gz), prepared sha256 ffffffffffff." in text
    assert "Epochs capped at 3." in text and "Device: 2-core CPU (no GPU)." in text
    assert "| P00 | 65.12 | 62.10 | +3.02 | 263,402 | 3, kept 2 | 3 | 9.5 | ffffffffffff |" in text
    assert "| P01 | 65.12 | 62.10 | +3.02 | 263,402 | 3 (early stop), kept 2 | 3 |" in text
    assert "| 2-core CPU (no GPU) | 2026-12-01 |" in text
    assert "(http://mlflow.example.org:5000/#/experiments/1/runs/abcdef0123)" in text
    assert "(http://127.0.0.1:5000/#/experiments/1/runs/abcdef0123)" in text
