"""What several test files share, beside conftest.py's fixtures: no test_*.py imports another one
(tests/test_layout.py checks it), and code that only tests use lives here rather than in src/.

The projects are read, never listed: `conf_projects()` is every file of conf/project/, `pipeline_projects()` the
committed params.yaml's `projects`, so a new project is one new file (and its model) and no test is edited."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from cnnlab.config.schema import JobConfig
from cnnlab.job.checks import check_buildable, check_job
from tests.conftest import CONF, ROOT, answer, free_port, job_env, wait_for

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

ARTIFACTS = ROOT / "test-artifacts"
# The quick look of the pipeline on tiny data that README and docs/getting-started.md give a new user.
QUICK_LOOK = "dvc exp run --temp -S data=tiny -S max_epochs=1 -S 'seeds=[42]'"
# What a training logs at every epoch (one step each).
EPOCH_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "epoch_seconds")


def conf_projects() -> list[str]:
    """Every project there is: the names of conf/project/*.yaml, sorted."""
    return sorted(p.stem for p in (CONF / "project").glob("*.yaml"))


def pipeline_projects() -> list[str]:
    """The projects the committed params.yaml has the pipeline build, in its order."""
    return list(yaml.safe_load((ROOT / "params.yaml").read_text())["projects"])


def project_file(project: str) -> dict[str, Any]:
    """conf/project/<project>.yaml as written (its defaults list and its `project` section), not composed."""
    return yaml.safe_load((CONF / "project" / f"{project}.yaml").read_text())


def chosen(project: str, group: str) -> str | None:
    """The option of `group` (model, augmentation, training) that conf/project/<project>.yaml picks, if any."""
    for entry in project_file(project).get("defaults", []):
        if isinstance(entry, dict) and f"override /{group}" in entry:
            return entry[f"override /{group}"]
    return None


def validate(job: JobConfig) -> None:
    """All of a job's checks, `check_job` then `check_buildable`."""
    check_job(job)
    check_buildable(job)


def store(workdir: Path) -> MlflowClient:
    from mlflow.tracking import MlflowClient  # here: the unit tests that import this module need no MLflow

    return MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")


def runs(workdir: Path) -> list:
    client = store(workdir)
    experiment = client.get_experiment_by_name("cnnlab")
    return client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"]) if experiment else []


def steps(workdir: Path, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in store(workdir).get_metric_history(run_id, key))


WATCHED = ("runs", "checkpoints", "logs", "mlflow.db", "mlruns", "outputs", "composed")


def listing(root: Path) -> dict[str, list[str]]:
    """What this checkout holds where jobs write, to tell that nothing was added."""
    return {name: sorted(str(p.relative_to(root)) for p in (root / name).rglob("*")) if (root / name).is_dir()
            else [name] if (root / name).exists() else [] for name in WATCHED}


def sh(repo: Path, *cmd: str, check: bool = True, timeout: int | None = 900,
       env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    extra = env or {}
    env = job_env(DVC_NO_ANALYTICS="1",
                  GIT_AUTHOR_NAME="cnnlab tests", GIT_AUTHOR_EMAIL="tests@cnnlab.invalid",
                  GIT_COMMITTER_NAME="cnnlab tests", GIT_COMMITTER_EMAIL="tests@cnnlab.invalid")
    env.pop("KERAS_BACKEND", None)  # the pipeline's backend is params.yaml's
    env.update(extra)
    done = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout[-4000:]}\n"
                             f"{done.stderr[-4000:]}")
    return done


def stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def git_copy(repo: Path, **params: Any) -> Path:
    """A new git repository at `repo` with this repository's files (tracked, or untracked and not ignored) and
    params.yaml updated with `params`, committed."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, repo / name)
    committed = yaml.safe_load((repo / "params.yaml").read_text())
    (repo / "params.yaml").write_text(yaml.safe_dump({**committed, **params}))
    sh(repo, "git", "init", "-q")
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "copy")
    return repo


def find_chromium() -> str:
    chromium = shutil.which("chromium")
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("CI must run the browser tests: install Debian's chromium (see .ci/run)")
        pytest.skip("no chromium on this machine")
    return chromium


BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync"]


@contextmanager
def mlflow_server(store_uri: str, cwd: Path, *options: str, workers: int = 1) -> Iterator[str]:
    """`mlflow server` on `store_uri` on a free port, in its own process group, until the block ends; yields its URL.

    Started without MLflow's job execution (`MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false`: the queue of its GenAI
    jobs, which nothing of cnnlab's uses; it adds seven processes importing MLflow beside each server) and with one
    worker unless a test is about several writers (MLflow starts four, each importing MLflow). A server on an empty
    sqlite store, from its start to 20 s after its first answer: 5.6 CPU seconds in 2 processes (8.2 with two
    workers) instead of 34.1 in 15 (27.6); its first answer after 5.7 s instead of 11.0 (medians of 3, 2026-12-05,
    the AVX-512 EPYC, quiet)."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store_uri, "--host", "127.0.0.1",
         "--port", str(port), "--workers", str(workers), *options],
        cwd=cwd, env=job_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True)  # its own process group: the server and its workers
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: answer(f"{url}/health") == b"OK", "mlflow server", 180)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:  # a loaded machine: its workers slow to stop
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
