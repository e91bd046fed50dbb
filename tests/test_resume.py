"""A run killed at a chosen instant and continued computes what an uninterrupted run computes: the same final
weights (bitwise, on TensorFlow on the CPU with a fixed seed), every epoch logged once, in one run; and the weights
a run keeps are those its recorded selection value was measured on.

Real processes killed -9 at failpoints (cnnlab.run.faults) and continued in the test's own process (whose
Keras may have trained other jobs before: what a run computes depends on its key alone), real tiny data and
MLflow stores; P00 (no early stopping here) and P08 (batch norm, dropout, early stopping with a patience small
enough to end the run early)."""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import keras
import numpy as np
import pytest

from cnnlab.core.data import splits
from cnnlab.job.steps import train
from cnnlab.run.data import DataSpec, load
from cnnlab.run.faults import ENV as FAILPOINT
from cnnlab.run.results import read_history
from tests.conftest import job_env, run_job
from tests.support import runs, steps

pytestmark = pytest.mark.system
PROJECTS = {
    "p00": ("project=p00", "training.epochs=5", "training.batch_size=64"),
    "p08": ("project=p08", "training.epochs=8", "training.early_stopping.patience=2", "training.batch_size=64"),
}
COMMON = ("tracking.log_model=false", "tracking.system_metrics_interval=0.5")


def weights(workdir: Path, project: str) -> tuple[list[np.ndarray], dict]:
    (folder,) = (workdir / "runs" / project).iterdir()
    model = keras.saving.load_model(folder / "model.keras")
    return model.get_weights(), json.loads((folder / "metrics.json").read_text())


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, tiny_data_dir: Path,
                  migrated_store: Path) -> dict[str, tuple]:
    """Each project trained once without interruption: its kept weights and metrics."""
    done = {}
    for project, job in PROJECTS.items():
        workdir = tmp_path_factory.mktemp(f"whole-{project}")
        shutil.copy(migrated_store, workdir / "mlflow.db")  # as the killed and continued runs' `workdir` has
        finished = run_job("cnnlab.train", workdir, tiny_data_dir, *job, *COMMON)
        assert finished.returncode == 0, finished.stderr[-3000:]
        done[project] = weights(workdir, project)
    return done


@pytest.mark.parametrize("project", sorted(PROJECTS))
@pytest.mark.parametrize("point", ["mid_epoch:0", "after_backup:2", "after_fit"])
def test_killed_and_continued_equals_uninterrupted(project: str, point: str, uninterrupted: dict, make_cfg,
                                                   workdir: Path, tiny_data_dir: Path) -> None:
    job = (*PROJECTS[project], *COMMON)
    killed = run_job("cnnlab.train", workdir, tiny_data_dir, *job, env=job_env(**{FAILPOINT: point}))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    (stopped,) = runs(workdir)
    assert stopped.info.status == "RUNNING"
    if point == "mid_epoch:0":  # the run has system metrics already, but no epoch: it is continued, not replaced
        assert any(key.startswith("system/") for key in stopped.data.metrics)
        assert steps(workdir, stopped.info.run_id, "loss") == []
    train(make_cfg(*job))
    (run,) = runs(workdir)
    assert run.info.run_id == stopped.info.run_id and run.info.status == "FINISHED", "one run, continued"
    expected, expected_metrics = uninterrupted[project]
    got, metrics = weights(workdir, project)
    epochs = expected_metrics["epochs"]
    assert metrics["epochs"] == epochs and metrics["selection"] == expected_metrics["selection"]
    assert steps(workdir, run.info.run_id, "loss") == list(range(epochs)), "every epoch logged once"
    assert len(got) == len(expected)
    for mine, theirs in zip(got, expected, strict=True):
        np.testing.assert_array_equal(mine, theirs)  # bitwise
    assert metrics["test_accuracy"] == expected_metrics["test_accuracy"]


def test_p08_stops_early_where_the_uninterrupted_run_does(uninterrupted: dict) -> None:
    """The early-stopping case is really exercised: P08 ends before its epoch budget."""
    _, metrics = uninterrupted["p08"]
    assert metrics["early_stopped"] and metrics["epochs"] < 8


def test_the_kept_weights_are_the_judged_ones(make_cfg, workdir: Path, tiny_data_dir: Path) -> None:
    """The best val_accuracy epoch is not the best val_loss epoch nor the last one here; the kept model's
    validation accuracy is the recorded selection value."""
    job = ("project=p00", "training.epochs=8", "training.batch_size=16", "training.optimizer.learning_rate=0.001",
           "tracking.log_model=false")
    cfg = make_cfg(*job)
    train(cfg)
    (folder,) = (workdir / "runs" / "p00").iterdir()
    metrics = json.loads((folder / "metrics.json").read_text())
    history = read_history(folder / "history.csv")
    by_accuracy = max(range(len(history)), key=lambda e: (history[e]["val_accuracy"], -e))
    by_loss = min(range(len(history)), key=lambda e: history[e]["val_loss"])
    assert metrics["selection"]["epoch"] == by_accuracy + 1, "counted from 1, as the log and the plots count"
    assert by_accuracy not in (by_loss, len(history) - 1), "the curve must tell the three epochs apart"
    data = load(DataSpec.from_config(cfg.data, cfg.mirror, cfg.paths.data))
    images, labels = splits(data, cfg.training.validation_split)["validation"]
    model = keras.saving.load_model(folder / "model.keras")
    accuracy = float((model.predict(images, verbose=0).argmax(axis=1) == labels).mean())
    assert accuracy == pytest.approx(metrics["selection"]["value"], abs=1e-7)
