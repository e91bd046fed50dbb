"""What a job learns from outside its config, read once at the top (the CLI) and handed down: Hydra's runtime
values (the job's overrides, the chosen group options, whether it is part of a multirun, the sweeper's study, its
output folder), the sweep's parent run and varied keys that the sweep callback puts in the environment, DVC's
stage and experiment names, and the checkout whose code and configs run."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf

from cnnlab.run.checkout import Checkout, current_checkout

SWEEP_RUN_ENV = "CNNLAB_SWEEP_RUN_ID"
SWEEP_VARIED_ENV = "CNNLAB_SWEEP_VARIED"


@dataclass(frozen=True)
class JobContext:
    overrides: list[str] = field(default_factory=list)  # the job's own command-line overrides
    choices: dict[str, str] = field(default_factory=dict)  # config group -> chosen option
    multirun: bool = False
    job_num: int | None = None  # the job's number in its multirun
    output_dir: str | None = None  # Hydra's folder for this job
    sweeper: dict[str, Any] = field(default_factory=dict)  # the search sweeper's storage, study_name, pruner
    sweep_run_id: str | None = None  # the sweep's MLflow parent run
    sweep_varied: list[str] = field(default_factory=list)  # the keys the sweep varies
    launcher_run_id: str | None = None  # the run `mlflow run` made for this command (MLFLOW_RUN_ID)
    dvc_stage: str | None = None
    dvc_experiment: str | None = None
    checkout: Checkout | None = None

    @classmethod
    def current(cls, overrides: list[str] | None = None) -> JobContext:
        """This process's context: Hydra's runtime values when a Hydra app runs, else `overrides` (compose API)."""
        hydra: dict[str, Any] = {}
        if HydraConfig.initialized():
            config = HydraConfig.get()
            hydra = {"overrides": list(config.overrides.task),
                     "choices": {str(k): str(v) for k, v in config.runtime.choices.items()},
                     "multirun": config.mode == RunMode.MULTIRUN, "output_dir": config.runtime.output_dir,
                     "job_num": config.job.get("num"),
                     "sweeper": OmegaConf.to_container(config.sweeper, resolve=False)}
        else:
            hydra = {"overrides": list(overrides or [])}
        return cls(**hydra, sweep_run_id=os.environ.get(SWEEP_RUN_ENV),
                   sweep_varied=[k for k in os.environ.get(SWEEP_VARIED_ENV, "").split(",") if k],
                   launcher_run_id=os.environ.get("MLFLOW_RUN_ID") or None,
                   dvc_stage=os.environ.get("DVC_STAGE") or None, dvc_experiment=os.environ.get("DVC_EXP_NAME") or None,
                   checkout=current_checkout())
