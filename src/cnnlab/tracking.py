"""MLflow side of cnnlab: store and experiment set-up, one run per training job (nested under a sweep's
parent run), per-epoch metrics, failure records, and the Hydra callback that owns a sweep's parent run."""

from __future__ import annotations

import logging
import os
import subprocess
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import mlflow
from filelock import FileLock
from hydra.experimental.callback import Callback
from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

SWEEP_RUN_ENV = "CNNLAB_SWEEP_RUN_ID"
PARENT_TAG = "mlflow.parentRunId"


class SweepFailed(SystemExit):
    """Some jobs of a multirun failed; raised after all jobs ran so the sweep exits non-zero. A SystemExit,
    because Hydra turns a callback's ordinary exceptions into warnings."""


def _sqlite_file(uri: str) -> Path | None:
    """The database file of a local `sqlite:///` store; None for any other store."""
    if not uri.startswith("sqlite:///") or uri.endswith(":memory:"):
        return None
    return Path(uri.removeprefix("sqlite:///"))


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Serialise the opening of a local sqlite store across processes: MLflow creates and migrates the tables
    on first open, and two processes doing that at once fail ("table ... already exists", mlflow#4123)."""
    path = _sqlite_file(uri)
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{path}.lock", timeout=300):
        yield


def client(uri: str) -> MlflowClient:
    """An MlflowClient on `uri`, opened safely while other processes may be creating the same store."""
    with store_lock(uri):
        store = MlflowClient(uri)
        store.search_experiments(max_results=1)  # opens (and if needed creates) the store under the lock
    return store


def configure(cfg: DictConfig) -> str:
    """Point MLflow at the configured store and make sure the experiment exists; returns its id.

    Creating the store and experiment under a lock keeps parallel jobs from racing to create them."""
    mlflow.set_tracking_uri(cfg.tracking.uri)
    with store_lock(cfg.tracking.uri):
        if mlflow.get_experiment_by_name(cfg.tracking.experiment) is None:
            mlflow.create_experiment(cfg.tracking.experiment, artifact_location=artifact_location(cfg.tracking.uri))
        experiment = mlflow.set_experiment(cfg.tracking.experiment)
    return experiment.experiment_id


def artifact_location(uri: str) -> str | None:
    """Artifacts of a local sqlite store go to `mlruns/` beside its file (MLflow's default is `./mlruns` in
    whatever folder the first run started from); other stores decide for themselves."""
    path = _sqlite_file(uri)
    return None if path is None else (path.resolve().parent / "mlruns").as_uri()


def flatten(cfg: DictConfig) -> dict[str, str]:
    """The resolved config as `a.b.0.c` -> value strings, as MLflow params."""
    flat: dict[str, str] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict | list) and node:
            for key, value in node.items() if isinstance(node, dict) else enumerate(node):
                walk(value, f"{prefix}.{key}" if prefix else str(key))
        else:
            flat[prefix] = str(node)

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return flat


def git_commit() -> str:
    """HEAD of the working tree (with '-dirty' when it has changes), or 'unknown' outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def base_tags(cfg: DictConfig) -> dict[str, str]:
    tags = {
        "project": str(cfg.project.id),
        "reported_accuracy": "not reported" if cfg.project.reported_accuracy is None
        else f"{cfg.project.reported_accuracy:.2f}",
        "description": str(cfg.project.description),
        "git_commit": git_commit(),
        "keras_backend": str(cfg.backend),
    }
    sweep = os.environ.get(SWEEP_RUN_ENV)
    if sweep:
        tags[PARENT_TAG] = sweep
    return tags


@contextmanager
def job_run(cfg: DictConfig, tags: dict[str, str], run_id: str | None = None) -> Iterator[mlflow.ActiveRun]:
    """An MLflow run for one training job (a new one, or `run_id` when resuming). On an exception it records the
    error and ends FAILED, or KILLED when interrupted (Ctrl-C, SIGTERM)."""
    name = None if run_id else str(cfg.project.id)
    with mlflow.start_run(run_id=run_id, run_name=name, tags={**base_tags(cfg), **tags}) as run:
        try:
            yield run
        except BaseException as err:
            record_failure(err)
            err.mlflow_run_id = run.info.run_id  # tells the sweep handler this failure is already recorded
            mlflow.end_run(RunStatus.to_string(RunStatus.KILLED if isinstance(err, KeyboardInterrupt)
                                               else RunStatus.FAILED))
            raise


def metric_history(run_id: str, keys: list[str]) -> dict[str, list[float]]:
    """Per-epoch values of `keys` as logged (one per step, in step order): the whole curve of a resumed run."""
    client = MlflowClient()
    history = {}
    for key in keys:
        points = {m.step: m.value for m in client.get_metric_history(run_id, key)}
        if points:
            history[key] = [points[step] for step in sorted(points)]
    return history


def record_failure(err: BaseException) -> None:
    """Error text as a tag (short) and an artifact (full traceback) of the active run."""
    text = "".join(traceback.format_exception(err))
    mlflow.set_tag("error", f"{type(err).__name__}: {err}"[:5000])
    mlflow.log_text(text, "error.txt")


def log_rejected_job(cfg: DictConfig, err: BaseException) -> None:
    """A sweep job whose config was refused before training still gets a FAILED run saying why."""
    configure(cfg)
    with mlflow.start_run(run_name=str(cfg.project.id), tags=base_tags(cfg)):
        record_failure(err)
        mlflow.end_run(RunStatus.to_string(RunStatus.FAILED))


class SweepRunCallback(Callback):
    """Hydra callback: one MLflow parent run per multirun; every job's run is its child.

    At the end the parent is FAILED if any child failed, the failed jobs are listed, and the sweep exits
    non-zero, after every job has had its turn."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        experiment_id = configure(config)
        overrides = " ".join(config.hydra.overrides.task)
        run = MlflowClient().create_run(
            experiment_id, run_name=f"sweep {overrides}"[:250],
            tags={"sweep": "true", "overrides": overrides[:5000], "git_commit": git_commit()},
        )
        os.environ[SWEEP_RUN_ENV] = run.info.run_id
        log.info("sweep parent run %s", run.info.run_id)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        parent = os.environ.pop(SWEEP_RUN_ENV, None)
        if parent is None:
            return
        client = MlflowClient()
        experiment_id = client.get_run(parent).info.experiment_id
        children = client.search_runs([experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent}'")
        failed = [r for r in children if r.info.status != "FINISHED"]
        client.set_terminated(parent, "FAILED" if failed else "FINISHED")
        if failed:
            names = ", ".join(f"{r.info.run_name} ({r.data.tags.get('error', r.info.status)})" for r in failed)
            message = f"{len(failed)} of {len(children)} sweep jobs failed: {names}"
            log.error(message)
            raise SweepFailed(message)
        log.info("sweep finished: %d jobs", len(children))


def _save_keras_model(path: str, **kwargs: Any) -> None:
    """mlflow.keras.save_model with its folder made first: with an input_example, MLflow 3 writes the example
    before creating the folder and fails (mlflow/mlflow#16183)."""
    import mlflow.keras

    os.makedirs(path, exist_ok=True)
    mlflow.keras.save_model(path=path, **kwargs)


def log_keras_model(model: Any, example: Any, requirements: list[str]) -> str:
    """Log `model` through MLflow's Keras flavor with a signature and an input example; returns its URI."""
    import mlflow.keras
    from mlflow.models import Model, infer_signature

    flavor = SimpleNamespace(__name__=mlflow.keras.__name__, save_model=_save_keras_model)
    info = Model.log(
        artifact_path=None, name="model", flavor=flavor, model=model, input_example=example,
        pip_requirements=requirements,
        signature=infer_signature(example, model.predict(example, verbose=0)),
    )
    return info.model_uri
