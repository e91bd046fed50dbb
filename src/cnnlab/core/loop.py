"""The training loop: build and compile a project's model, train it epoch by epoch so that a run stopped at any
instant and continued computes what an uninterrupted run computes, and keep the weights of the epoch the run is
judged by.

- One `model.fit` call per epoch, on the training images in an order drawn from (seed, epoch): a continued run's
  epoch k sees the batches an uninterrupted run's epoch k sees (Keras' own shuffle restarts with the process).
- After every epoch the checkpoint holds everything the rest of training depends on: weights and optimizer state
  (the learning-rate schedule counts the optimizer's steps), the random generators' states (dropout,
  augmentation; Keras does not save them with the weights), early stopping's counters (Keras' own EarlyStopping,
  whose state is carried across the calls) and the best epoch by the selection metric, whose weights are kept.
- At the end the model gets the best epoch's weights by `selection` (the last epoch's without validation data),
  so the weights a run keeps are the ones its recorded value was measured on.

Keras is imported inside the functions: the backend must be chosen first (cnnlab.config.backend.use_backend)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from cnnlab.config.schema import AugmentationConfig, Direction, ModelConfig, SelectionConfig, TrainingConfig
from cnnlab.core.data import Dataset, one_hot, splits

SEED_STATE = "seed_generator_state"


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; Keras' TerminateOnNaN stopped the epoch."""


@dataclass
class Progress:
    """Where a training stands after `epochs` epochs, beside the weights it has then."""

    epochs: int = 0
    best_value: float | None = None  # the selection metric's best epoch value so far
    best_epoch: int | None = None  # 0-based; its weights are kept in the checkpoint
    early_stopping: dict[str, Any] = field(default_factory=dict)  # keras EarlyStopping's wait, best, ...
    seeds: list[list[int]] = field(default_factory=list)  # every random generator's state, in model order
    stopped: bool = False  # early stopping ended the training


class Checkpoint(Protocol):
    """Where a training keeps its state after every epoch (cnnlab.run.checkpoint writes it): `train` restores from
    it, saves to it after each epoch and loads the kept epoch's weights from it at the end."""

    def restore(self, model: Any) -> Progress: ...

    def save(self, model: Any, progress: Progress) -> None: ...

    def load(self, model: Any, epochs: int) -> None: ...


def build(model: ModelConfig, augmentation: AugmentationConfig, training: TrainingConfig,
          fit_pixels: np.ndarray) -> tuple[Any, Any]:
    """The project's model, compiled for training on `fit_pixels` (uint8): Rescaling -> augmentation (fitted on these
    images where a layer has statistics) -> core. Returns (model, core)."""
    import keras

    from cnnlab.core.augment import assemble, build_augmentation
    from cnnlab.core.models import build_model
    from cnnlab.core.optimizer import compile_model, use_precision

    keras.utils.set_random_seed(training.seed)
    use_precision(training)
    core = build_model(model)
    trainable = assemble(core, build_augmentation(augmentation.layers, fit_pixels / np.float32(255), training.seed))
    compile_model(trainable, training, len(fit_pixels))
    return trainable, core


def epoch_order(size: int, seed: int, epoch: int) -> np.ndarray:
    """The order in which epoch `epoch` visits the training images: a function of (seed, epoch) alone."""
    return np.random.default_rng([seed, epoch]).permutation(size)


def on_device(training: TrainingConfig) -> bool:
    """Whether batches are cut on the accelerator (cnnlab.core.feed): training.device_data, `auto` on JAX."""
    import keras

    return training.device_data is True or (training.device_data == "auto" and keras.backend.backend() == "jax")


def train(model: Any, data: Dataset, training: TrainingConfig, selection: SelectionConfig, checkpoint: Checkpoint,
          callbacks: Sequence[Any] = (), after_epoch: Callable[[int, dict[str, float]], None] | None = None,
          ) -> Progress:
    """Train `model` (compiled by `build`) from the checkpoint's last epoch to `training.epochs` or until early
    stopping, with `callbacks` in every epoch's fit and `after_epoch(epoch, logs)` once its checkpoint is saved;
    the model ends with the kept weights. Returns the final progress. Keras prints nothing (its one-epoch fits
    would count `Epoch 3/3`): the caller's callbacks show the progress."""
    import keras

    from cnnlab.core.callbacks import EpochStats
    from cnnlab.core.feed import DeviceBatches

    parts = splits(data, training.validation_split)
    x_fit, y_fit = parts["training"][0], one_hot(parts["training"][1])
    validation = None
    if "validation" in parts:
        validation = (parts["validation"][0], one_hot(parts["validation"][1]))
    progress = checkpoint.restore(model)
    stopping = _early_stopping(training, progress)
    device = DeviceBatches.transfer(x_fit, y_fit) if on_device(training) else None
    for epoch in range(progress.epochs, training.epochs):
        if progress.stopped:
            break
        order = epoch_order(len(x_fit), training.seed, epoch)
        if device is None:
            inputs = {"x": x_fit[order], "y": y_fit[order], "batch_size": training.batch_size, "shuffle": False}
        else:
            inputs = {"x": DeviceBatches(*device, training.batch_size, order)}
        history = model.fit(**inputs, initial_epoch=epoch, epochs=epoch + 1, validation_data=validation,
                            callbacks=[EpochStats(), keras.callbacks.TerminateOnNaN(), *callbacks,
                                       *([stopping] if stopping else [])], verbose=0)
        logs = {key: float(values[-1]) for key, values in history.history.items()}
        if not math.isfinite(logs.get("loss", math.nan)):
            raise TrainingDiverged(f"the loss became {logs.get('loss')} in epoch {epoch + 1}; try a lower "
                                   f"training.optimizer.learning_rate (now {training.optimizer.learning_rate})")
        progress = _advance(progress, epoch, logs, selection, stopping, model)
        checkpoint.save(model, progress)
        if after_epoch is not None:
            after_epoch(epoch, logs)
    if progress.best_epoch is not None:
        checkpoint.load(model, progress.best_epoch + 1)
    return progress


def _advance(progress: Progress, epoch: int, logs: dict[str, float], selection: SelectionConfig, stopping: Any,
             model: Any) -> Progress:
    """The progress after `epoch`: its best epoch by the selection metric, early stopping's state, the generators."""
    best_value, best_epoch = progress.best_value, progress.best_epoch
    value = logs.get(selection.metric.value)
    if value is not None and math.isfinite(value):
        better = (value > best_value if selection.direction == Direction.maximize else value < best_value) \
            if best_value is not None else True
        if better:
            best_value, best_epoch = value, epoch
    state = {} if stopping is None else stopping.state()
    return Progress(epochs=epoch + 1, best_value=best_value, best_epoch=best_epoch, early_stopping=state,
                    seeds=seed_states(model), stopped=bool(stopping is not None and model.stop_training))


def _early_stopping(training: TrainingConfig, progress: Progress) -> Any | None:
    """Keras' EarlyStopping on the configured monitor, continuing from `progress`."""
    if not training.early_stopping.enabled:
        return None
    from cnnlab.core.callbacks import ContinuedEarlyStopping

    return ContinuedEarlyStopping(progress.early_stopping, monitor=training.early_stopping.monitor.value,
                                  patience=training.early_stopping.patience, verbose=1)


def seed_states(model: Any) -> list[list[int]]:
    """The states of the model's random generators (dropout, augmentation), which its weights file leaves out."""
    import keras

    return [keras.ops.convert_to_numpy(v).tolist() for v in model.variables if v.name == SEED_STATE]


def restore_seeds(model: Any, states: list[list[int]]) -> None:
    variables = [v for v in model.variables if v.name == SEED_STATE]
    if len(variables) != len(states):
        raise ValueError(f"the checkpoint has {len(states)} random generator states, the model {len(variables)}")
    for variable, state in zip(variables, states, strict=True):
        variable.assign(np.asarray(state, dtype=variable.dtype))
