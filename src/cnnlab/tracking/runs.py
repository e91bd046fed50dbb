"""A training job's MLflow run: continued when its state says so, nested under a sweep's parent run, reused when a
run of the same key finished, ended as what happened (never FINISHED unless it finished), and failure records.
Runs their process abandoned are ended by cnnlab.tracking.abandoned."""

from __future__ import annotations

import atexit
import logging
import signal
import threading
import traceback
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import LoggedModelStatus, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from optuna import TrialPruned

from cnnlab.config.schema import TrackingConfig
from cnnlab.run import faults
from cnnlab.run.checkpoint import Damaged
from cnnlab.run.host import HOST
from cnnlab.run.state import RunState, StateDamaged
from cnnlab.tracking.abandoned import HOST_TAG, KEY_TAG, STATE_TAG, end_abandoned_runs, state_runs
from cnnlab.tracking.store import open_store

log = logging.getLogger(__name__)
logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # its start/stop lines, on every run

PRUNED_TAG = "optuna.state"


def rename(run_id: str, name: str) -> None:
    MlflowClient().update_run(run_id, name=name)


def finished_run(experiment_id: str, key: str, need_model: bool) -> Any | None:
    """The newest run with this key that finished for real: FINISHED, evaluated on the test set, and with a READY
    logged model when the job needs one. None when there is none."""
    store = MlflowClient()
    found = store.search_runs(
        [experiment_id], filter_string=f"tags.`{KEY_TAG}` = '{key}' and attributes.status = 'FINISHED' "
                                       "and metrics.test_accuracy >= 0", order_by=["attributes.start_time DESC"])
    for run in found:
        if not need_model or any(store.get_logged_model(o.model_id).status == LoggedModelStatus.READY
                                 for o in run.outputs.model_outputs):
            return run
        log.info("run %s finished without a logged model, which this job needs: not reused", run.info.run_id)
    return None


def _record(tracking: TrackingConfig, state: RunState, experiment_id: str) -> dict[str, Any] | None:
    """The state's record; a damaged one is named and rebuilt from the newest unfinished run whose tags name this
    state folder (each new run of a state is its newest), or, where there is none, the job is refused
    (StateDamaged) when the state has epochs to lose, and starts a new run with a warning when it has none."""
    try:
        return state.record()
    except Damaged as damage:
        found = state_runs(experiment_id, state)
        if found:
            run_id = found[0].info.run_id
            log.warning("%s; its run is %s (the newest tagged with this state folder): continuing it", damage, run_id)
            state.remember(tracking_uri=tracking.uri, experiment_id=experiment_id, run_id=run_id)
            return state.record()
        if state.epochs_done() == 0 and not state.trained_file.exists():
            log.warning("%s, and the state has no epoch to continue: starting a new run", damage)
            return None
        raise StateDamaged(state, damage, f"no unfinished MLflow run of experiment {experiment_id} in "
                                          f"{tracking.uri} is tagged with this state folder") from None


def _resumable(tracking: TrackingConfig, state: RunState, experiment_id: str) -> str | None:
    """The run id in the state's record when that run can be continued; otherwise None, with a log line that says
    why. The state's journal decides, not the run's metrics (system metrics arrive within seconds): the run is
    continued unless it logged epochs that the state no longer has."""
    record = _record(tracking, state, experiment_id)
    if record is None:
        return None
    run_id, store = record["run_id"], MlflowClient()
    if record.get("tracking_uri") != tracking.uri or record.get("experiment_id") != experiment_id:
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
    logged = len(store.get_metric_history(run_id, "loss"))
    if logged > state.epochs_done() and not state.trained_file.exists():
        reason = f"it logged {logged} epochs but its state has {state.epochs_done()}"
        log.warning("run %s: %s; starting a new run", run_id, reason)
        if run.info.status == "RUNNING":
            store.set_tag(run_id, "error", f"abandoned: {reason}")
            store.set_terminated(run_id, "KILLED")
        return None
    return run_id


@contextmanager
def job_run(tracking: TrackingConfig, state: RunState, experiment_id: str, name: str, tags: dict[str, str],
            params: dict[str, str], adopt: str | None = None) -> Iterator[Any]:
    """The job's MLflow run: the state's run continued when it can be, otherwise a new one recorded in the
    state. Its params are the settings (logged once: a resumed run only gets what it lacks); everything else is
    a tag. The run ends FINISHED only when the block completes; otherwise FAILED with the error recorded, or KILLED
    when interrupted (Ctrl-C, SIGTERM, submitit's requeue). A search trial stopped by its pruner ends KILLED with
    the tag `optuna.state` = PRUNED and no error. Whatever happens while the end is recorded (a second Ctrl-C, an
    artifact store that is full), the run is ended before MLflow's exit hook, which would call it FINISHED.
    `adopt` is a run made for this command by `mlflow run` (MLproject): a new run of the job is that one."""
    end_abandoned_runs(experiment_id)
    run_id = _resumable(tracking, state, experiment_id)
    tags = {**tags, KEY_TAG: state.key, HOST_TAG: HOST, STATE_TAG: str(state.folder.resolve())}
    if tracking.system_metrics:
        mlflow.set_system_metrics_sampling_interval(float(tracking.system_metrics_interval))
    with _ended_unless_finished() as ending:
        if run_id is None:
            _forget(state)
            if adopt:
                ending.run_id = adopt
                MlflowClient().update_run(adopt, name=name)
            else:
                ending.run_id = MlflowClient().create_run(experiment_id, run_name=name, tags=tags).info.run_id
            faults.reach("run_started")
            state.remember(tracking_uri=tracking.uri, experiment_id=experiment_id, run_id=ending.run_id)
        else:
            log.info("resuming MLflow run %s from %s", run_id, state.folder)
            ending.run_id = run_id
        run = mlflow.start_run(run_id=ending.run_id, tags=tags, log_system_metrics=tracking.system_metrics)
        if "error" in run.data.tags:
            MlflowClient().delete_tag(ending.run_id, "error")  # the failure it ended with is over
        logged = MlflowClient().get_run(run.info.run_id).data.params
        mlflow.log_params({k: v for k, v in params.items() if k not in logged})
        yield run
        _end(ending.run_id, RunStatus.FINISHED)
        ending.ended = True


def _forget(state: RunState) -> None:
    """Start the state afresh; a logged model its old run left PENDING (a killed job) is deleted with it."""
    try:
        record = state.record()
    except Damaged:
        record = None
    if record is not None and record.get("model_id"):
        with suppress(MlflowException):
            store = MlflowClient()
            if store.get_logged_model(record["model_id"]).status != LoggedModelStatus.READY:
                store.delete_logged_model(record["model_id"])
    state.remove()


class _Ending:
    run_id: str | None = None
    ended: bool = False  # FINISHED by the block, or FAILED / KILLED by the handler


@contextmanager
def _ended_unless_finished() -> Iterator[_Ending]:
    """Inside: the run's failure is recorded and the run ended FAILED or KILLED, a further SIGINT or SIGTERM
    waiting while that happens; recording is best effort (it can fail: a full artifact store) and the ending is
    not. An exit hook ends the run KILLED should the process leave without either: registered after MLflow's own
    exit hook, which would end the active run FINISHED, it runs first and leaves MLflow nothing to end."""
    ending = _Ending()

    def at_exit() -> None:
        if ending.run_id and not ending.ended:
            with suppress(Exception):
                _end(ending.run_id, RunStatus.KILLED)

    atexit.register(at_exit)
    try:
        yield ending
    except BaseException as err:
        held = _signals_held()
        try:
            if ending.run_id is not None:
                err.mlflow_run_id = ending.run_id  # tells the sweep handler this failure is already recorded
                _end_as_failed(ending.run_id, err)
                ending.ended = True
        finally:
            for sig, handler in held.items():
                signal.signal(sig, handler)
        raise


def _end(run_id: str, status: int) -> None:
    """End the run with `status`: through MLflow's active run when it is this one (so nothing is left for MLflow's
    exit hook to end FINISHED), otherwise in the store."""
    active = mlflow.active_run()
    if active is not None and active.info.run_id == run_id:
        mlflow.end_run(RunStatus.to_string(status))
    else:
        MlflowClient().set_terminated(run_id, RunStatus.to_string(status))


def _signals_held() -> dict[int, Any]:
    """While a stopped run is being ended, a further Ctrl-C or SIGTERM is only logged (the job is stopping
    already); returns the handlers to put back. Signal handlers belong to the main thread."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def later(signum: int, frame: object) -> None:
        log.warning("%s while the run is being ended: it ends first", signal.Signals(signum).name)

    return {sig: signal.signal(sig, later) for sig in (signal.SIGINT, signal.SIGTERM)}


def _end_as_failed(run_id: str, err: BaseException) -> None:
    if isinstance(err, TrialPruned):
        status = RunStatus.KILLED
        with suppress(Exception):
            MlflowClient().set_tag(run_id, PRUNED_TAG, "PRUNED")
            MlflowClient().set_tag(run_id, "optuna.pruned", str(err))
    else:
        # KeyboardInterrupt: Ctrl-C or SIGTERM (cnnlab.run.signals); SystemExit: submitit requeueing a task
        status = RunStatus.KILLED if isinstance(err, KeyboardInterrupt | SystemExit) else RunStatus.FAILED
        try:
            record_failure(run_id, err)
        except Exception as failure:  # noqa: BLE001 - the run must end as what happened even so
            log.warning("could not record the failure of run %s: %s", run_id, failure)
    _end(run_id, status)


def record_failure(run_id: str, err: BaseException) -> None:
    """Error text as a tag (short) and an artifact (full traceback) of the run."""
    store = MlflowClient()
    store.set_tag(run_id, "error", f"{type(err).__name__}: {err}"[:5000])
    faults.reach("recording_failure")
    store.log_text(run_id, "".join(traceback.format_exception(err)), "error.txt")


def log_rejected_job(tracking: TrackingConfig, name: str, tags: dict[str, str], err: BaseException) -> None:
    """A sweep job whose config was refused before training still gets a FAILED run saying why."""
    experiment_id = open_store(tracking)
    run = MlflowClient().create_run(experiment_id, run_name=name, tags=tags)
    try:
        record_failure(run.info.run_id, err)
    finally:
        MlflowClient().set_terminated(run.info.run_id, "FAILED")


def log_results(run_id: str, metrics: dict[str, float], folder: Path, artifacts: list[str]) -> None:
    """The run's final metrics (one batch, skipped if a stopped attempt already logged them) and files (logging
    a file again overwrites it, never doubles it)."""
    if "test_accuracy" not in MlflowClient().get_run(run_id).data.metrics:
        mlflow.log_metrics(metrics, synchronous=True)
    for name in artifacts:
        mlflow.log_artifact(str(folder / name))


def set_tags(tags: dict[str, str]) -> None:
    """Tags of the active run."""
    mlflow.set_tags(tags)
