"""The typed shape of cnnlab's config: one dataclass per config group and one for the job as a whole, registered
with Hydra's ConfigStore as the base of `conf/config.yaml`, so composition itself refuses an unknown key or a
value of the wrong type, naming it. The YAML files under conf/ stay the data; these classes only say what may be
there. Enums list the fixed choices; their docstrings say what is allowed (they are the error messages).

A model or an augmentation is a list of layer specs (`{type: <keras.layers class>, ...arguments}`): open
mappings, checked by building them (cnnlab.job.checks), not by a schema. A field's `allowed` metadata is the
error message for a value its type cannot say (a union)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


class Backend(StrEnum):
    """one of tensorflow, jax, torch (the Keras backend)"""

    tensorflow = "tensorflow"
    jax = "jax"
    torch = "torch"


class DeterministicOps(StrEnum):
    """one of auto, enabled, disabled (TensorFlow's op determinism; auto: on a GPU only)"""

    auto = "auto"
    enabled = "enabled"
    disabled = "disabled"


class OnFinished(StrEnum):
    """one of skip, new (what a job does when a run with the same settings has finished)"""

    skip = "skip"
    new = "new"


class Metric(StrEnum):
    """a validation metric (val_accuracy, val_loss); the test set is never used for choosing"""

    val_accuracy = "val_accuracy"
    val_loss = "val_loss"


class Direction(StrEnum):
    """maximize or minimize"""

    maximize = "maximize"
    minimize = "minimize"


class Monitor(StrEnum):
    """val_loss, val_accuracy, loss or accuracy"""

    val_loss = "val_loss"
    val_accuracy = "val_accuracy"
    loss = "loss"
    accuracy = "accuracy"


class Schedule(StrEnum):
    """none or warmup_cosine"""

    none = "none"
    warmup_cosine = "warmup_cosine"


AUTO_BOOL = {"allowed": "auto, true or false"}
LAYERS = {"allowed": "a list of layer specs, each a mapping with a 'type' (a keras.layers class or one of "
                     "cnnlab's) and its arguments"}


@dataclass
class GenerateConfig:
    """How cnnlab generates a synthetic data set (cnnlab.core.synth)."""

    train_per_batch: int = MISSING
    test: int = MISSING
    seed: int = 0


@dataclass
class DataConfig:
    name: str = MISSING
    source: str = MISSING
    md5: str | None = None
    archive: str = "cifar-10-python.tar.gz"
    download_retries: int = 3
    generate: GenerateConfig | None = None  # None: the archive is downloaded or copied from `source`


@dataclass
class MirrorConfig:
    source: str | None = None
    md5: str | None = None
    label: str | None = None


@dataclass
class ModelConfig:
    name: str = MISSING
    input_shape: list[int] = field(default_factory=lambda: [32, 32, 3])
    num_classes: int = 10
    head_scale: float = 1.0
    layers: list[dict[str, Any]] = field(default_factory=list, metadata=LAYERS)


@dataclass
class AugmentationConfig:
    name: str = MISSING
    layers: list[dict[str, Any]] = field(default_factory=list, metadata=LAYERS)


@dataclass
class OptimizerConfig:
    """`name` is any keras.optimizers name; the keyword arguments Keras optimizers take are typed fields here,
    passed on when set (None: the optimizer's own default), so a misspelt one is refused at composition and one
    the chosen optimizer does not take is refused by Keras (naming it)."""

    name: str = "adam"
    learning_rate: float = 0.001
    schedule: Schedule = Schedule.none
    warmup_epochs: int = 0
    momentum: float | None = None
    nesterov: bool | None = None
    weight_decay: float | None = None
    beta_1: float | None = None
    beta_2: float | None = None
    epsilon: float | None = None
    amsgrad: bool | None = None
    rho: float | None = None
    centered: bool | None = None
    clipnorm: float | None = None
    clipvalue: float | None = None
    global_clipnorm: float | None = None
    # cnnlab.core.recipe.RecipeSGD's own (`name: cnnlab>RecipeSGD`): airbench's schedule, parameter groups, lookahead
    total_steps: int | None = None
    warmup_fraction: float | None = None
    start_factor: float | None = None
    end_factor: float | None = None
    bias_scaler: float | None = None
    lookahead_every: int | None = None
    frozen_variables: list[str] | None = None
    frozen_after_steps: int | None = None


@dataclass
class EarlyStoppingConfig:
    enabled: bool = True
    monitor: Monitor = Monitor.val_loss
    patience: int = 10


@dataclass
class TrainingConfig:
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    batch_size: int = 512
    epochs: int = 100
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    validation_split: float = 0.2
    seed: int = 42
    mixed_precision: bool | str = field(default=False, metadata=AUTO_BOOL)  # auto: machine.bf16_is_fast_here()
    label_smoothing: float = 0.0
    steps_per_execution: int = 1
    device_data: bool | str = field(default="auto", metadata=AUTO_BOOL)
    jit_compile: bool | str = field(default="auto", metadata=AUTO_BOOL)


@dataclass
class SelectionConfig:
    """Which epoch of a run is kept and what the run is judged by: its best epoch of this validation metric."""

    metric: Metric = Metric.val_accuracy
    direction: Direction = Direction.maximize


@dataclass
class TrackingConfig:
    uri: str = "sqlite:///mlflow.db"
    experiment: str = "cnnlab"
    log_model: bool = True
    system_metrics: bool = True
    system_metrics_interval: float = 10.0


def sqlite_file(uri: str) -> Path | None:
    """The database file of a local `sqlite:///` store (a `tracking.uri`); None for any other store."""
    if not uri.startswith("sqlite:///") or uri.endswith(":memory:"):
        return None
    return Path(uri.removeprefix("sqlite:///"))


@dataclass
class ProjectConfig:
    id: str = MISSING
    reported_accuracy: float | None = None
    description: str = ""
    follows: str | None = None  # the project this one changes (the report's step table); describes, decides nothing


@dataclass
class PathsConfig:
    data: str = "data"
    runs: str = "runs"
    checkpoints: str = "checkpoints"
    outputs: str = "outputs"
    metrics: str = "metrics"
    plots: str = "plots"


@dataclass
class RegistryConfig:
    register: bool = False


@dataclass
class EvaluateConfig:
    model: str | None = None
    allow_other_data: bool = False


@dataclass
class JobConfig:
    """A whole job, as `python -m cnnlab.train` composes it (Hydra's own `hydra` node aside)."""

    # groups: filled by conf/<group>/<option>.yaml (a MISSING node holding a union field trips OmegaConf 2.3 when
    # Hydra merges into it, so each starts from its defaults)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    project: ProjectConfig = field(default_factory=ProjectConfig)
    backend: Backend = Backend.tensorflow
    threads: int = 0
    deterministic_ops: DeterministicOps = DeterministicOps.auto
    mirror: MirrorConfig = field(default_factory=MirrorConfig)
    max_epochs: int = 0
    on_finished: OnFinished = OnFinished.skip
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    optuna_trial: int | None = None
    publish: bool = False
    paths: PathsConfig = field(default_factory=PathsConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)


@cache
def register() -> None:
    """Make `schema` the base of conf/config.yaml (its defaults list starts with it); once a process, since
    storing it builds the structured config anew (a tenth of each composition's time)."""
    ConfigStore.instance().store(name="schema", node=JobConfig)


register()
