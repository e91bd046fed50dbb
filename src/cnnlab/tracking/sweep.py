"""A sweep's MLflow parent run, owned by a Hydra callback (`hydra.callbacks.mlflow_sweep` in conf/config.yaml):
every job's run is its child, and at the end it records the best job (or a search's best trial)."""

from __future__ import annotations

import atexit
import logging
import os
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from cnnlab.run.checkout import current_checkout
from cnnlab.run.context import SWEEP_RUN_ENV, SWEEP_VARIED_ENV
from cnnlab.run.describe import CHECKOUT_TAG, PARENT_TAG
from cnnlab.run.host import HOST
from cnnlab.tracking.abandoned import HOST_TAG, PID_TAG, end_abandoned_runs
from cnnlab.tracking.runs import PRUNED_TAG
from cnnlab.tracking.store import open_store

log = logging.getLogger(__name__)
JOB_TAG = "cnnlab.job."  # + the job's number: the run the job trained, continued or reused, on the sweep's parent


def record_job(parent: str, job_num: int, run_id: str) -> None:
    """On the sweep's parent run, which run its job `job_num` is: one it trained, one it continued (which keeps its
    place under an earlier sweep's parent too) or a finished one it reused (which stays under its own parent)."""
    MlflowClient().set_tag(parent, f"{JOB_TAG}{job_num}", run_id)


def jobs_of(parent: str) -> list[Any]:
    """The runs of a sweep's jobs: those its jobs recorded, and any other run nested under it."""
    store = MlflowClient()
    run = store.get_run(parent)
    nested = store.search_runs([run.info.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent}'")
    recorded = {value for key, value in run.data.tags.items() if key.startswith(JOB_TAG)}
    found = {r.info.run_id: r for r in nested}
    for run_id in recorded - set(found):
        found[run_id] = store.get_run(run_id)
    return list(found.values())


class SweepFailed(SystemExit):
    """Some jobs of a multirun failed; raised after all jobs ran so the sweep exits non-zero. A SystemExit,
    because Hydra turns a callback's ordinary exceptions into warnings."""


def sweep_keys(config: DictConfig) -> list[str]:
    """The keys a multirun varies: its sweep overrides (`a=1,2`, `glob(...)`, `range(...)`) and the sweeper's
    search space (`hydra.sweeper.params`)."""
    parsed = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
    space = config.hydra.sweeper.get("params") or {}
    return list(dict.fromkeys([o.key_or_group for o in parsed if o.is_sweep_override()] + list(space)))


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
        experiment_id = open_store(OmegaConf.to_object(config.tracking))
        end_abandoned_runs(experiment_id)
        overrides = " ".join(config.hydra.overrides.task)
        checkout = current_checkout()
        run = MlflowClient().create_run(
            experiment_id, run_name=f"sweep {overrides}"[:250],
            tags={"sweep": "true", "overrides": overrides[:5000], "git_commit": checkout.describe(),
                  CHECKOUT_TAG: checkout.path, HOST_TAG: HOST, PID_TAG: str(os.getpid())},
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
        children = jobs_of(parent)
        selection = OmegaConf.to_object(config.selection)
        metric, direction = f"best_{selection.metric.value}", selection.direction.value
        best = best_child(children, metric, direction)
        if best is not None and "best_run_id" not in store.get_run(parent).data.tags:
            record_best(parent, best.info.run_id, best.data.tags.get("overrides", ""),
                        best.data.metrics[metric])
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
