"""The model registry: a finished run's logged model becomes a version of `cnnlab-<project>`, and the alias
`champion` moves to it only when it beats the current champion on the validation selection metric
(`best_<selection.metric>` of their runs, in `selection.direction`; a champion without a value loses to one
with). Test figures never decide.

Exactly once: a run's version is looked up (by run id) before one is created, so a job killed after
registering and run again finds its version instead of adding another; the caller holds the run's state
lock, so no two processes register the same run. Safe beside other runs of the same project: on a local
sqlite store the decision is made under a file lock beside the store, and a registered model created by
another process at the same instant is taken as it is ("already exists")."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from filelock import FileLock
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from cnnlab import faults
from cnnlab.tracking import sqlite_file

CHAMPION = "champion"
log = logging.getLogger(__name__)


def model_name(project: str) -> str:
    return f"cnnlab-{project}"


def champion_uri(project: str) -> str:
    return f"models:/{model_name(project)}@{CHAMPION}"


@contextmanager
def _decision_lock(uri: str, name: str) -> Iterator[None]:
    """One registering process at a time per registered model, where the store is a local file."""
    path = sqlite_file(uri)
    if path is None:
        yield
        return
    with FileLock(f"{path}.{name}.lock", timeout=300):
        yield


def _ensure_registered(client: MlflowClient, name: str) -> None:
    try:
        client.create_registered_model(name, description="cnnlab: a project's trained models; alias "
                                       f"`{CHAMPION}` = the best on validation ({__name__})")
    except MlflowException as err:
        if err.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise


def score(client: MlflowClient, run_id: str, metric: str) -> float | None:
    """The run's recorded best validation value (`best_<metric>`), None when it has none."""
    return client.get_run(run_id).data.metrics.get(f"best_{metric}")


def beats(new: float | None, old: float | None, direction: str) -> bool:
    """Whether a value takes the champion's place: strictly better, or the champion has none."""
    if new is None:
        return False
    return old is None or (new > old if direction == "maximize" else new < old)


def register(cfg: DictConfig, run_id: str) -> ModelVersion:
    """Register the run's logged model as a version of `cnnlab-<project>` (once) and move `champion` to it
    when it beats the current champion; returns the run's version."""
    client = MlflowClient(cfg.tracking.uri)
    name, metric, direction = model_name(cfg.project.id), str(cfg.selection.metric), str(cfg.selection.direction)
    run = client.get_run(run_id)
    models = [output.model_id for output in run.outputs.model_outputs]
    if not models:
        raise RuntimeError(f"run {run_id} has no logged model to register (tracking.log_model=false?)")
    with _decision_lock(cfg.tracking.uri, name):
        _ensure_registered(client, name)
        found = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
        if found:
            version = found[0]
        else:
            value = score(client, run_id, metric)
            version = client.create_model_version(
                name, source=f"models:/{models[0]}", run_id=run_id, model_id=models[0],
                tags={f"best_{metric}": str(value)})
            log.info("registered run %s as %s version %s", run_id, name, version.version)
        faults.reach("registered")
        _crown(client, name, version, metric, direction)
    return version


def _crown(client: MlflowClient, name: str, version: ModelVersion, metric: str, direction: str) -> None:
    """Move `champion` to `version` if it beats the version that holds it (or none holds it)."""
    try:
        current = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        current = None
    if current is not None and current.version == version.version:
        return
    new = score(client, version.run_id, metric)
    old = None if current is None else score(client, current.run_id, metric)
    if current is None or beats(new, old, direction):
        client.set_registered_model_alias(name, CHAMPION, version.version)
        log.info("%s@%s is now version %s (best_%s %s, was %s)", name, CHAMPION, version.version, metric, new, old)
    else:
        log.info("%s version %s (best_%s %s) does not beat %s@%s = version %s (%s)", name, version.version, metric,
                 new, name, CHAMPION, current.version if current else None, old)
