"""How a project's model is compiled for training: precision policy, optimizer and its learning-rate schedule, loss.

Keras is imported inside the functions: the backend must be chosen first (cnnlab.config.backend.use_backend)."""

from __future__ import annotations

from typing import Any

from cnnlab.config.errors import fail
from cnnlab.config.schema import OptimizerConfig, Schedule, TrainingConfig
from cnnlab.config.settings import plain

OWN_KEYS = ("name", "schedule", "warmup_epochs")  # cnnlab's optimizer keys; every other one set goes to Keras


def use_precision(training: TrainingConfig) -> None:
    """The global dtype policy for models built next: mixed_bfloat16 when training.mixed_precision is on."""
    import keras

    keras.mixed_precision.set_global_policy("mixed_bfloat16" if training.mixed_precision else "float32")


def make_optimizer(opt: OptimizerConfig, steps_per_epoch: int, epochs: int) -> Any:
    """The configured Keras optimizer; `warmup_cosine` ramps linearly from 10% of the peak learning rate over
    `warmup_epochs`, then decays it along a cosine to 0 by the last step (keras.optimizers.schedules.CosineDecay).
    A name or argument Keras refuses is a ConfigError naming the key."""
    import keras

    settings = {k: v for k, v in plain(opt).items() if k not in OWN_KEYS and v is not None}
    if opt.schedule == Schedule.warmup_cosine:
        warmup = opt.warmup_epochs * steps_per_epoch
        settings["learning_rate"] = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=opt.learning_rate / 10, decay_steps=max(1, epochs * steps_per_epoch - warmup),
            warmup_target=opt.learning_rate, warmup_steps=warmup)
    try:
        keras.optimizers.get(opt.name)
    except ValueError:
        fail("training.optimizer.name", opt.name, "a keras.optimizers name such as adam, adamw, sgd, rmsprop")
    try:
        return keras.optimizers.get({"class_name": opt.name, "config": settings})
    except (TypeError, ValueError) as err:
        named = [k for k in settings if f"'{k}'" in str(err) or f"`{k}`" in str(err)]
        key = f"training.optimizer.{named[0]}" if named else "training.optimizer"
        fail(key, settings[named[0]] if named else dict(settings), f"{opt.name} says: {err}")


def compile_model(model: Any, training: TrainingConfig, examples: int) -> None:
    """Compile for training on `examples` images per epoch (the learning-rate schedule counts steps)."""
    import keras

    model.compile(
        optimizer=make_optimizer(training.optimizer, -(-examples // training.batch_size), training.epochs),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=training.label_smoothing),
        metrics=["accuracy"],
        steps_per_execution=training.steps_per_execution,
        jit_compile=training.jit_compile,
    )
