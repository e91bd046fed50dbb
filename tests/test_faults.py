"""Faults users meet: a killed or interrupted training job, a diverging loss, several jobs writing one sqlite
store at once, and hostile or damaged data. Real processes, real signals, real MLflow store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cnnlab import tracking
from cnnlab.train import TrainingDiverged, train
from tests.conftest import ROOT

SLOW_JOB = ["project=p08", "training.batch_size=16", "tracking.log_model=false"]


def start(workdir: Path, data_dir: Path, *overrides: str) -> subprocess.Popen[str]:
    args = [sys.executable, "-m", "cnnlab.train", "data=tiny", f"paths.data={data_dir}",
            *(f"paths.{key}={workdir / key}" for key in ("outputs", "checkpoints", "metrics", "plots")),
            f"tracking.uri=sqlite:///{workdir / 'mlflow.db'}", f"hydra.run.dir={workdir / 'run'}", *overrides]
    return subprocess.Popen(args, cwd=ROOT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def client(workdir: Path):
    return tracking.client(f"sqlite:///{workdir / 'mlflow.db'}")


def runs(workdir: Path):
    c = client(workdir)
    experiment = c.get_experiment_by_name("cnnlab")
    return c.search_runs([experiment.experiment_id]) if experiment else []


def wait_for_epoch(workdir: Path, job: subprocess.Popen[str], step: int, timeout: float = 300) -> str:
    """Poll the store until the job's run has logged `step`; returns the run id."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert job.poll() is None, f"the job ended before epoch {step}: {job.stdout.read()[-3000:]}"
        if (workdir / "mlflow.db").exists():
            for run in runs(workdir):
                if any(m.step >= step for m in client(workdir).get_metric_history(run.info.run_id, "loss")):
                    return run.info.run_id
        time.sleep(0.1)
    raise AssertionError(f"epoch {step} was not logged within {timeout}s")


@pytest.mark.slow
def test_a_killed_job_resumes_in_the_same_run_without_duplicate_epochs(tmp_path: Path, tiny_data_dir: Path) -> None:
    job = start(tmp_path, tiny_data_dir, *SLOW_JOB, "training.epochs=5")
    run_id = wait_for_epoch(tmp_path, job, step=2)
    job.send_signal(signal.SIGKILL)
    job.wait()
    assert not (tmp_path / "outputs" / "p08").exists()
    assert (tmp_path / "checkpoints" / "p08" / "backup").is_dir(), "the backup must survive the kill"

    again = start(tmp_path, tiny_data_dir, *SLOW_JOB, "training.epochs=5")
    output = again.communicate(timeout=600)[0]
    assert again.returncode == 0, output[-3000:]
    assert [r.info.run_id for r in runs(tmp_path)] == [run_id], "the rerun must continue the same MLflow run"
    run = client(tmp_path).get_run(run_id)
    assert run.info.status == "FINISHED"
    for key in ("loss", "val_accuracy", "learning_rate"):
        assert sorted(m.step for m in client(tmp_path).get_metric_history(run_id, key)) == [0, 1, 2, 3, 4], key
    out = tmp_path / "outputs" / "p08"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"] == 5 and metrics["mlflow_run_id"] == run_id
    assert len((out / "history.csv").read_text().strip().splitlines()) == 1 + 5
    import keras

    assert keras.saving.load_model(out / "model.keras").count_params() > 0
    assert not (tmp_path / "checkpoints" / "p08" / "backup").exists(), "a finished run needs no backup"


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_job_is_marked_killed_and_leaves_no_finished_looking_output(
        tmp_path: Path, tiny_data_dir: Path, sig: signal.Signals) -> None:
    job = start(tmp_path, tiny_data_dir, *SLOW_JOB, "training.epochs=30")
    run_id = wait_for_epoch(tmp_path, job, step=1)
    job.send_signal(sig)
    output = job.communicate(timeout=120)[0]
    assert job.returncode != 0, output[-2000:]
    run = client(tmp_path).get_run(run_id)
    assert run.info.status == "KILLED"
    assert sig.name in run.data.tags["error"]
    outputs = tmp_path / "outputs"
    assert not outputs.exists() or not any(outputs.iterdir()), "no output folder, not even a temporary one"
    assert (tmp_path / "checkpoints" / "p08" / "backup").is_dir(), "the backup is kept for a resume"


@pytest.mark.slow
def test_a_diverging_loss_stops_the_job_with_a_clear_failure(make_cfg, workdir: Path) -> None:
    cfg = make_cfg("project=p00", "training.epochs=5", "training.optimizer.learning_rate=1e30",
                   "tracking.log_model=false")
    with pytest.raises(TrainingDiverged, match=r"the loss became nan.*training\.optimizer\.learning_rate"):
        train(cfg)
    (run,) = runs(workdir)
    assert run.info.status == "FAILED" and "TrainingDiverged" in run.data.tags["error"]
    assert len(client(workdir).get_metric_history(run.info.run_id, "loss")) < 5, "NaN must stop training early"
    assert not (workdir / "outputs" / "p00").exists()


@pytest.mark.slow
def test_four_jobs_write_one_fresh_sqlite_store_at_once(tmp_path: Path, tiny_data_dir: Path) -> None:
    projects = ["p00", "p01", "p02", "p04"]
    jobs = [start(tmp_path, tiny_data_dir, f"project={p}", "training.epochs=2", f"hydra.run.dir={tmp_path / p}")
            for p in projects]
    outputs = [job.communicate(timeout=600)[0] for job in jobs]
    assert [job.returncode for job in jobs] == [0] * 4, "\n".join(o[-1500:] for o in outputs)
    done = runs(tmp_path)
    assert sorted(r.data.tags["project"] for r in done) == projects
    assert {r.info.status for r in done} == {"FINISHED"}
    assert all(len(client(tmp_path).get_metric_history(r.info.run_id, "loss")) == 2 for r in done)
