"""Shared fixtures: typed jobs composed with Hydra's compose API from the real conf/ tree, pointed at a
temporary folder (data, runs, state, outputs, MLflow sqlite store), on the tiny synthetic data set, and the
command line of a real training process with the same folders."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from functools import cache
from pathlib import Path

import pytest
from filelock import FileLock
from omegaconf import DictConfig, OmegaConf

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# numpy's and scipy's OpenBLAS keep a thread per core, which spins for a while after each call before it sleeps:
# with two test workers and the jobs they start on two cores, it spins on the core the other process needs (the
# quick tier took 32-33 s instead of 29-30 s, and 12 % more CPU; docs/testing.md). One OpenBLAS thread for the test
# processes and what they start, until a job sets its own: a job's `threads` sizes TensorFlow's pools and numpy's
# BLAS, as its key says (cnnlab.config.backend.fix_numerics).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from cnnlab.config.compose import compose, to_job  # noqa: E402
from cnnlab.config.schema import AugmentationConfig, JobConfig, ModelConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
PATHS = ("runs", "checkpoints", "outputs", "metrics", "plots")


def compose_config(*overrides: str) -> JobConfig:
    """The typed job `python -m cnnlab.train <overrides>` would run: new typed objects each call, from one
    composition per overrides a test process (`composed`)."""
    return to_job(composed(overrides))


@cache
def composed(overrides: tuple[str, ...]) -> DictConfig:
    """The composed config of `overrides`, once a test process (a tenth of a second each; the quick tier asks for
    a fifth of its 128 twice or more): conf/ does not change under the tests (those that edit it edit a copy),
    and the environment's values (`oc.env`) are read when `to_job` resolves the config, at each call."""
    return compose(overrides)


def model_config(project: str) -> ModelConfig:
    """conf/model/<project>.yaml as the typed section."""
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig),
                                               OmegaConf.load(CONF / "model" / f"{project}.yaml")))


def augmentation_config(name: str) -> AugmentationConfig:
    """conf/augmentation/<name>.yaml as the typed section."""
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(AugmentationConfig),
                                               OmegaConf.load(CONF / "augmentation" / f"{name}.yaml")))


def folders(workdir: Path, data_dir: Path) -> list[str]:
    """Overrides that put every file of a job under `workdir` (the data under `data_dir`)."""
    return [f"paths.data={data_dir}", *(f"paths.{key}={workdir / key}" for key in PATHS),
            f"tracking.uri=sqlite:///{workdir / 'mlflow.db'}"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests are grouped by what they start: unit (nothing, the default), integration (a tiny training in this
    process), system (processes, servers, a browser); the last two are slow, so `-m "not slow"` is the quick tier."""
    for item in items:
        if item.get_closest_marker("integration") or item.get_closest_marker("system"):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data folder for the session: the tiny archive is generated and prepared once."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def migrated_store(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Path:
    """An empty MLflow sqlite store as a job's first open of it leaves it, made once per test run (the first
    worker to need it makes it; xdist's workers share their base folder's parent): MLflow makes a new store's
    tables through its migrations, about 3 s a store on CI's CPU, and most tests open a store of their own. What a
    first open does (the migrations under cnnlab's store lock, parallel jobs on an empty folder, a refusal that
    leaves no store) is tested in tests that take `tmp_path`, which starts empty."""
    from mlflow.tracking import MlflowClient  # here: the unit tests that import conftest need no MLflow

    base = tmp_path_factory.getbasetemp()
    folder = (base if worker_id == "master" else base.parent) / "migrated-store"
    path = folder / "mlflow.db"
    with FileLock(f"{folder}.lock"):
        if not path.exists():
            folder.mkdir()
            making = folder / "making.db"
            MlflowClient(f"sqlite:///{making}").search_experiments()
            making.replace(path)  # whole or not there, for a worker that finds it later
    return path


@pytest.fixture
def workdir(tmp_path: Path, tiny_data_dir: Path, migrated_store: Path) -> Path:
    """This test's folder, holding a copy of `migrated_store` as its MLflow store (`folders`)."""
    shutil.copy(migrated_store, tmp_path / "mlflow.db")
    return tmp_path


@pytest.fixture
def make_cfg(workdir: Path, tiny_data_dir: Path) -> Callable[..., JobConfig]:
    """The typed job of `overrides` on tiny data with every folder and an empty MLflow store in this test's folder."""
    return tiny_job_maker(workdir, tiny_data_dir)


@pytest.fixture
def make_checked_cfg(tmp_path: Path, tiny_data_dir: Path) -> Callable[..., JobConfig]:
    """`make_cfg` for tests that only compose and check a job, which opens no store: its folder has none (and
    no `migrated_store` is made for it)."""
    return tiny_job_maker(tmp_path, tiny_data_dir)


def tiny_job_maker(folder: Path, data_dir: Path) -> Callable[..., JobConfig]:
    """The typed job of `overrides` on tiny data (in `data_dir`) with every other folder under `folder`."""

    def make(*overrides: str) -> JobConfig:
        return compose_config("data=tiny", *folders(folder, data_dir), *overrides)

    return make


def job_command(module: str, workdir: Path, data_dir: Path, *overrides: str, multirun: bool = False) -> list[str]:
    """`python -m <module>` on tiny data with every folder (and Hydra's) under `workdir`."""
    return [sys.executable, "-m", module, *(["-m"] if multirun else []), "data=tiny", *folders(workdir, data_dir),
            f"hydra.run.dir={workdir / 'hydra'}", f"hydra.sweep.dir={workdir / 'sweep'}", *overrides]


def job_env(**extra: str) -> dict[str, str]:
    """This process's environment without MLflow's variables (an in-process training in this test worker sets
    MLFLOW_EXPERIMENT_ID), with this interpreter's folder first on PATH (the tools a job starts by name, `dvc`,
    `mlflow`, MLflow's `uvicorn`, are the test environment's even where it is not activated), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    path = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", os.defpath)])
    return {**env, "TF_CPP_MIN_LOG_LEVEL": "2", "PATH": path, **extra}


def run_job(module: str, workdir: Path, data_dir: Path, *overrides: str, multirun: bool = False,
            env: dict[str, str] | None = None, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(job_command(module, workdir, data_dir, *overrides, multirun=multirun), cwd=ROOT,
                          env=env or job_env(), capture_output=True, text=True, timeout=timeout)


def free_port() -> int:
    """A localhost port nobody listens on, for a server a test starts."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answer(url: str) -> bytes | None:
    """The body of a GET on `url`, or None while nothing answers there (a server still starting)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.read()
    except OSError:
        return None


def wait_for(check: Callable[[], bool], what: str, seconds: float = 120,
             detail: Callable[[], str] = lambda: "") -> None:
    """Poll `check` until it holds (a started server is ready), failing the test after `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    pytest.fail(f"{what} did not come up within {seconds:.0f}s {detail()}")
