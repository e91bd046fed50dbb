"""The MLflow store: where it is, checked before anything runs (writable sqlite file, or a server that answers
within 10 s), opened under a lock where it is a local file (MLflow migrates a fresh sqlite store on first open,
and two processes doing that at once fail, mlflow#4123), and the experiment made sure of.

MLflow is imported inside the functions, so `sqlite_file` costs nothing to import."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from cnnlab.config.errors import fail
from cnnlab.config.schema import TrackingConfig
from cnnlab.run.files import writable_dir


def sqlite_file(uri: str) -> Path | None:
    """The database file of a local `sqlite:///` store; None for any other store."""
    if not uri.startswith("sqlite:///") or uri.endswith(":memory:"):
        return None
    return Path(uri.removeprefix("sqlite:///"))


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Serialise the opening of a local sqlite store across processes: MLflow creates and migrates the tables
    on first open, and two processes doing that at once fail ("table ... already exists", mlflow#4123)."""
    path = sqlite_file(uri)
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(f"{path}.lock", timeout=120):
            yield
    except Timeout:
        fail("tracking.uri", uri, f"a store this process can open; {path}.lock stayed locked for 2 minutes "
                                  "(another process stuck opening the store?)")


def check_store(uri: str) -> None:
    """Refuse, before anything is loaded or trained, a store that cannot be written (sqlite) or reached (HTTP),
    with the reason, instead of a hang or a failure after training."""
    path = sqlite_file(uri)
    if path is not None:
        problem = writable_dir(path.parent)
        if problem is None and path.exists():
            try:
                open(path, "r+b").close()
            except OSError as err:
                problem = f"cannot write {path}: {err.strerror}"
        if problem:
            fail("tracking.uri", uri, f"a store cnnlab can write ({problem})")
    elif uri.startswith(("http://", "https://")):
        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=10).close()
        except (urllib.error.URLError, OSError) as err:
            fail("tracking.uri", uri, f"a tracking server that answers; {uri}/health gave: {err}")


def open_store(tracking: TrackingConfig) -> str:
    """Point MLflow at the configured store, checked first, and make sure the experiment exists (created under
    the store lock, so parallel jobs do not race to create it); returns the experiment id."""
    import mlflow

    uri = tracking.uri
    check_store(uri)
    mlflow.set_tracking_uri(uri)
    ensure_experiment(uri, tracking.experiment)
    experiment = mlflow.set_experiment(tracking.experiment)
    expected = artifact_location(uri)
    if expected and experiment.artifact_location.startswith("file:") and experiment.artifact_location != expected:
        fail("tracking.uri", uri, f"a store whose experiment {tracking.experiment!r} keeps its artifacts beside "
             f"it ({expected}), but they go to {experiment.artifact_location}: the store was copied or moved, and "
             "new artifacts would land in the old place. Use the store where it was made, or another experiment "
             "(tracking.experiment=...)")
    return experiment.experiment_id


def ensure_experiment(uri: str, name: str) -> str:
    """The id of the experiment `name` in the store MLflow points at, created under the store lock if missing (so
    parallel jobs do not race to create it)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    with store_lock(uri):
        found = client.get_experiment_by_name(name)
        if found is None:
            try:
                return client.create_experiment(name, artifact_location=artifact_location(uri))
            except MlflowException as err:  # on a server, another client's job created it just now
                if err.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                found = client.get_experiment_by_name(name)
    return found.experiment_id


def artifact_location(uri: str) -> str | None:
    """Artifacts of a local sqlite store go to `mlruns/` beside its file (MLflow's default is `./mlruns` in
    whatever folder the first run started from); other stores decide for themselves."""
    path = sqlite_file(uri)
    return None if path is None else (path.resolve().parent / "mlruns").as_uri()
