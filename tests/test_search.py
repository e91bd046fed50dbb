"""The Optuna search (hydra/sweeper=optuna_search, conf/hparams_search/): its configs, its search space, the
refusal of a search without validation data, and a real search on tiny data: parallel trials, pruning, a kill -9
of the sweep at a chosen instant (a failpoint) and the same command continuing the study to its n_trials."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import optuna
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from mlflow.tracking import MlflowClient
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

from cnnlab.config.compose import CONF
from cnnlab.config.errors import ConfigError
from cnnlab.run.context import JobContext
from cnnlab.run.faults import ENV as FAILPOINT
from cnnlab.search.study import job_trial
from hydra_plugins.cnnlab_optuna.optuna_search import search_space
from tests.conftest import ROOT, job_command, job_env, run_job

# a search that shows its parts in seconds: P00 (batch 32, so it learns in an epoch), two epochs, a learning rate
# from "learns nothing" to "learns", two trials at once in two processes, pruning from the third trial on
TINY_SEARCH = """# @package _global_
defaults:
  - override /hydra/sweeper: optuna_search
  - override /hydra/launcher: parallel
training:
  epochs: 2
  batch_size: 32
hydra:
  mode: MULTIRUN
  launcher:
    n_jobs: 2
  sweeper:
    study_name: tiny
    n_trials: 6
    n_jobs: 2
    sampler:
      seed: 7
    pruner:
      n_startup_trials: 2
      n_warmup_steps: 0
    params:
      training.optimizer.learning_rate: tag(log, interval(1e-7, 1e-2))
"""


def hydra_config(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=True)


@pytest.mark.parametrize("search", ["p08_optuna", "p12_optuna"])
def test_the_search_configs_search_learning_rate_weight_decay_regularisation_and_batch_size(search: str) -> None:
    cfg = hydra_config(f"hparams_search={search}")
    sweeper = instantiate(cfg.hydra.sweeper)
    assert type(sweeper).__name__ == "OptunaSearch"  # (Hydra loads its plugins anew: not the class imported here)
    assert isinstance(sweeper.pruner, optuna.pruners.MedianPruner)
    searched = {"p08_optuna": "p08", "p12_optuna": "p12_resnet9"}[search]  # P12's recipe has a fixed schedule
    assert cfg.hydra.mode.name == "MULTIRUN" and cfg.project.id == searched
    assert cfg.training.validation_split > 0, "a search is judged on validation data"
    space, fixed = search_space([f"{k}={v}" for k, v in sweeper.params.items()])
    assert space["training.optimizer.learning_rate"][1].log and space["training.optimizer.weight_decay"][1].log
    assert isinstance(space["training.batch_size"][1], CategoricalDistribution)
    if search == "p08_optuna":  # one dropout rate for the four conv blocks, the other three follow the first
        assert isinstance(space["model.layers.3.rate"][1], FloatDistribution)
        assert space["training.optimizer.weight_decay"][0] == "++", "Adam has no weight_decay key to change"
        assert fixed == [f"model.layers.{i}.rate=${{model.layers.3.rate}}" for i in (7, 11, 15)]
        tied = hydra_config("project=p08", "model.layers.3.rate=0.25", *fixed)
        assert [tied.model.layers[i].rate for i in (3, 7, 11, 15, 19)] == [0.25, 0.25, 0.25, 0.25, 0.2]
    else:
        assert isinstance(space["training.label_smoothing"][1], FloatDistribution) and fixed == []


def test_a_multirun_finds_its_folder_in_its_own_process() -> None:
    """A sweeper resolves hydra.sweep.dir in the multirun's own process, where HydraConfig is not set (only jobs
    have it), so the folder must not use the ${hydra:...} resolver."""
    cfg = hydra_config("hparams_search=p08_optuna")
    held, HydraConfig.instance().cfg = HydraConfig.instance().cfg, None
    try:
        assert str(cfg.hydra.sweep.dir).startswith(f"logs/{cfg.hydra.job.name}/multiruns/")
    finally:
        HydraConfig.instance().cfg = held


def test_the_search_space_takes_hydra_sweeps_and_the_command_line_wins() -> None:
    space, fixed = search_space(["a.lr=tag(log, interval(1e-4, 1e-1))", "a.n=interval(1, 8)", "a.bs=choice(32, 64)",
                                 "++a.wd=interval(0.0, 0.1)", "data=tiny", "a.n=4", "a.bs=range(16, 64, 16)"])
    assert space["a.lr"] == ("", FloatDistribution(1e-4, 1e-1, log=True))
    assert space["a.wd"] == ("++", FloatDistribution(0.0, 0.1))
    assert space["a.bs"] == ("", CategoricalDistribution([16, 32, 48]))
    assert "a.n" not in space and fixed == ["data=tiny", "a.n=4"]
    with pytest.raises(ConfigError, match="a sweep Optuna can search"):
        search_space(["a.x=glob(*)"])


def test_a_job_refuses_to_be_a_trial_without_validation_data(make_checked_cfg) -> None:
    with pytest.raises(ConfigError, match=r"training.validation_split=0.0 is not allowed: .*validation data"):
        job_trial(make_checked_cfg("project=p12", "training.validation_split=0", "optuna_trial=0"), JobContext())
    with pytest.raises(ConfigError, match="optuna_trial=3 is not allowed: only set by the search sweeper"):
        job_trial(make_checked_cfg("project=p00", "optuna_trial=3"), JobContext())


@pytest.mark.system
def test_a_search_without_validation_data_is_refused_before_anything_runs(tmp_path: Path,
                                                                         tiny_data_dir: Path) -> None:
    done = run_job("cnnlab.train", tmp_path, tiny_data_dir, "hparams_search=p12_optuna",
                   "training.validation_split=0", f"hydra.sweeper.storage=sqlite:///{tmp_path / 'optuna.db'}")
    assert done.returncode != 0
    assert "training.validation_split=0.0 is not allowed: a fraction above 0 in a search" in done.stderr
    assert not (tmp_path / "runs").exists() and optuna.get_all_study_names(f"sqlite:///{tmp_path / 'optuna.db'}") == []


def start_search(workdir: Path, data_dir: Path, conf: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """The tiny search as the user types it, in its own session, so the sweep's worker processes, which a
    kill -9 of the sweep leaves behind (joblib's loky workers idle for minutes), are ended with it. Its output goes
    to a file: those workers would hold a pipe open until they exit."""
    command = job_command("cnnlab.train", workdir, data_dir, f"hydra.searchpath=[file://{conf}]",
                          "hparams_search=tiny_search", "project=p00", "tracking.log_model=false",
                          f"hydra.sweeper.storage=sqlite:///{workdir / 'optuna.db'}")
    output = workdir / "search.log"
    with open(output, "w") as out, subprocess.Popen(command, cwd=ROOT, env=job_env(**env), stdout=out,
                                                   stderr=subprocess.STDOUT, start_new_session=True) as proc:
        try:
            proc.wait(timeout=600)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return subprocess.CompletedProcess(command, proc.returncode, output.read_text(), "")


@pytest.mark.system
def test_a_search_prunes_runs_trials_in_parallel_and_continues_to_n_trials_after_a_kill(
        tmp_path: Path, tiny_data_dir: Path) -> None:
    conf = tmp_path / "conf"
    (conf / "hparams_search").mkdir(parents=True)
    (conf / "hparams_search" / "tiny_search.yaml").write_text(TINY_SEARCH)

    # killed -9 right after trial 2 was told: trial 3 ran, but the sweep died before telling it
    first = start_search(tmp_path, tiny_data_dir, conf, **{FAILPOINT: "search_told:2"})
    assert first.returncode == -signal.SIGKILL, first.stdout[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in first.stdout, "two trials at a time, in parallel processes"
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    killed = optuna.load_study(study_name="tiny", storage=storage).trials
    assert [t.state for t in killed] == [TrialState.COMPLETE] * 2 + [killed[2].state, TrialState.RUNNING]

    again = start_search(tmp_path, tiny_data_dir, conf)
    assert again.returncode == 0, again.stdout[-3000:]
    study = optuna.load_study(study_name="tiny", storage=storage)
    states = [t.state for t in study.trials]
    assert states.count(TrialState.COMPLETE) + states.count(TrialState.PRUNED) == 6, states
    # the trial the dead sweep left RUNNING failed, and ran again with its params (not counted twice)
    assert states[3] == TrialState.FAIL and states.count(TrialState.FAIL) == 1
    (retried,) = [t for t in study.trials if t.system_attrs.get("failed_trial") == 3]
    assert retried.params == study.trials[3].params and retried.state != TrialState.FAIL

    store = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    done = [t for t in study.trials if t.state != TrialState.FAIL]
    pruned = [t for t in done if t.state == TrialState.PRUNED]
    assert pruned, "the bad learning rates are stopped by the median pruner"
    for trial in done:
        run = store.get_run(trial.user_attrs["mlflow_run_id"])
        assert run.data.tags["optuna.trial"] == str(trial.number)
        epochs = len(store.get_metric_history(run.info.run_id, "val_accuracy"))
        if trial.state == TrialState.PRUNED:  # stopped early on purpose: not a failure, and not resumable
            assert run.info.status == "KILLED" and run.data.tags["optuna.state"] == "PRUNED"
            assert "error" not in run.data.tags
            assert epochs == len(trial.intermediate_values) <= 2 and "test_accuracy" not in run.data.metrics
        else:
            assert run.info.status == "FINISHED" and epochs == 2
            assert run.data.metrics["best_val_accuracy"] == trial.value
    assert not list((tmp_path / "checkpoints").glob("*/")), "no state is kept, pruned or not"

    experiment = store.get_experiment_by_name("cnnlab").experiment_id
    parents = store.search_runs([experiment], "tags.sweep = 'true'", order_by=["attributes.start_time"])
    assert [p.info.status for p in parents] == ["KILLED", "FINISHED"]
    parent = parents[1]
    assert parent.data.tags["optuna.study_name"] == "tiny" and parent.data.tags["optuna.storage"] == storage
    best = study.best_trial
    assert parent.data.tags["best_run_id"] == best.user_attrs["mlflow_run_id"]
    assert parent.data.metrics["best_value"] == best.value
    (name, value), = best.params.items()
    assert parent.data.params == {name: str(value)} and name == "training.optimizer.learning_rate"
