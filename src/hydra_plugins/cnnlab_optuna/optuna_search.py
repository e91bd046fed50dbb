"""cnnlab's Optuna search, a Hydra Sweeper: `hydra/sweeper=optuna_search` (conf/hydra/sweeper/), used by the
configs in conf/hparams_search/.

Why a sweeper of our own (checked 2026-11-28): hydra-optuna-sweeper 1.3.0, the last release, requires
optuna<3 (2.10, from 2021); its release candidate 1.4.0rc3 requires optuna>=4.9 but also hydra-core>=1.4.0.dev1,
a pre-release (cnnlab is on hydra-core 1.3.8), and neither has pruning or continues a study to its number of
trials (each start runs n_trials more). This one is small because Optuna and Hydra do the work: Optuna's
ask/tell on the current release, with the study in its RDB storage (`load_if_exists`), its samplers and pruners;
each batch of `n_jobs` trials goes through the configured Hydra launcher, so `hydra/launcher=parallel` runs them
in parallel processes.

- The search space is Hydra's sweep syntax, per override key, in `params` and on the command line:
  `choice(...)`, `interval(a, b)`, `tag(log, interval(a, b))`, `range(...)`; other overrides reach every job.
- A rerun of the same command continues the study until it has `n_trials` COMPLETE, PRUNED or RUNNING trials
  (failed ones are not counted, and not retried within one invocation). Trials left RUNNING by a sweep of this
  host that died (kill -9) are told FAIL and queued again with the same params
  (optuna.storages.RetryHeartbeatStaleTrialCallback), so their jobs resume or reuse their runs.
- Each job gets `optuna_trial=<number>` and reports to its trial itself (cnnlab.search.study); a job stopped by the
  pruner raises optuna.TrialPruned and its trial is told PRUNED; a job that returns no value is told FAIL.
- The sweep's MLflow parent run (cnnlab.tracking.sweep.SweepRunCallback) is tagged with the study's name and storage
  (password hidden) at the start, and gets the study's best trial (its run, params and value) at the end."""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Sequence
from typing import Any

from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from cnnlab.config.errors import fail
from cnnlab.run import faults

log = logging.getLogger(__name__)

HOST_ATTR, PID_ATTR = "cnnlab.sweeper_host", "cnnlab.sweeper_pid"
RETRIES = 3  # how often a trial whose sweep died is queued again


class OptunaSearch(Sweeper):
    """Ask Optuna for trials, launch them as Hydra jobs, tell Optuna their outcome; see the module docstring."""

    def __init__(self, storage: str, study_name: str, n_trials: int, n_jobs: int, sampler: Any, pruner: Any,
                 params: DictConfig | None = None) -> None:
        for key, value in (("n_trials", n_trials), ("n_jobs", n_jobs)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                fail(f"hydra.sweeper.{key}", value, "a positive integer")
        if not storage or not study_name:
            fail("hydra.sweeper.storage" if not storage else "hydra.sweeper.study_name", storage or study_name,
                 "a storage URL (sqlite:///optuna.db, postgresql://...) and a study name")
        self.storage, self.study_name, self.n_trials, self.n_jobs = str(storage), str(study_name), n_trials, n_jobs
        self.sampler, self.pruner = sampler, instantiate(pruner)
        # as written (the config is not resolved recursively): an interpolation such as ${model.layers.3.rate}
        # reaches the jobs as one, so several keys can follow one searched value
        self.params = {str(k): str(v) for k, v in (OmegaConf.to_container(params) if params else {}).items()}

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function)

    def sweep(self, arguments: list[str]) -> None:
        import optuna

        from cnnlab.run.context import SWEEP_RUN_ENV
        from cnnlab.run.host import HOST
        from cnnlab.search import study as studies
        from cnnlab.tracking.sweep import link_study

        space, fixed = search_space([f"{k}={v}" for k, v in self.params.items()] + list(arguments))
        self.check_objective(fixed)
        direction = self.config.selection.direction.value
        study = optuna.create_study(storage=studies.storage(self.storage), study_name=self.study_name,
                                    pruner=self.pruner, direction=direction, load_if_exists=True)
        study.sampler = self.make_sampler(len(study.trials))
        if study.direction.name.lower() != direction:
            fail("selection.direction", direction, f"the direction of the existing study {self.study_name!r} "
                 f"({study.direction.name.lower()}); use another hydra.sweeper.study_name")
        parent = os.environ.get(SWEEP_RUN_ENV)
        if parent:
            link_study(parent, self.study_name, studies.public_url(self.storage))
        retry_abandoned(study)
        counted = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,
                                                           optuna.trial.TrialState.PRUNED,
                                                           optuna.trial.TrialState.RUNNING))
        to_launch = self.n_trials - len(counted)
        log.info("study %r in %s: %d of %d trials done or running, %d to launch", self.study_name,
                 studies.public_url(self.storage), len(counted), self.n_trials, max(to_launch, 0))
        launched = 0
        while launched < to_launch:
            trials = [study.ask({name: dist for name, (_, dist) in space.items()})
                      for _ in range(min(self.n_jobs, to_launch - launched))]
            for trial in trials:
                trial.set_user_attr(HOST_ATTR, HOST)
                trial.set_user_attr(PID_ATTR, os.getpid())
            batch = [[*fixed, *(f"{prefix}{name}={trial.params[name]}" for name, (prefix, _) in space.items()),
                      f"optuna_trial={trial.number}"] for trial in trials]
            returns = self.launcher.launch(batch, initial_job_idx=trials[0].number)  # job dirs named by trial
            for trial, outcome in zip(trials, returns, strict=True):
                tell(study, trial, outcome)
                faults.reach(f"search_told:{trial.number}")
            launched += len(trials)
        if parent:
            record_best(study, parent, space)

    def make_sampler(self, trials: int) -> Any:
        """The configured sampler; a seeded one gets seed + the study's number of trials, so a continued study is
        as reproducible as a new one but does not replay the suggestions its first invocation began with."""
        seed = self.sampler.get("seed")
        return instantiate(self.sampler, **({} if seed is None else {"seed": int(seed) + trials}))

    def check_objective(self, fixed: Sequence[str]) -> None:
        """Refuse, before the study is touched, a search whose jobs have no validation data to be judged on."""
        cfg = self.hydra_context.config_loader.load_sweep_config(master_config=self.config,
                                                                 sweep_overrides=list(fixed))
        if not cfg.training.validation_split:
            fail("training.validation_split", cfg.training.validation_split,
                 f"a fraction above 0 in a search: its objective, {cfg.selection.metric.value}, is measured on "
                 "validation data (P12 trains without it by default; hparams_search=p12_optuna sets one)")


def search_space(overrides: list[str]) -> tuple[dict[str, tuple[str, Any]], list[str]]:
    """Hydra overrides split into the searched keys (name -> (override prefix, Optuna distribution)) and the
    fixed overrides every job gets. A key given twice keeps the last (the command line wins over `params`)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    space: dict[str, tuple[str, Any]] = {}
    fixed: dict[str, str] = {}
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.get_key_element()
        name = key.lstrip("+~")
        space.pop(name, None)
        fixed.pop(name, None)
        if override.is_sweep_override():
            space[name] = (key[: len(key) - len(name)], distribution(override))
        else:
            fixed[name] = str(override.input_line)
    return space, list(fixed.values())


def distribution(override: Any) -> Any:
    """The Optuna distribution of one Hydra sweep override."""
    from hydra.core.override_parser.types import Glob, Transformer
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    value = override.value()
    if override.is_interval_sweep():
        log_scale = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(value.start, value.end, log=log_scale)
        return FloatDistribution(float(value.start), float(value.end), log=log_scale)
    if (override.is_choice_sweep() and not isinstance(value, Glob)) or override.is_range_sweep():
        return CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
    fail(override.get_key_element(), override.get_value_element_as_str(),
         "a sweep Optuna can search: choice(...), range(...), interval(a, b) or tag(log, interval(a, b))")


def tell(study: Any, trial: Any, outcome: JobReturn) -> None:
    """Tell Optuna how a trial's job ended: its value, PRUNED (it raised TrialPruned), or FAIL."""
    import optuna

    if outcome.status == JobStatus.COMPLETED:
        value = outcome.return_value
        if isinstance(value, int | float) and math.isfinite(value):
            study.tell(trial, value)
            return
        log.warning("trial %d: its job returned %r, no value (the job failed, see its run): FAIL", trial.number,
                    value)
    # the exception of a failed job; JobReturn.return_value would re-raise it and print an error for a pruned one
    elif isinstance(outcome._return_value, optuna.TrialPruned):
        log.info("trial %d pruned: %s", trial.number, outcome._return_value)
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        return
    else:
        log.warning("trial %d: its job raised %r: FAIL", trial.number, outcome._return_value)
    study.tell(trial, state=optuna.trial.TrialState.FAIL)


def retry_abandoned(study: Any) -> None:
    """Trials left RUNNING by a sweep of this host whose process is gone: told FAIL and queued again with their
    params (Optuna's retry callback), so the continued study runs them (their jobs resume or reuse their runs).
    RUNNING trials of live sweeps, or of other hosts, are left alone."""
    import optuna

    from cnnlab.run.host import HOST, process_alive

    with warnings.catch_warnings():  # "experimental" since Optuna 2.8, under its new name since 4.9
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=RETRIES)
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if trial.user_attrs.get(HOST_ATTR) == HOST and not process_alive(str(trial.user_attrs.get(PID_ATTR))):
            log.warning("trial %d was left RUNNING by a sweep that is gone: FAIL, and queued again",
                        trial.number)
            retry(study, study.tell(trial.number, state=optuna.trial.TrialState.FAIL))


def record_best(study: Any, parent: str, space: dict[str, tuple[str, Any]]) -> None:
    """The study's best trial on the sweep's parent run (its MLflow run, overrides, value and params)."""
    from cnnlab.search.study import RUN_ATTR
    from cnnlab.tracking.sweep import record_best as record

    try:
        best = study.best_trial
    except ValueError:
        log.warning("study %r has no completed trial yet: no best to record", study.study_name)
        return
    log.info("best trial %d: %s = %s, %s", best.number, study.direction.name.lower(), best.value, best.params)
    overrides = " ".join(f"{space.get(name, ('',))[0]}{name}={value}" for name, value in best.params.items())
    record(parent, str(best.user_attrs.get(RUN_ATTR, "")), overrides, best.value,
           {name: value for name, value in best.params.items() if name in space},
           {"optuna.best_trial": str(best.number)})
