"""Runs whose process is gone: a job killed with -9, a crash or a reboot leaves its MLflow run RUNNING, and the
next job on this host ends it KILLED (it stays resumable from its state).

Runs carry the tags `cnnlab.key` (the hash of their settings), `cnnlab.host`, and `cnnlab.state` (the state folder
whose lock a live job holds) or, for a sweep's parent, `cnnlab.pid`: a RUNNING run on this host whose state nobody
holds, or whose process is dead, has lost its job."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from cnnlab.run.host import HOST, process_alive
from cnnlab.run.state import RunState

log = logging.getLogger(__name__)

KEY_TAG, HOST_TAG, STATE_TAG, PID_TAG = "cnnlab.key", "cnnlab.host", "cnnlab.state", "cnnlab.pid"


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


def state_runs(experiment_id: str, state: RunState) -> list[Any]:
    """The unfinished runs (RUNNING, KILLED, FAILED; newest first) whose job kept its state in `state`'s folder."""
    return [run for run in MlflowClient().search_runs(
        [experiment_id], filter_string=f"tags.`{KEY_TAG}` = '{state.key}' and attributes.status != 'FINISHED'",
        order_by=["attributes.start_time DESC"]) if run.data.tags.get(STATE_TAG) == str(state.folder.resolve())]


def end_state_runs(experiment_id: str, state: RunState, reason: str) -> None:
    """End KILLED the RUNNING runs of `state`, whose job is refused: nothing will continue them."""
    store = MlflowClient()
    for run in state_runs(experiment_id, state):
        if run.info.status == "RUNNING":
            log.warning("run %s is ended KILLED: %s", run.info.run_id, reason)
            store.set_tag(run.info.run_id, "error", f"abandoned: {reason}"[:5000])
            store.set_terminated(run.info.run_id, "KILLED")
