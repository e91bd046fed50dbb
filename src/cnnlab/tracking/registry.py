"""The model registry: a finished run's logged model becomes a version of `cnnlab-<project>`, and the alias
`champion` moves to it only when it beats the current champion on the validation selection metric
(`best_<selection.metric>` of their runs, in `selection.direction`; a champion without a value loses to one
with). Test figures never decide.

Exactly once: a run's version is looked up (by run id) before one is created, so a job killed after
registering and run again finds its version instead of adding another; the caller holds the run's state
lock, so no two processes register the same run. Right beside other runs of the same project on any store:
after its version exists, every registering job recomputes the champion from all versions' recorded values,
points the alias at the best and reads it back until it stands (see `crown`), so the alias ends on the best
whatever order the jobs' decisions land in (on a local sqlite store the decisions are also made one at a time,
under a file lock beside the store). A registered model created by
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
from tenacity import RetryCallState, retry, retry_if_exception_type, stop_after_attempt

from cnnlab.config.schema import Direction, SelectionConfig, sqlite_file
from cnnlab.run import faults

CHAMPION = "champion"
CROWN_ATTEMPTS = 10
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


def score(client: MlflowClient, version: ModelVersion, metric: str) -> float | None:
    """A version's recorded best validation value (its tag `best_<metric>`, from its run when the tag is missing);
    None when it has none."""
    recorded = (version.tags or {}).get(f"best_{metric}")
    if recorded is None:
        return client.get_run(version.run_id).data.metrics.get(f"best_{metric}")
    return None if recorded == "None" else float(recorded)


def best_version(client: MlflowClient, versions: list[ModelVersion], metric: str,
                 direction: Direction) -> ModelVersion | None:
    """The version with the best value in `direction` (the earliest of equals; one without a value never wins
    over one with)."""
    scored = [(score(client, v, metric), int(v.version), v) for v in versions]
    valued = [item for item in scored if item[0] is not None]
    if not valued:
        return min(scored, key=lambda item: item[1])[2] if scored else None
    sign = -1 if direction == Direction.maximize else 1
    return min(valued, key=lambda item: (sign * item[0], item[1]))[2]


def register(tracking_uri: str, project: str, selection: SelectionConfig, run_id: str) -> ModelVersion:
    """Register the run's logged model as a version of `cnnlab-<project>` (once) and point `champion` at the best
    version; returns the run's version."""
    client = MlflowClient(tracking_uri)
    name, metric = model_name(project), selection.metric.value
    run = client.get_run(run_id)
    models = [output.model_id for output in run.outputs.model_outputs]
    if not models:
        raise RuntimeError(f"run {run_id} has no logged model to register (tracking.log_model=false?)")
    with _decision_lock(tracking_uri, name):
        _ensure_registered(client, name)
        found = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
        if found:
            version = found[0]
        else:
            value = run.data.metrics.get(f"best_{metric}")
            version = client.create_model_version(
                name, source=f"models:/{models[0]}", run_id=run_id, model_id=models[0],
                tags={f"best_{metric}": str(value)})
            log.info("registered run %s as %s version %s", run_id, name, version.version)
        faults.reach("registered")
        crown(client, name, metric, selection.direction)
    return version


def crown(client: MlflowClient, name: str, metric: str, direction: Direction) -> ModelVersion | None:
    """Point `champion` at the best of all of `name`'s versions (see `best_version`); returns the champion.

    Every write is checked by reading again: on a server another job may move the alias between this job's read
    and its write (and MLflow writes an alias by check-then-insert, so two first writes at once fail one with a
    unique-key error). The job that writes last sees whether its write stands against all versions, so the alias
    ends on the best whatever order the jobs' reads and writes land in. Up to CROWN_ATTEMPTS reads: after this
    job's own write the next at once, after a write that failed 0.2 s times the attempts so far later (the last
    one's MlflowException is raised); a champion still moving after them is a RuntimeError."""
    try:
        return _crown_once(client, name, metric, direction)
    except _Beaten as beaten:
        raise beaten.error from None
    except _Written:
        raise RuntimeError(f"{name}@{CHAMPION} was still being moved by other jobs after {CROWN_ATTEMPTS} "
                           "attempts; register again to settle it") from None


class _Written(Exception):
    """This job moved the alias: read it again to see whether the write stands."""


class _Beaten(Exception):
    """Another job set the alias at the same instant, and this job's write failed."""

    def __init__(self, name: str, error: MlflowException) -> None:
        super().__init__(name)
        self.name, self.error = name, error


def _wait(state: RetryCallState) -> float:
    return 0.2 * state.attempt_number if isinstance(state.outcome.exception(), _Beaten) else 0.0


def _reading_again(state: RetryCallState) -> None:
    beaten = state.outcome.exception()
    if isinstance(beaten, _Beaten):
        log.info("%s@%s was set by another job at the same instant (%s); reading it again", beaten.name, CHAMPION,
                 beaten.error.message.splitlines()[0])


@retry(retry=retry_if_exception_type((_Written, _Beaten)), stop=stop_after_attempt(CROWN_ATTEMPTS), wait=_wait,
       before_sleep=_reading_again, reraise=True)
def _crown_once(client: MlflowClient, name: str, metric: str, direction: Direction) -> ModelVersion | None:
    """One attempt of `crown`: the champion when it stands on the best version (None: no version), _Written after
    this job moved it, _Beaten when its write failed."""
    best = best_version(client, client.search_model_versions(f"name = '{name}'"), metric, direction)
    if best is None:
        return None
    try:
        current = client.get_model_version_by_alias(name, CHAMPION).version
    except MlflowException:
        current = None
    if current == best.version:
        return best
    faults.reach("crowning")
    try:
        client.set_registered_model_alias(name, CHAMPION, best.version)
    except MlflowException as err:
        raise _Beaten(name, err) from err
    log.info("%s@%s is now version %s (best_%s %s; %s)", name, CHAMPION, best.version, metric,
             score(client, best, metric), "the first" if current is None else f"was version {current}")
    raise _Written


def champions(tracking_uri: str, projects: list[str]) -> dict[str, str]:
    """The version `champion` points at, per project that has one in the store."""
    database = sqlite_file(tracking_uri)
    if database is not None and not database.exists():
        return {}
    client, found = MlflowClient(tracking_uri), {}
    for project in projects:
        try:
            found[project] = client.get_model_version_by_alias(model_name(project), CHAMPION).version
        except MlflowException:
            continue
    return found
