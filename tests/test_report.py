"""The leaderboard's words and links from published rows (the pipeline test checks it on a real run)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cnnlab.errors import UserError
from cnnlab.report import load_rows, markdown
from tests.conftest import ROOT, job_env


def row(project: str, uri: str, seed: int = 42, accuracy: float = 0.6512) -> dict:
    return {"project": project, "test_accuracy": accuracy, "reported_accuracy": 0.621, "params": 263_402, "epochs": 3,
            "early_stopped": project == "p01", "selection": {"epoch": 2}, "finished": "2026-12-01T22:22:53+00:00",
            "epoch_cap": 3, "train_seconds": 9.5, "device": "2-core CPU (no GPU)", "mlflow_run_id": "abcdef0123",
            "mlflow_experiment_id": "1", "mlflow_tracking_uri": uri,
            "data": {"name": "cifar10", "source": "mirror: JPEG copy (c.tar.gz)", "md5": "65ee", "sha256": "f" * 64},
            "seed": seed}


def test_rows_name_data_cap_device_in_percent_and_link_their_tracking_server() -> None:
    text = markdown([row("p00", "http://mlflow.example.org:5000/"), row("p01", "sqlite:///mlflow.db")])
    assert "Data: cifar10, mirror: JPEG copy (c.tar.gz), prepared sha256 ffffffffffff." in text
    assert "Epochs capped at 3." in text and "Machines: 2-core CPU (no GPU)." in text
    assert "| P00 | 42 | 65.12 | +3.02 | 3, kept 2 | 3 | 9.5 | ffffffffffff |" in text
    assert "| P01 | 42 | 65.12 | +3.02 | 3 (early stop), kept 2 | 3 |" in text
    assert "| P00 | 1 | 65.12 | – | – | 65.12–65.12 | 62.10 | – | 263,402 | 3.0 | 10 |" in text
    assert "| 2-core CPU (no GPU) | 2026-12-01 |" in text
    assert "(http://mlflow.example.org:5000/#/experiments/1/runs/abcdef0123?workflowType=machine_learning)" in text
    assert "(http://127.0.0.1:5000/#/experiments/1/runs/abcdef0123?workflowType=machine_learning)" in text
    assert "not in a clone" in text
    assert "| [metrics](../metrics/s42/p00.json), [curves](../plots/s42/p00/learning_curves.png) | [abcdef01](" in text


def test_the_files_links_point_at_files_a_clone_has() -> None:
    """What a clone can open: the metrics and curves the files column links to (relative to reports/) are in git."""
    text = markdown([row(p, "sqlite:///mlflow.db") for p in ("p00", "p11_transforms")])
    links = re.findall(r"\]\(\.\./((?:metrics|plots)/[^)]+)\)", text)
    assert len(links) == 4, links
    tracked = set(subprocess.run(["git", "ls-files", "metrics", "plots"], cwd=ROOT, capture_output=True, text=True,
                                 check=True).stdout.split())
    assert set(links) <= tracked, set(links) - tracked


def test_progress_shows_committed_figures_without_their_run_folder_and_the_report_refuses(tmp_path: Path) -> None:
    """A clone has the committed metrics/ but not outputs/ (DVC's): `--progress` shows those projects (no run
    link), leaves out the unpublished one; the report itself needs every run folder."""
    metrics, outputs = tmp_path / "metrics", tmp_path / "outputs"
    (metrics / "s42").mkdir(parents=True)
    (outputs / "s42" / "p00").mkdir(parents=True)
    for project in ("p00", "p01"):
        figures = {k: v for k, v in row(project, "sqlite:///mlflow.db").items()
                   if not k.startswith("mlflow_") and k != "project"}
        (metrics / "s42" / f"{project}.json").write_text(json.dumps(figures))
    (outputs / "s42" / "p00" / "run.json").write_text(json.dumps({"mlflow_run_id": "abcdef0123",
                                                                  "mlflow_experiment_id": "1"}))
    rows = load_rows(["p00", "p01", "p02"], [42, 43], metrics, outputs, missing_ok=True)
    assert [(r["project"], r["seed"]) for r in rows] == [("p00", 42), ("p01", 42)]
    text = markdown(rows)
    assert "/#/experiments/1/runs/abcdef0123?workflowType=machine_learning)" in text
    assert "| P01 | 42 | 65.12 | +3.02 |" in text and text.count("runs/abcdef0123") == 1
    with pytest.raises(UserError, match=r"s42/p01/run.json is missing: run `dvc repro`"):
        load_rows(["p00", "p01"], [42], metrics, outputs)


def test_projects_over_seeds_and_the_steps_between_them() -> None:
    """Two projects over three seeds: each project's mean, spread and interval, the source inside or outside it,
    and the step's Welch difference and verdict (the numbers of tests/test_seeds.py, in percent)."""
    rows = [row("p00", "sqlite:///mlflow.db", seed, accuracy) for seed, accuracy in
            zip((42, 43, 44), (0.61, 0.62, 0.63), strict=True)]
    rows += [row("p01", "sqlite:///mlflow.db", seed, accuracy) for seed, accuracy in
             zip((42, 43, 44), (0.64, 0.65, 0.66), strict=True)]
    text = markdown(rows, {"p00": None, "p01": "p00"}, {"p01": "a second conv"})
    assert "| P00 | 3 | 62.00 | 1.00 | [59.52, 64.48] | 61.00–63.00 | 62.10 | yes |" in text
    assert "| P01 | 3 | 65.00 | 1.00 | [62.52, 67.48] | 64.00–66.00 | 62.10 | no |" in text
    assert "| P00 → P01 | a second conv | +3.00 | [0.73, 5.27] | 0.021 | improvement |" in text


def published(tmp_path: Path, figures: dict, run: dict) -> tuple[Path, Path]:
    metrics, outputs = tmp_path / "metrics", tmp_path / "outputs"
    (metrics / "s42").mkdir(parents=True, exist_ok=True)
    (outputs / "s42" / "p00").mkdir(parents=True, exist_ok=True)
    (metrics / "s42" / "p00.json").write_text(json.dumps(figures))
    (outputs / "s42" / "p00" / "run.json").write_text(json.dumps(run))
    return metrics, outputs


def test_figures_and_a_run_record_of_another_run_are_not_joined(tmp_path: Path, capsys) -> None:
    """metrics/s42/p00.json of the committed reference run beside outputs/s42/p00/run.json of a later tiny
    one-epoch run (two runs' files, as after restoring metrics/): the row keeps the figures, names the mismatch
    instead of linking the other run, and a warning says so; the same with the run id that newer figures carry."""
    figures = {k: v for k, v in row("p00", "sqlite:///mlflow.db").items() if not k.startswith("mlflow_")}
    figures["epoch_cap"] = None
    tiny = {"mlflow_run_id": "0123456789abcdef", "mlflow_experiment_id": "1", "mlflow_tracking_uri": "sqlite:///mlflow.db",
            "key": "k-tiny", "data_sha256": "d" * 64, "epoch_cap": 1, "params": 263_402,
            "device": "2-core CPU (no GPU)", "early_stopped": False}
    text = markdown(load_rows(["p00"], [42], *published(tmp_path, figures, tiny), missing_ok=True))
    warned = capsys.readouterr().err
    assert "| P00 | 42 | 65.12 | +3.02 |" in text and "0123456789abcdef" not in text, "no link to the other run"
    assert ("⚠ " + str(tmp_path / "outputs" / "s42" / "p00" / "run.json") + " is run 01234567, not this row's "
            "(data sha256 ffffffffffff in the figures, dddddddddddd in the run record) |") in text
    assert warned.startswith("warning: ") and "are not from the same run (data sha256" in warned
    same = {**tiny, "data_sha256": "f" * 64, "epoch_cap": None}
    assert "⚠" not in markdown(load_rows(["p00"], [42], *published(tmp_path, figures, same)))
    assert capsys.readouterr().err == "", "the same run's pair is joined without a word"
    newer = {**figures, "run": {"mlflow_run_id": "fedcba9876543210", "key": "k-ref"}}
    text = markdown(load_rows(["p00"], [42], *published(tmp_path, newer, same)))
    assert "is run 01234567, not this row's (mlflow_run_id fedcba987654 in the figures, 0123456789ab in" in text
    assert "are not from the same run (mlflow_run_id" in capsys.readouterr().err
    matched = {**same, "mlflow_run_id": "fedcba9876543210", "key": "k-ref"}
    assert "[fedcba98](" in markdown(load_rows(["p00"], [42], *published(tmp_path, newer, matched)))


@pytest.mark.system  # starts `python -m cnnlab.report`
def test_published_writes_the_leaderboard_of_what_is_published_so_far_and_names_the_rest(tmp_path: Path) -> None:
    """A clone during the long run: committed figures, no run folders, no registry. `--published` writes the
    leaderboard from them, says which runs are not published yet, and reads no tracking store."""
    (tmp_path / "params.yaml").write_text(json.dumps({"projects": ["p00", "p01"], "seeds": [42, 43],
                                                      "data": "tiny", "backend": "tensorflow", "max_epochs": 0}))
    for project, seed, accuracy in (("p00", 42, 0.61), ("p00", 43, 0.63), ("p01", 42, 0.65)):
        (tmp_path / "metrics" / f"s{seed}").mkdir(parents=True, exist_ok=True)
        figures = {k: v for k, v in row(project, "", seed, accuracy).items() if not k.startswith("mlflow_")}
        (tmp_path / "metrics" / f"s{seed}" / f"{project}.json").write_text(json.dumps(figures))
    done = subprocess.run([sys.executable, "-m", "cnnlab.report", "--published"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600, env=job_env())
    assert done.returncode == 0, done.stderr[-3000:]
    text = (tmp_path / "reports" / "leaderboard.md").read_text()
    assert "| P00 | 2 | 62.00 |" in text and "| P01 | 1 | 65.00 |" in text
    assert text.rstrip().endswith("Not yet published: P01 seed 43.")
    assert "Machines: 2-core CPU (no GPU)." in text and "not recorded" not in text, "the figures' own machine"
    assert (tmp_path / "reports" / "leaderboard.png").stat().st_size > 0
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()
