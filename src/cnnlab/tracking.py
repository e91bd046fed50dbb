"""MLflow side of cnnlab: the store checked before anything runs, one run per training job (resumed when its
state says so, nested under a sweep's parent run), failure records, abandoned runs ended, the results and the
model logged exactly once, and the Hydra callback that owns a sweep's parent run (and records its best job).

Runs carry the tags `cnnlab.key` (the hash of their settings), `cnnlab.host` and `cnnlab.state` (the state
folder whose lock a live job holds): a RUNNING run on this host whose state nobody holds has lost its job."""

from __future__ import annotations

import atexit
import logging
import os
import socket
import subprocess
import time
import traceback
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import mlflow.data
from filelock import FileLock, Timeout
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from mlflow.entities import LoggedModelOutput, LoggedModelStatus, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, ListConfig, OmegaConf
from optuna import TrialPruned

from cnnlab import faults
from cnnlab.config import fail, settings
from cnnlab.files import writable_dir
from cnnlab.runstate import RunState

log = logging.getLogger(__name__)
logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # its start/stop lines, on every run

SWEEP_RUN_ENV = "CNNLAB_SWEEP_RUN_ID"
SWEEP_VARIED_ENV = "CNNLAB_SWEEP_VARIED"
PARENT_TAG = "mlflow.parentRunId"
KEY_TAG, HOST_TAG, STATE_TAG, PID_TAG = "cnnlab.key", "cnnlab.host", "cnnlab.state", "cnnlab.pid"
HOST = socket.gethostname()
PRUNED_TAG = "optuna.state"
EPOCH_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "epoch_seconds")


class SweepFailed(SystemExit):
    """Some jobs of a multirun failed; raised after all jobs ran so the sweep exits non-zero. A SystemExit,
    because Hydra turns a callback's ordinary exceptions into warnings."""


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


def open_store(cfg: DictConfig) -> str:
    """Point MLflow at the configured store, checked first, and make sure the experiment exists (created under
    the store lock, so parallel jobs do not race to create it); returns the experiment id."""
    uri = cfg.tracking.uri
    check_store(uri)
    mlflow.set_tracking_uri(uri)
    with store_lock(uri):
        if mlflow.get_experiment_by_name(cfg.tracking.experiment) is None:
            try:
                mlflow.create_experiment(cfg.tracking.experiment, artifact_location=artifact_location(uri))
            except MlflowException as err:  # on a server, another client's job created it just now
                if err.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
        experiment = mlflow.set_experiment(cfg.tracking.experiment)
    expected = artifact_location(uri)
    if expected and experiment.artifact_location.startswith("file:") and experiment.artifact_location != expected:
        fail("tracking.uri", uri, f"a store whose experiment {cfg.tracking.experiment!r} keeps its artifacts beside "
             f"it ({expected}), but they go to {experiment.artifact_location}: the store was copied or moved, and "
             "new artifacts would land in the old place. Use the store where it was made, or another experiment "
             "(tracking.experiment=...)")
    return experiment.experiment_id


def artifact_location(uri: str) -> str | None:
    """Artifacts of a local sqlite store go to `mlruns/` beside its file (MLflow's default is `./mlruns` in
    whatever folder the first run started from); other stores decide for themselves."""
    path = sqlite_file(uri)
    return None if path is None else (path.resolve().parent / "mlruns").as_uri()


def flatten(node: Any) -> dict[str, str]:
    """A nested config as `a.b.0.c` -> value strings, as MLflow params."""
    flat: dict[str, str] = {}

    def walk(value: Any, prefix: str) -> None:
        if isinstance(value, dict | list) and value:
            for key, item in value.items() if isinstance(value, dict) else enumerate(value):
                walk(item, f"{prefix}.{key}" if prefix else str(key))
        else:
            flat[prefix] = str(value)

    walk(OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node, "")
    return flat


def run_params(cfg: DictConfig) -> dict[str, str]:
    """A run's params, what users compare (the compare view's axes): the settings that decide the model, except
    the data's identity (`data.generate.*`, md5), which is described by the tags data, data_source, data_md5 and
    data_sha256 instead."""
    return {key: value for key, value in flatten(settings(cfg)).items() if not key.startswith("data.")}


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
    """What describes a job's run without deciding its result (so it may change when a run is resumed)."""
    tags = {
        "project": str(cfg.project.id),
        "reported_accuracy": "not reported" if cfg.project.reported_accuracy is None
        else f"{cfg.project.reported_accuracy / 100:.4f}",  # a fraction, like test_accuracy
        "description": str(cfg.project.description),
        "git_commit": git_commit(),
        "keras_backend": str(cfg.backend),
    }
    if os.environ.get("DVC_STAGE"):
        tags["dvc_stage"] = os.environ["DVC_STAGE"]
    if os.environ.get("DVC_EXP_NAME"):  # `dvc exp run`, queued or not: which experiment the run belongs to
        tags["dvc_experiment"] = os.environ["DVC_EXP_NAME"]
    if HydraConfig.initialized():
        tags["overrides"] = " ".join(HydraConfig.get().overrides.task)[:5000]
    sweep = os.environ.get(SWEEP_RUN_ENV)
    if sweep:
        tags[PARENT_TAG] = sweep
    return tags


def sweep_keys(config: DictConfig) -> list[str]:
    """The keys a multirun varies: its sweep overrides (`a=1,2`, `glob(...)`, `range(...)`) and the sweeper's
    search space (`hydra.sweeper.params`)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
    space = config.hydra.sweeper.get("params") or {}
    return list(dict.fromkeys([o.key_or_group for o in parsed if o.is_sweep_override()] + list(space)))


def _value_of(cfg: DictConfig, key: str) -> str:
    """A varied key's value in this job: the option chosen for a config group, the value otherwise."""
    value = OmegaConf.select(cfg, key, default=None)
    if isinstance(value, DictConfig | ListConfig) or value is None:
        from hydra.core.hydra_config import HydraConfig

        return str(HydraConfig.get().runtime.choices.get(key, value)) if HydraConfig.initialized() else str(value)
    return str(value)


def run_name(cfg: DictConfig, key: str, test_accuracy: float | None = None) -> str:
    """A name that tells runs apart in the runs table, most telling first (the UI cuts long names): project,
    test accuracy once known, the values a sweep varies, data, epochs (and a cap in force), the start of the
    settings' hash."""
    epochs = f"{cfg.training.epochs} ep" + (f" (cap {cfg.max_epochs})" if cfg.max_epochs else "")
    varied = [k for k in filter(None, os.environ.get(SWEEP_VARIED_ENV, "").split(",")) if k not in ("project", "data")]
    values = [f"{k.rsplit('.', 1)[-1]}={_value_of(cfg, k)}" for k in varied]
    head = str(cfg.project.id) + ("" if test_accuracy is None else f" test {test_accuracy:.1%}")
    return " · ".join([head, *values, str(cfg.data.name), epochs, key[:6]])


def name_with_result(run_id: str, cfg: DictConfig, key: str, test_accuracy: float) -> None:
    """The finished run's name also shows its test accuracy, so the runs table shows it without added columns."""
    MlflowClient().update_run(run_id, name=run_name(cfg, key, test_accuracy))


def finished_run(experiment_id: str, key: str) -> Any | None:
    """The newest FINISHED run with these settings, or None."""
    found = MlflowClient().search_runs(
        [experiment_id], filter_string=f"tags.`{KEY_TAG}` = '{key}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"], max_results=1)
    return found[0] if found else None


def process_alive(pid: str | None) -> bool:
    """Whether a process with this id runs on this host."""
    try:
        os.kill(int(pid or 0), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return int(pid or 0) > 0


def end_abandoned_runs(experiment_id: str) -> None:
    """End KILLED the runs of this host that are RUNNING but whose process is gone (kill -9, a crash, a
    reboot): a job's run whose state folder nobody holds, a sweep's parent whose process is dead. A job's run
    stays resumable from its state."""
    store = MlflowClient()
    running = store.search_runs([experiment_id], filter_string=f"attributes.status = 'RUNNING' and "
                                                              f"tags.`{HOST_TAG}` = '{HOST}'")
    for run in running:
        tags = run.data.tags
        gone = (not process_alive(tags.get(PID_TAG))) if STATE_TAG not in tags else not RunState.is_claimed(
            Path(tags[STATE_TAG]))
        if gone:
            log.warning("run %s (%s) was left RUNNING by a process that is gone: ending it KILLED",
                        run.info.run_id, run.info.run_name)
            store.set_tag(run.info.run_id, "error", "abandoned: its process stopped without ending the run")
            store.set_terminated(run.info.run_id, "KILLED")


def _resumable(cfg: DictConfig, state: RunState, experiment_id: str) -> str | None:
    """The run id in the state's record when that run can be continued; otherwise None, with a log line that
    says why (and the record's run ended KILLED when it was left RUNNING)."""
    record = state.record()
    if record is None:
        return None
    run_id, store = record["run_id"], MlflowClient()
    if record.get("tracking_uri") != cfg.tracking.uri or record.get("experiment_id") != experiment_id:
        log.warning("%s belongs to run %s of %s (experiment %s), not to this job's store and experiment: "
                    "starting a new run", state.folder, run_id, record.get("tracking_uri"),
                    record.get("experiment_id"))
        return None
    try:
        run = store.get_run(run_id)
    except MlflowException:
        log.warning("run %s of %s is not in the store any more: starting a new run", run_id, state.folder)
        return None
    if run.info.lifecycle_stage == "deleted":
        log.warning("run %s of %s was deleted: starting a new run", run_id, state.folder)
        return None
    if run.info.status == "FINISHED":
        log.info("run %s of %s has finished: starting a new run", run_id, state.folder)
        return None
    if state.epochs_done() == 0 and not state.trained_file.exists() and run.data.metrics:
        reason = "its epochs were logged but their backup is gone"
        log.warning("run %s: %s; starting a new run", run_id, reason)
        if run.info.status == "RUNNING":
            store.set_tag(run_id, "error", f"abandoned: {reason}")
            store.set_terminated(run_id, "KILLED")
        return None
    return run_id


@contextmanager
def job_run(cfg: DictConfig, state: RunState, experiment_id: str, tags: dict[str, str]) -> Iterator[Any]:
    """The job's MLflow run: the state's run continued when it can be, otherwise a new one recorded in the
    state. Its params are the settings (logged once: a resumed run only gets what it lacks); everything else is
    a tag. The run ends FINISHED, or with the error recorded, FAILED (KILLED when interrupted). A search trial
    stopped by its pruner ends KILLED with the tag `optuna.state` = PRUNED and no error: it was stopped on
    purpose, and a KILLED run is never taken for a finished one (on_finished=skip reuses FINISHED runs only)."""
    end_abandoned_runs(experiment_id)
    run_id = _resumable(cfg, state, experiment_id)
    tags = {**base_tags(cfg), **tags, KEY_TAG: state.key, HOST_TAG: HOST, STATE_TAG: str(state.folder.resolve())}
    system_metrics = bool(cfg.tracking.system_metrics)
    if system_metrics:
        mlflow.set_system_metrics_sampling_interval(float(cfg.tracking.system_metrics_interval))
    if run_id is None:
        state.reset()
        run = mlflow.start_run(run_name=run_name(cfg, state.key), tags=tags, log_system_metrics=system_metrics)
        state.remember(tracking_uri=cfg.tracking.uri, experiment_id=experiment_id, run_id=run.info.run_id)
    else:
        log.info("resuming MLflow run %s from %s", run_id, state.folder)
        run = mlflow.start_run(run_id=run_id, tags=tags, log_system_metrics=system_metrics)
        if "error" in run.data.tags:
            MlflowClient().delete_tag(run_id, "error")  # the failure it ended with is over
    logged = MlflowClient().get_run(run.info.run_id).data.params
    params = run_params(cfg)
    mlflow.log_params({k: v for k, v in params.items() if k not in logged})
    try:
        yield run
    except TrialPruned as err:
        mlflow.set_tags({PRUNED_TAG: "PRUNED", "optuna.pruned": str(err)})
        mlflow.end_run(RunStatus.to_string(RunStatus.KILLED))
        raise
    except BaseException as err:
        record_failure(err)
        err.mlflow_run_id = run.info.run_id  # tells the sweep handler this failure is already recorded
        # KeyboardInterrupt: Ctrl-C or SIGTERM (cnnlab.callbacks); SystemExit: submitit requeueing a task
        stopped = isinstance(err, KeyboardInterrupt | SystemExit)
        mlflow.end_run(RunStatus.to_string(RunStatus.KILLED if stopped else RunStatus.FAILED))
        raise
    mlflow.end_run(RunStatus.to_string(RunStatus.FINISHED))


def log_datasets(run_id: str, splits: dict[str, tuple[Any, Any]], source: Path, name: str, sha256: str) -> None:
    """Dataset lineage: each split the run used (training, validation, test) as an MLflow dataset input, named
    `<data>-<split>`, sourced from the prepared file and with the prepared data's sha256 as its digest (cut to the
    36 characters MLflow's dataset table holds; the whole sha256 is the input's tag `sha256`). Logged once: a
    resumed run that has them logs nothing."""
    if MlflowClient().get_run(run_id).inputs.dataset_inputs:
        return
    for context, (images, labels) in splits.items():
        with warnings.catch_warnings():  # MLflow registers its local source class twice, then warns about it
            warnings.filterwarnings("ignore", "The specified dataset source can be interpreted in multiple ways")
            dataset = mlflow.data.from_numpy(images, source=str(source.resolve()), targets=labels,
                                             name=f"{name}-{context}", digest=sha256[:36])
        for attempt in range(3):
            try:
                mlflow.log_input(dataset, context=context, tags={"sha256": sha256})
                break
            except MlflowException:
                # jobs logging the same new dataset at once race in MLflow's check-then-insert (the dataset's
                # unique key); the next attempt finds the dataset the other job created and only links it
                if attempt == 2:
                    raise
                time.sleep(0.5 * (attempt + 1))


def replay_epochs(run_id: str, history: list[dict[str, float]]) -> None:
    """Log the epochs of `history` that the run does not have yet: backed up before a kill, not yet logged."""
    logged = {m.step for m in MlflowClient().get_metric_history(run_id, "loss")}
    for epoch, metrics in enumerate(history):
        if epoch not in logged:
            mlflow.log_metrics(metrics, step=epoch, synchronous=True)


def record_failure(err: BaseException) -> None:
    """Error text as a tag (short) and an artifact (full traceback) of the active run."""
    text = "".join(traceback.format_exception(err))
    mlflow.set_tag("error", f"{type(err).__name__}: {err}"[:5000])
    mlflow.log_text(text, "error.txt")


def log_rejected_job(cfg: DictConfig, err: BaseException) -> None:
    """A sweep job whose config was refused before training still gets a FAILED run saying why."""
    open_store(cfg)
    with mlflow.start_run(run_name=str(cfg.project.id), tags=base_tags(cfg)):
        record_failure(err)
        mlflow.end_run(RunStatus.to_string(RunStatus.FAILED))


def log_results(run_id: str, metrics: dict[str, float], folder: Path, artifacts: list[str]) -> None:
    """The run's final metrics (one batch, skipped if a stopped attempt already logged them) and files (logging
    a file again overwrites it, never doubles it)."""
    if "test_accuracy" not in MlflowClient().get_run(run_id).data.metrics:
        mlflow.log_metrics(metrics, synchronous=True)
    for name in artifacts:
        mlflow.log_artifact(str(folder / name))


def log_model_once(state: RunState, run_id: str, model: Any, example: Any, class_names: list[str]) -> str:
    """Log `model` through MLflow's Keras flavor (signature, input example, the class names as metadata) as the
    run's one logged model, packaged to load anywhere (cnnlab.mlmodel: pinned requirements, cnnlab's code).

    Done in steps that a rerun can finish: the model entry is created and remembered in the state, its files
    uploaded, then it is marked READY and linked to the run, last. A rerun completes a remembered model and
    deletes one a killed job created but did not remember; the run never links two."""
    from mlflow.models import Model, infer_signature

    store = MlflowClient()
    run = store.get_run(run_id)
    known = (state.record() or {}).get("model_id")
    for found in store.search_logged_models([run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'"):
        if found.model_id != known:
            store.delete_logged_model(found.model_id)
    if known is None:
        known = store.create_logged_model(run.info.experiment_id, name="model", source_run_id=run_id,
                                          params=run.data.params).model_id
        state.remember(model_id=known)
    entry = store.get_logged_model(known)
    if entry.status != LoggedModelStatus.READY:
        import keras
        import mlflow.keras
        from mlflow.utils.file_utils import TempDir

        from cnnlab import mlmodel

        with TempDir() as tmp:
            local = tmp.path("model")
            os.makedirs(local)  # MLflow 3 writes the input example before making the folder (mlflow/mlflow#16183)
            mlflow.keras.save_model(
                model, local, input_example=example, pip_requirements=mlmodel.requirements(keras.backend.backend()),
                signature=infer_signature(example, model.predict(example, verbose=0)),
                metadata={"class_names": list(class_names)},
                mlflow_model=Model(artifact_path=entry.artifact_location, model_uuid=known, run_id=run_id,
                                   model_id=known))
            mlmodel.add_cnnlab(local)
            store.log_model_artifacts(known, local)
        faults.reach("model_logging")
        store.finalize_logged_model(known, LoggedModelStatus.READY)
    if known not in {output.model_id for output in run.outputs.model_outputs}:
        store.log_outputs(run_id, [LoggedModelOutput(known, step=0)])
    return f"models:/{known}"


def record_best(parent: str, run_id: str, overrides: str, value: float, params: dict[str, Any] | None = None,
                tags: dict[str, str] | None = None) -> None:
    """The sweep's best job on its parent run: tags `best_run_id` and `best_overrides`, metric `best_value`, and
    for a search the best trial's values as params (named like the jobs' params) and its trial as tags."""
    store = MlflowClient()
    for key, tag in {"best_run_id": run_id, "best_overrides": overrides[:5000], **(tags or {})}.items():
        store.set_tag(parent, key, tag)
    store.log_metric(parent, "best_value", value)
    for key, param in (params or {}).items():
        store.log_param(parent, key, param)


def link_study(parent: str, study_name: str, storage: str) -> None:
    """Tag a search's parent run with the Optuna study it advances (the storage URL without its password)."""
    store = MlflowClient()
    store.set_tag(parent, "optuna.study_name", study_name)
    store.set_tag(parent, "optuna.storage", storage)


def best_child(children: list[Any], metric: str, direction: str) -> Any | None:
    """The finished child with the best `metric` in `direction`, or None when no child has it."""
    scored = [r for r in children if r.info.status == "FINISHED" and metric in r.data.metrics]
    pick = max if direction == "maximize" else min
    return pick(scored, key=lambda r: r.data.metrics[metric], default=None)


class SweepRunCallback(Callback):
    """Hydra callback: one MLflow parent run per multirun; every job's run is its child.

    At the end the parent records the best child by the value the jobs return, `best_<selection.metric>` in
    `selection.direction` (unless the sweeper recorded it already: a search knows its study's best, which may come
    from an earlier, interrupted invocation). It is FAILED if any child failed (a pruned search trial has not), the
    failed jobs are listed, and the sweep exits non-zero, after every job has had its turn. A sweep stopped early
    (Ctrl-C, SIGTERM) ends its parent KILLED on the way out; one killed outright is ended KILLED by the next job
    that finds it."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        experiment_id = open_store(config)
        end_abandoned_runs(experiment_id)
        overrides = " ".join(config.hydra.overrides.task)
        run = MlflowClient().create_run(
            experiment_id, run_name=f"sweep {overrides}"[:250],
            tags={"sweep": "true", "overrides": overrides[:5000], "git_commit": git_commit(), HOST_TAG: HOST,
                  PID_TAG: str(os.getpid())},
        )
        os.environ[SWEEP_RUN_ENV] = run.info.run_id
        os.environ[SWEEP_VARIED_ENV] = ",".join(sweep_keys(config))
        atexit.register(_end_unfinished_sweep, run.info.run_id)
        log.info("sweep parent run %s", run.info.run_id)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        parent = os.environ.pop(SWEEP_RUN_ENV, None)
        os.environ.pop(SWEEP_VARIED_ENV, None)
        if parent is None:
            return
        atexit.unregister(_end_unfinished_sweep)
        store = MlflowClient()
        experiment_id = store.get_run(parent).info.experiment_id
        children = store.search_runs([experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent}'")
        best = best_child(children, f"best_{config.selection.metric}", config.selection.direction)
        if best is not None and "best_run_id" not in store.get_run(parent).data.tags:
            record_best(parent, best.info.run_id, best.data.tags.get("overrides", ""),
                        best.data.metrics[f"best_{config.selection.metric}"])
        failed = [r for r in children if r.info.status != "FINISHED" and r.data.tags.get(PRUNED_TAG) != "PRUNED"]
        store.set_terminated(parent, "FAILED" if failed else "FINISHED")
        if failed:
            names = ", ".join(f"{r.info.run_name} ({r.data.tags.get('error', r.info.status)})" for r in failed)
            message = f"{len(failed)} of {len(children)} sweep jobs failed: {names}"
            log.error(message)
            raise SweepFailed(message)
        log.info("sweep finished: %d jobs", len(children))


def _end_unfinished_sweep(parent: str) -> None:
    """At exit of a sweep that did not reach its end (Ctrl-C, an error in Hydra): the parent run ends KILLED."""
    store = MlflowClient()
    if store.get_run(parent).info.status == "RUNNING":
        store.set_tag(parent, "error", "the sweep stopped before all its jobs had run")
        store.set_terminated(parent, "KILLED")
