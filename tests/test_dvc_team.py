"""Sharing the pipeline's results through a DVC remote, and queued DVC experiments, on a small git copy of this
repository (P00 only, tiny data, one epoch): a fresh clone pulls models and data and reproduces nothing, and
experiments run by `dvc queue` in temporary copies are tracked in the user's MLflow store."""

from __future__ import annotations

import json
from contextlib import suppress
from pathlib import Path

import numpy as np
import psutil
import pytest
from mlflow.tracking import MlflowClient

from tests.support import git_copy, sh, stages_run

pytestmark = pytest.mark.system
PUBLISHED = ["dvc.lock", "metrics/s42/p00.json", "reports/leaderboard.md", "plots/s42/p00/history.csv"]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git copy of this repository that trains P00 on tiny data for one epoch, after `dvc repro`, committed."""
    repo = git_copy(tmp_path_factory.mktemp("team") / "cnnlab", projects=["p00"], seeds=[42], data="tiny",
                    max_epochs=1)
    sh(repo, "dvc", "repro")
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "tiny pipeline")
    return repo


def test_a_clone_pulls_the_results_from_the_remote_and_reproduces_nothing(repo: Path, tmp_path: Path) -> None:
    tracked = sh(repo, "git", "ls-files").stdout.split()
    assert set(PUBLISHED) <= set(tracked), "the published results are committed"
    assert not [f for f in tracked if f.startswith(("outputs/", "data/", "composed/"))], "models and data are pushed"
    sh(repo, "dvc", "remote", "add", "-d", "store", str(tmp_path / "remote"))
    sh(repo, "git", "commit", "-qm", "DVC remote", ".dvc/config")
    assert "files pushed" in sh(repo, "dvc", "push").stdout

    clone = tmp_path / "clone"
    sh(tmp_path, "git", "clone", "-q", str(repo), str(clone))
    assert not (clone / "outputs").exists() and not (clone / "data").exists()
    sh(clone, "dvc", "pull")
    assert "up to date" in sh(clone, "dvc", "status").stdout
    assert stages_run(sh(clone, "dvc", "repro").stdout) == set(), "nothing is trained again"
    shown = json.loads(sh(clone, "dvc", "metrics", "show", "--json").stdout)
    metrics = json.loads((repo / "metrics" / "s42" / "p00.json").read_text())
    assert next(iter(shown.values()))["data"]["metrics/s42/p00.json"]["data"]["test_accuracy"] == \
        metrics["test_accuracy"]
    assert (clone / "reports" / "leaderboard.md").read_text() == (repo / "reports" / "leaderboard.md").read_text()

    import keras

    import cnnlab.core.models  # noqa: F401  (registers cnnlab's layers for loading)

    model = keras.saving.load_model(clone / "outputs" / "s42" / "p00" / "model.keras")
    (prepared,) = (clone / "data" / "prepared" / "tiny").glob("*/arrays.npz")
    arrays = np.load(prepared)
    predicted = model.predict(arrays["x_test"], verbose=0).argmax(axis=1)
    assert float((predicted == arrays["y_test"]).mean()) == pytest.approx(metrics["test_accuracy"]), \
        "the pulled model on the pulled data scores what the pipeline published"


def queue_status(repo: Path) -> dict[str, str]:
    """`dvc queue status`: experiment name -> Queued | Running | Success | Failed."""
    rows = sh(repo, "dvc", "queue", "status").stdout.splitlines()
    return {row.split()[1]: row.split()[-1] for row in rows[1:] if len(row.split()) >= 4}


def stop_workers(repo: Path) -> None:
    """`dvc queue stop`, then wait for the celery workers DVC spawned (their pid files) to exit; terminate any
    that outlive a minute (a bound on a stuck worker, not a synchronisation: the wait ends when they exit)."""
    sh(repo, "dvc", "queue", "stop", check=False)
    workers = []
    for pid_file in (repo / ".dvc" / "tmp" / "exps" / "celery").glob("*.pid"):
        with suppress(psutil.NoSuchProcess, ValueError):
            worker = psutil.Process(int(pid_file.read_text()))
            if "dvc" in " ".join(worker.cmdline()):
                workers.append(worker)
    _, alive = psutil.wait_procs(workers, timeout=60)
    for worker in alive:
        worker.terminate()


def test_queued_experiments_are_tracked_in_the_users_store(repo: Path) -> None:
    """Two experiments queued and run two at a time in DVC's temporary copies: both are DVC experiments, and both
    runs are in the repository's own mlflow.db, in the experiment its git-ignored conf/local/ names. Each ran
    the configs it was queued with: seed-two with a wider dense layer, edited before it was queued and undone
    before the queue ran (the installed cnnlab, and its conf/, never had it)."""
    local = repo / "conf" / "local" / "default.yaml"
    local.write_text("# @package _global_\ntracking:\n  experiment: queued\n")
    model = repo / "conf" / "model" / "p00.yaml"
    names = {"seed-one": 1, "seed-two": 2}
    try:
        sh(repo, "dvc", "exp", "run", "--queue", "-n", "seed-one", "-S", "seeds=[1]")
        model.write_text(model.read_text().replace("{type: Dense, units: 32,", "{type: Dense, units: 48,"))
        sh(repo, "dvc", "exp", "run", "--queue", "-n", "seed-two", "-S", "seeds=[2]")
        sh(repo, "git", "checkout", "conf")
        # two workers; returns when every queued experiment has ended (DVC waits for each one's result)
        sh(repo, "dvc", "exp", "run", "--run-all", "-j", "2", check=False)
        logs = sh(repo, "dvc", "queue", "logs", "seed-one", check=False).stdout
        assert {queue_status(repo)[n] for n in names} == {"Success"}, logs
    finally:
        stop_workers(repo)
        local.unlink()

    shown = json.loads(sh(repo, "dvc", "exp", "show", "--json").stdout)
    experiments = {rev["name"]: rev["data"] for exp in shown[1]["experiments"] or [] for rev in exp["revs"]}
    assert set(names) <= set(experiments)
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("queued")
    assert experiment is not None, "no queued run reached the repository's store (or its conf/local)"
    runs = client.search_runs([experiment.experiment_id])
    assert {r.data.tags["dvc_experiment"]: r.info.status for r in runs} == dict.fromkeys(names, "FINISHED")
    for run in runs:
        name = run.data.tags["dvc_experiment"]
        assert run.data.params["training.seed"] == str(names[name])
        assert run.data.params["model.layers.3.units"] == {"seed-one": "32", "seed-two": "48"}[name]
        accuracy = experiments[name]["metrics"][f"metrics/s{names[name]}/p00.json"]["data"]["test_accuracy"]
        assert run.data.metrics["test_accuracy"] == pytest.approx(accuracy)
        assert Path(run.data.tags["result_dir"]) == repo / "runs" / "p00" / run.info.run_id
        assert (repo / "runs" / "p00" / run.info.run_id / "model.keras").is_file(), "the run's folder outlives the copy"
    assert not list((repo / "checkpoints").glob("p00-*/")), "no unfinished state left behind"
