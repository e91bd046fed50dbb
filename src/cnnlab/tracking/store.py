"""The MLflow store: where it is, checked before anything runs (writable sqlite file, or a server that answers
within 10 s), opened under a lock where it is a local file (MLflow migrates a fresh sqlite store on first open,
and two processes doing that at once fail, mlflow#4123), and the experiment made sure of: it exists, and it is
tagged as model training (`mlflow.experimentKind` = `custom_model_development`), for UIs that go by the tag. MLflow
3.17's own UI does not: it opens every experiment in the view of its GenAI / Model training switch (the URL's
`workflowType`, else the browser's last choice, else GenAI), so cnnlab's links name the view (`ui_url`) and
docs/tracking.md gives the click path.

MLflow is imported inside the functions that open the store: checking it (`check_store`, in every command's check
of its command line, cnnlab.cli) imports no MLflow, which takes seconds."""

from __future__ import annotations

import logging
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

from filelock import FileLock, Timeout

from cnnlab.config.errors import fail
from cnnlab.config.schema import TrackingConfig, sqlite_file
from cnnlab.run.files import writable_dir

# The experiment tag that says what an experiment is for: model development (the runs table) or GenAI (traces).
# MLflow 3.17's UI takes an experiment's kind from its GenAI / Model training switch instead (docs/tracking.md).
EXPERIMENT_KIND = "mlflow.experimentKind"
MODEL_DEVELOPMENT = "custom_model_development"


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
    experiment_id = _open(tracking, create=True)
    assert experiment_id is not None  # created where missing
    return experiment_id


def open_existing_store(tracking: TrackingConfig) -> str | None:
    """`open_store` where the store and its experiment are there already, else None, having created nothing. A job
    looks for its finished run this way before its backend starts (seconds of imports) and before its model is
    checked: a new store is made only for a job that passed every check. Only a local sqlite file that exists and
    a tracking server are opened early; a database URL is left to `open_store` (opening it may create its
    tables)."""
    path = sqlite_file(tracking.uri)
    opened_early = path.exists() if path is not None else tracking.uri.startswith(("http://", "https://"))
    return _open(tracking, create=False) if opened_early else None


def _open(tracking: TrackingConfig, create: bool) -> str | None:
    """`open_store`, checking the store and looking its experiment up once; without `create`, None where the
    experiment is missing, MLflow not pointed at the store and nothing made."""
    import mlflow  # heavy: see the module's docstring

    uri = tracking.uri
    check_store(uri)
    # "Creating initial MLflow database tables..." and "Updating database tables" on a new sqlite store: MLflow's
    # set-up, not news for the user (its warnings and errors still show)
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    if ensure_experiment(uri, tracking.experiment, create) is None:
        return None
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.set_experiment(tracking.experiment)
    expected = artifact_location(uri)
    if expected and experiment.artifact_location.startswith("file:") and experiment.artifact_location != expected:
        fail("tracking.uri", uri, f"a store whose experiment {tracking.experiment!r} keeps its artifacts beside "
             f"it ({expected}), but they go to {experiment.artifact_location}: the store was copied or moved, and "
             "new artifacts would land in the old place. Use the store where it was made, or another experiment "
             "(tracking.experiment=...)")
    if experiment.tags.get(EXPERIMENT_KIND) != MODEL_DEVELOPMENT:  # a new experiment, or one made before
        mlflow.MlflowClient(uri).set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND, MODEL_DEVELOPMENT)
    return experiment.experiment_id


def ensure_experiment(uri: str, name: str, create: bool = True) -> str | None:
    """The id of the experiment `name` in the store at `uri`, created under the store lock if missing (so
    parallel jobs do not race to create it); without `create`, None where it is missing."""
    from mlflow.exceptions import MlflowException  # heavy: see the module's docstring
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    with store_lock(uri):  # the file may be a store another job is making right now
        found = client.get_experiment_by_name(name)
        if found is None:
            if not create:
                return None
            try:
                return client.create_experiment(name, artifact_location=artifact_location(uri),
                                                tags={EXPERIMENT_KIND: MODEL_DEVELOPMENT})
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


def ui_url(base: str, experiment_id: str, run_id: str | None = None) -> str:
    """The MLflow UI's page of an experiment's runs table (or of one run) at `base`, in the UI's model-training
    view: MLflow 3.17's UI picks its view from a global GenAI / Model training switch (the URL's `workflowType`,
    else the browser's last choice of the switch, else GenAI), not from the experiment's kind, so a plain
    experiment link opens a GenAI overview of traces in a browser that never chose."""
    page = f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs" + (f"/{run_id}" if run_id else "")
    return f"{page}?workflowType=machine_learning"
