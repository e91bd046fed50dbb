"""How a project's model is put together for training: precision policy, optimizer and schedule, compilation,
and what `model.fit` is fed. Shared by training and the benchmark, so both measure the same thing.

Keras is imported inside the functions: the backend must be chosen first (cnnlab.config.use_backend)."""

from __future__ import annotations

from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

OWN_KEYS = ("name", "schedule", "warmup_epochs")  # cnnlab's optimizer keys; every other one goes to Keras


def use_precision(t: DictConfig) -> None:
    """The global dtype policy for models built next: mixed_bfloat16 when training.mixed_precision is on."""
    import keras

    keras.mixed_precision.set_global_policy("mixed_bfloat16" if t.mixed_precision else "float32")


def make_optimizer(opt: DictConfig, steps_per_epoch: int, epochs: int) -> Any:
    """The configured Keras optimizer; `warmup_cosine` ramps linearly from 10% of the peak learning rate over
    `warmup_epochs`, then decays it along a cosine to 0 by the last step (keras.optimizers.schedules.CosineDecay).
    A name or argument Keras refuses is a ConfigError naming the key."""
    import keras

    from cnnlab.config import fail

    settings = {k: v for k, v in OmegaConf.to_container(opt, resolve=True).items() if k not in OWN_KEYS}
    if opt.schedule == "warmup_cosine":
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


def compile_model(model: Any, t: DictConfig, examples: int) -> None:
    """Compile for training on `examples` images per epoch (the learning-rate schedule counts steps)."""
    import keras

    model.compile(
        optimizer=make_optimizer(t.optimizer, -(-examples // t.batch_size), t.epochs),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=t.label_smoothing),
        metrics=["accuracy"],
        steps_per_execution=t.steps_per_execution,
        jit_compile=t.jit_compile,
    )


def build_trainable(cfg: DictConfig, fit_pixels: np.ndarray, augmentation: Any = None) -> tuple[Any, Any]:
    """The project's model, compiled for training on `fit_pixels` (uint8): Rescaling -> augmentation (fitted on
    these images where a layer has statistics) -> core. Returns (model, core). `augmentation` replaces the
    configured layer specs (the benchmark measures the model without them)."""
    from cnnlab.augment import assemble, build_augmentation
    from cnnlab.models import build_model

    t = cfg.training
    use_precision(t)
    specs = cfg.augmentation.layers if augmentation is None else augmentation
    core = build_model(cfg.model)
    model = assemble(core, build_augmentation(specs, fit_pixels / np.float32(255), t.seed))
    compile_model(model, t, len(fit_pixels))
    return model, core


def fit_inputs(t: DictConfig, x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """model.fit's data arguments: batches cut on the accelerator (cnnlab.feed) when training.device_data
    says so (`auto`: on JAX), otherwise the NumPy arrays, shuffled by Keras."""
    import keras

    if t.device_data is True or (t.device_data == "auto" and keras.backend.backend() == "jax"):
        from cnnlab.feed import DeviceBatches

        return {"x": DeviceBatches(x, y, t.batch_size, t.seed)}
    return {"x": x, "y": y, "batch_size": t.batch_size, "shuffle": True}
