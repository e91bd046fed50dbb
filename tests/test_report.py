"""The leaderboard's words and links from published rows (the pipeline test checks it on a real run)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cnnlab.errors import UserError
from cnnlab.report import load_rows, markdown


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


def test_progress_shows_committed_figures_without_their_run_folder_and_the_report_refuses(tmp_path: Path) -> None:
    """A clone has the committed metrics/ but not outputs/ (DVC's): `--progress` shows those projects (no run
    link), leaves out the unpublished one; the report itself needs every run folder."""
    metrics, outputs = tmp_path / "metrics", tmp_path / "outputs"
    metrics.mkdir()
    (outputs / "p00").mkdir(parents=True)
    for project in ("p00", "p01"):
        figures = {k: v for k, v in row(project, "sqlite:///mlflow.db").items()
                   if not k.startswith("mlflow_") and k != "project"}
        (metrics / f"{project}.json").write_text(json.dumps(figures))
    (outputs / "p00" / "run.json").write_text(json.dumps({"mlflow_run_id": "abcdef0123", "mlflow_experiment_id": "1"}))
    rows = load_rows(["p00", "p01", "p02"], metrics, outputs, missing_ok=True)
    assert [r["project"] for r in rows] == ["p00", "p01"]
    text = markdown(rows)
    assert "/#/experiments/1/runs/abcdef0123)" in text
    assert "| P01 | 65.12 | 62.10 |" in text and text.count("runs/abcdef0123") == 1
    with pytest.raises(UserError, match=r"p01/run.json is missing: run `dvc repro`"):
        load_rows(["p00", "p01"], metrics, outputs)
