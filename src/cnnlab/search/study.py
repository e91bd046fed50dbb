"""The Optuna side of a search job: the study's storage, and the trial a job of the search sweeper
(hydra_plugins/cnnlab_optuna, `hydra/sweeper=optuna_search`) is.

The sweeper asks Optuna for a trial and launches a job with the override `optuna_trial=<number>`; the job finds
the study (storage, name, pruner) in the sweeper's own config, which every job of the sweep composes too, so no
storage URL (which may hold a password) travels on a command line. The job reports `selection.metric` after
every epoch, once the epoch is kept and logged, and stops when the pruner says so (raising
`optuna.TrialPruned`); the sweeper, which owns the trial's end, then tells it PRUNED."""

from __future__ import annotations

from typing import Any

import optuna
from hydra.utils import instantiate
from omegaconf import OmegaConf
from sqlalchemy.engine import make_url

from cnnlab.config.errors import fail
from cnnlab.config.schema import JobConfig
from cnnlab.run.context import JobContext

RUN_ATTR = "mlflow_run_id"


def storage(url: str) -> Any:
    """Optuna's RDB storage for a SQLAlchemy URL; a sqlite file waits up to a minute for a writer (the sweeper and
    parallel jobs write the same file) instead of failing with "database is locked"."""
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite:") else {}
    return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)


def public_url(url: str) -> str:
    """The storage URL with its password hidden, to be shown in logs and MLflow tags."""
    return make_url(url).render_as_string(hide_password=True)


def job_trial(job: JobConfig, context: JobContext) -> Any | None:
    """The running Optuna trial this job is (`optuna_trial`, set by the search sweeper), or None outside a
    search. Refused clearly when the job cannot report to it."""
    number = job.optuna_trial
    if number is None:
        return None
    if not job.training.validation_split:
        fail("training.validation_split", job.training.validation_split,
             f"a fraction above 0 in a search: its objective, {job.selection.metric.value}, is measured on "
             "validation data")
    sweeper = OmegaConf.create(context.sweeper)
    if not sweeper.get("storage") or not sweeper.get("study_name"):
        fail("optuna_trial", number, "only set by the search sweeper (hydra/sweeper=optuna_search), for its jobs")
    store = storage(sweeper.storage)
    try:
        trial_id = store.get_trial_id_from_study_id_trial_number(store.get_study_id_from_name(sweeper.study_name),
                                                                 int(number))
    except KeyError:
        fail("optuna_trial", number, f"a trial of study {sweeper.study_name!r} in {public_url(sweeper.storage)}")
    state = store.get_trial(trial_id).state
    if state != optuna.trial.TrialState.RUNNING:
        fail("optuna_trial", number, f"a RUNNING trial of study {sweeper.study_name!r}; this one is {state.name}")
    study = optuna.load_study(study_name=sweeper.study_name, storage=store, pruner=instantiate(sweeper.pruner))
    return optuna.trial.Trial(study, trial_id)


def run_tags(trial: Any | None) -> dict[str, str]:
    """Tags that link a job's MLflow run to its trial."""
    return {} if trial is None else {"optuna.study_name": trial.study.study_name, "optuna.trial": str(trial.number)}


def link_run(trial: Any | None, run_id: str) -> None:
    """Record on the trial the MLflow run that holds its result, so the study's best trial leads to a run."""
    if trial is not None:
        trial.set_user_attr(RUN_ATTR, run_id)


def report(trial: Any | None, metric: str, epoch: int, logs: dict[str, float]) -> None:
    """Report the epoch's `metric` to the trial and raise optuna.TrialPruned when the study's pruner stops it
    (nothing outside a search)."""
    if trial is None or metric not in logs:
        return
    trial.report(float(logs[metric]), step=epoch)
    if trial.should_prune():
        raise optuna.TrialPruned(f"Trial was pruned at epoch {epoch}.")
