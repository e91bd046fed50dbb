"""A team's tracking server for real: PostgreSQL (Debian's package, a throwaway cluster on a free localhost port)
behind `mlflow server` with proxied artifacts, and cnnlab jobs writing to it with `tracking=server`: a parallel
sweep, a kill -9 and rerun, eight jobs at once, and a submitit_local sweep stopped by SIGTERM and started again.
Where PostgreSQL is not installed the module is skipped with the reason (CI installs it, see .ci/run)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from cnnlab.run.faults import ENV as FAILPOINT
from tests.conftest import free_port, job_env, run_job, wait_for
from tests.support import mlflow_server

pytestmark = pytest.mark.system


def _postgres_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    """A fresh PostgreSQL cluster (trust auth, 127.0.0.1 only), run as the `postgres` user when the tests run as
    root (PostgreSQL refuses root); stopped and removed at the end. Yields its database URI."""
    bin_dir = _postgres_bin()
    if bin_dir is None:
        if os.environ.get("CI"):
            pytest.fail("CI must run the tracking-server tests: install Debian's postgresql (see .ci/run)")
        pytest.skip("PostgreSQL is not installed here (Debian: apt-get install postgresql)")
    root = Path(tempfile.mkdtemp(prefix="cnnlab-pg-"))
    as_owner: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        as_owner = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    subprocess.run([*as_owner, str(bin_dir / "initdb"), "-D", str(root / "data"), "-U", "cnnlab", "--auth=trust",
                    "-E", "UTF8"], check=True, capture_output=True)
    server = subprocess.Popen([*as_owner, str(bin_dir / "postgres"), "-D", str(root / "data"), "-h", "127.0.0.1",
                               "-p", str(port), "-k", str(root)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ready = [str(bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)]
        wait_for(lambda: subprocess.run(ready, capture_output=True).returncode == 0, "PostgreSQL")
        subprocess.run([str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "cnnlab", "mlflow"],
                       check=True, capture_output=True)
        yield f"postgresql://cnnlab@127.0.0.1:{port}/mlflow"
    finally:
        subprocess.run([*as_owner, str(bin_dir / "pg_ctl"), "-D", str(root / "data"), "stop", "-m", "fast"],
                       capture_output=True, timeout=60)
        server.wait(timeout=60)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def server(postgres: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`mlflow server` on the PostgreSQL store, artifacts proxied to a folder, two workers (the tests write to it
    from several jobs at once); yields its URL."""
    artifacts = tmp_path_factory.mktemp("proxied-artifacts")
    with mlflow_server(postgres, tmp_path_factory.mktemp("server"), "--serve-artifacts", "--artifacts-destination",
                       str(artifacts), workers=2) as url:
        yield url


def rest(url: str, path: str, **query: str) -> dict:
    """A GET on the server's REST API."""
    from urllib.parse import urlencode

    with urllib.request.urlopen(f"{url}/api/2.0/mlflow/{path}?{urlencode(query)}", timeout=30) as answer:
        return json.loads(answer.read())


def rows(postgres: str, sql: str) -> list[tuple]:
    """What PostgreSQL itself holds (not what a client caches)."""
    import psycopg

    with psycopg.connect(postgres) as connection:
        return connection.execute(sql).fetchall()


def on_server(url: str, workdir: Path, data_dir: Path, *overrides: str, multirun: bool = False,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_job("cnnlab.train", workdir, data_dir, *overrides, "tracking=server", f"tracking.uri={url}",
                   f"tracking.experiment={workdir.name}", "tracking.system_metrics_interval=1", multirun=multirun,
                   env=env)


def runs_of(url: str, experiment: str):
    client = MlflowClient(url)
    return client, client.search_runs([client.get_experiment_by_name(experiment).experiment_id])


def test_a_parallel_sweep_lives_in_postgresql_and_reads_back_through_the_server(
        server: str, postgres: str, tmp_path: Path, tiny_data_dir: Path) -> None:
    import mlflow

    done = on_server(server, tmp_path, tiny_data_dir, "project=p00", "training.epochs=3",
                     "training.optimizer.learning_rate=0.001,0.002,0.003", "hydra/launcher=parallel",
                     "hydra.launcher.n_jobs=3", multirun=True)
    assert done.returncode == 0, done.stderr[-3000:]
    client, runs = runs_of(server, tmp_path.name)
    parent = [r for r in runs if r.data.tags.get("sweep") == "true"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(parent) == 1 and len(children) == 3
    stored = dict(rows(postgres, "select run_uuid, status from runs"))
    assert {stored[r.info.run_id] for r in [*parent, *children]} == {"FINISHED"}, "in PostgreSQL itself"
    for run in children:
        assert run.data.tags["mlflow.parentRunId"] == parent[0].info.run_id
        history = rest(server, "metrics/get-history", run_id=run.info.run_id, metric_key="val_accuracy")
        assert [m["step"] for m in history["metrics"]] == [0, 1, 2]
        local = client.download_artifacts(run.info.run_id, "metrics.json", str(tmp_path))
        metrics = json.loads(Path(local).read_text())
        assert metrics["test_accuracy"] == pytest.approx(run.data.metrics["test_accuracy"])
        assert run.info.artifact_uri.startswith("mlflow-artifacts:"), "artifacts go through the server's proxy"
        assert any(key.startswith("system/cpu_utilization") for key in run.data.metrics), "system metrics"
        contexts = {t.value for i in run.inputs.dataset_inputs for t in i.tags if t.key == "mlflow.data.context"}
        assert contexts == {"training", "validation", "test"}, "dataset lineage"
        assert {i.dataset.digest for i in run.inputs.dataset_inputs} == {run.data.tags["data_sha256"][:36]}
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(server)
    try:
        model = mlflow.pyfunc.load_model(f"runs:/{children[0].info.run_id}/model")
    finally:
        mlflow.set_tracking_uri(previous)
    images = np.random.default_rng(0).integers(0, 256, size=(2, 32, 32, 3)).astype("uint8")
    probabilities = np.asarray(model.predict(images))
    assert probabilities.shape == (2, 10) and np.allclose(probabilities.sum(axis=1), 1, atol=1e-4)


def test_a_kill_9_and_the_same_command_resume_the_same_run_on_the_server(server: str, tmp_path: Path,
                                                                       tiny_data_dir: Path) -> None:
    job = ("project=p01", "training.epochs=3")
    killed = on_server(server, tmp_path, tiny_data_dir, *job, env=job_env(**{FAILPOINT: "after_backup:1"}))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    _, (interrupted,) = runs_of(server, tmp_path.name)
    done = on_server(server, tmp_path, tiny_data_dir, *job)
    assert done.returncode == 0, done.stderr[-3000:]
    client, (run,) = runs_of(server, tmp_path.name)
    assert run.info.run_id == interrupted.info.run_id and run.info.status == "FINISHED"
    for key in ("loss", "val_accuracy"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [0, 1, 2], key
    assert len(client.search_logged_models([run.info.experiment_id])) == 1


def test_eight_jobs_writing_to_the_server_at_once_lose_nothing(server: str, tmp_path: Path,
                                                              tiny_data_dir: Path) -> None:
    rates = ",".join(f"0.00{i}" for i in range(1, 9))
    done = on_server(server, tmp_path, tiny_data_dir, "project=p00", "training.epochs=2", "tracking.log_model=false",
                     f"training.optimizer.learning_rate={rates}", "hydra/launcher=parallel",
                     "hydra.launcher.n_jobs=8", multirun=True)
    assert done.returncode == 0, done.stderr[-3000:]
    client, runs = runs_of(server, tmp_path.name)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(children) == 8 and {r.info.status for r in children} == {"FINISHED"}
    for run in children:
        for key in ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "epoch_seconds"):
            assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [0, 1], (key, run.info.run_id)
        assert {"test_accuracy", "best_val_accuracy", "epochs_run"} <= set(run.data.metrics)


def test_a_submitit_sweep_stopped_by_sigterm_resumes_in_the_same_runs(server: str, tmp_path: Path,
                                                                     tiny_data_dir: Path) -> None:
    """submitit_local runs the same job code path as SLURM: each job a process of its own, its own run."""
    sweep = ("project=p00,p01", "training.epochs=3", "hydra/launcher=submitit_local", "tracking.log_model=false")
    stopped = on_server(server, tmp_path, tiny_data_dir, *sweep, multirun=True,
                        env=job_env(**{FAILPOINT: "mid_epoch:1@SIGTERM"}))
    assert stopped.returncode != 0
    _, runs = runs_of(server, tmp_path.name)
    first = {r.data.tags["project"]: r for r in runs if r.data.tags.get("mlflow.parentRunId")}
    assert {p: r.info.status for p, r in first.items()} == {"p00": "KILLED", "p01": "KILLED"}
    assert {p: r.data.tags["error"] for p, r in first.items()} == {p: "Interrupted: stopped by SIGTERM" for p in first}
    again = on_server(server, tmp_path, tiny_data_dir, *sweep, multirun=True)
    assert again.returncode == 0, again.stderr[-3000:]
    client, runs = runs_of(server, tmp_path.name)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert sorted(r.info.run_id for r in children) == sorted(r.info.run_id for r in first.values()), "same runs"
    for run in children:
        assert run.info.status == "FINISHED" and "error" not in run.data.tags
        assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [0, 1, 2]
    assert list((tmp_path / "sweep").glob(".submitit/*")), "the jobs went through submitit"


REGISTER = """
import sys
from cnnlab.config.schema import SelectionConfig
from cnnlab.tracking.registry import register
url, project, run_id = sys.argv[1:]
print("ready", flush=True)
sys.stdin.readline()  # all start at once
register(url, project, SelectionConfig(), run_id)
"""


def _ready_to_register(server: str, project: str, run_id: str, **env: str) -> subprocess.Popen[str]:
    """A process that registers the run once told to go (see `_go`), started and ready."""
    job = subprocess.Popen([sys.executable, "-c", REGISTER, server, project, run_id], env=job_env(**env),
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert job.stdout.readline().strip() == "ready", job.stderr.read()[-3000:]
    return job


def _go(job: subprocess.Popen[str]) -> subprocess.Popen[str]:
    job.stdin.write("go\n")
    job.stdin.flush()
    return job


def _finished_runs(client: MlflowClient, experiment_name: str, values: list[float]) -> list[str]:
    """FINISHED runs with a READY logged model each and these `best_val_accuracy` values (what a training job
    leaves for registration)."""
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus

    experiment = client.create_experiment(experiment_name)
    run_ids = []
    for value in values:
        run = client.create_run(experiment)
        client.log_metric(run.info.run_id, "best_val_accuracy", float(value))
        model = client.create_logged_model(experiment, name="model", source_run_id=run.info.run_id)
        client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
        client.log_outputs(run.info.run_id, [LoggedModelOutput(model.model_id, step=0)])
        client.set_terminated(run.info.run_id, "FINISHED")
        run_ids.append(run.info.run_id)
    return run_ids


@pytest.mark.parametrize("repeat", range(3))
def test_four_registrations_at_once_leave_the_champion_on_the_best(server: str, repeat: int) -> None:
    """Four processes register four finished runs of one project at the same instant (released together once all
    are ready): whatever order their decisions land in, `champion` ends on the run best on validation."""
    client = MlflowClient(server)
    values = list(np.random.default_rng(repeat).permutation([0.61, 0.74, 0.52, 0.69]))
    project = f"race{repeat}x{os.getpid()}"
    run_ids = _finished_runs(client, f"champion-race-{repeat}-{os.getpid()}", values)
    jobs = [_ready_to_register(server, project, run_id) for run_id in run_ids]
    for job in jobs:
        _go(job)
    for job in jobs:
        assert job.wait(timeout=300) == 0, job.stderr.read()[-3000:]
    versions = client.search_model_versions(f"name = 'cnnlab-{project}'")
    assert len(versions) == 4
    champion = client.get_model_version_by_alias(f"cnnlab-{project}", "champion")
    assert champion.run_id == run_ids[values.index(max(values))]


def test_a_champion_written_late_from_a_stale_read_is_corrected_by_its_writer(server: str) -> None:
    """The interleaving a race may produce, chosen: job A chooses the champion among the versions it sees (its
    own, worse) and is frozen before writing the alias (failpoint `crowning`); job B registers a better run and
    crowns it; A then writes its stale choice. A reads the alias back against all versions and moves it to B's."""
    client = MlflowClient(server)
    project = f"stale{os.getpid()}"
    worse, better = _finished_runs(client, f"champion-stale-{os.getpid()}", [0.52, 0.74])

    a = _go(_ready_to_register(server, project, worse, **{FAILPOINT: "crowning@SIGSTOP"}))
    _, status = os.waitpid(a.pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status), a.stderr.read()[-3000:]
    b = _go(_ready_to_register(server, project, better))
    assert b.wait(timeout=300) == 0, b.stderr.read()[-3000:]
    assert client.get_model_version_by_alias(f"cnnlab-{project}", "champion").run_id == better
    stops = 0
    while True:  # A stops at every alias write it decides on: the stale one, then the correction
        os.kill(a.pid, signal.SIGCONT)
        _, status = os.waitpid(a.pid, os.WUNTRACED)
        if not os.WIFSTOPPED(status):
            a.returncode = os.waitstatus_to_exitcode(status)
            break
        stops += 1
        assert stops < 5, "A keeps deciding to write"
    assert a.returncode == 0, a.stderr.read()[-3000:]
    assert stops == 1, "A wrote its stale choice, read it back and wrote B's version once"
    assert client.get_model_version_by_alias(f"cnnlab-{project}", "champion").run_id == better
