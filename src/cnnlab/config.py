"""Checks on the composed config, run before any data is loaded or any model trained, and the one place that
applies the Keras backend (it must be set before the first `import keras`)."""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from typing import Any

from omegaconf import DictConfig

BACKENDS = ("tensorflow", "jax", "torch")
ON_FINISHED = ("new", "skip")


class ConfigError(ValueError):
    """A config value is not allowed; the message names the key, the value and what is allowed."""


def _fail(key: str, value: Any, allowed: str) -> None:
    raise ConfigError(f"{key}={value!r} is not allowed: {allowed}")


def use_backend(backend: str) -> None:
    """Select the Keras backend; refuses a backend other than the one already imported."""
    if backend not in BACKENDS:
        _fail("backend", backend, f"one of {', '.join(BACKENDS)}")
    if importlib.util.find_spec(backend) is None:
        _fail("backend", backend, f"an installed backend; {backend} is not installed here (pip install {backend})")
    if "keras" in sys.modules:
        import keras

        if keras.backend.backend() != backend:
            _fail("backend", backend, f"Keras is already running on {keras.backend.backend()!r} in this process "
                  "(set KERAS_BACKEND or backend= before starting)")
    os.environ["KERAS_BACKEND"] = backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter


def _positive_int(cfg: DictConfig, key: str) -> None:
    value = cfg.get(key.split(".")[-1])
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        _fail(key, value, "a positive integer")


def validate(cfg: DictConfig) -> None:
    """Everything a user can set, checked at once; raises ConfigError on the first bad value."""
    import keras

    from cnnlab.models import ModelConfigError, check_layer_specs

    t = cfg.training
    for key in ("epochs", "batch_size", "steps_per_execution"):
        _positive_int(t, f"training.{key}")
    _positive_int(t.early_stopping, "training.early_stopping.patience")
    if not isinstance(t.seed, int) or isinstance(t.seed, bool) or t.seed < 0:
        _fail("training.seed", t.seed, "a non-negative integer")
    if not isinstance(t.validation_split, int | float) or not 0 <= t.validation_split < 1:
        _fail("training.validation_split", t.validation_split, "a number in [0, 1)")
    if not isinstance(t.label_smoothing, int | float) or not 0 <= t.label_smoothing < 1:
        _fail("training.label_smoothing", t.label_smoothing, "a number in [0, 1)")
    if not isinstance(t.mixed_precision, bool):
        _fail("training.mixed_precision", t.mixed_precision, "true or false")
    if t.device_data not in ("auto", True, False):
        _fail("training.device_data", t.device_data, "auto, true or false")
    if t.jit_compile not in ("auto", True, False):
        _fail("training.jit_compile", t.jit_compile, "auto, true or false")
    try:
        keras.optimizers.get(t.optimizer.name)
    except ValueError:
        _fail("training.optimizer.name", t.optimizer.name, "a keras.optimizers name such as adam, adamw, sgd, rmsprop")
    if t.optimizer.schedule not in ("none", "warmup_cosine"):
        _fail("training.optimizer.schedule", t.optimizer.schedule, "none or warmup_cosine")
    warmup = t.optimizer.warmup_epochs
    if isinstance(warmup, bool) or not isinstance(warmup, int) or not 0 <= warmup < t.epochs:
        _fail("training.optimizer.warmup_epochs", warmup, f"an integer from 0 to training.epochs - 1 ({t.epochs - 1})")
    lr = t.optimizer.learning_rate
    if isinstance(lr, bool) or not isinstance(lr, int | float) or lr <= 0:
        _fail("training.optimizer.learning_rate", lr, "a positive number")
    if t.early_stopping.monitor not in ("val_loss", "val_accuracy", "loss", "accuracy"):
        _fail("training.early_stopping.monitor", t.early_stopping.monitor, "val_loss, val_accuracy, loss or accuracy")
    if t.early_stopping.monitor.startswith("val_") and t.early_stopping.enabled and t.validation_split == 0:
        _fail("training.early_stopping.monitor", t.early_stopping.monitor,
              "a training metric (loss, accuracy) when training.validation_split is 0")
    if cfg.on_finished not in ON_FINISHED:
        _fail("on_finished", cfg.on_finished, f"one of {', '.join(ON_FINISHED)}")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", str(cfg.project.id)):
        _fail("project.id", cfg.project.id, "letters, digits, '_', '.' or '-' (it names the output folder)")
    md5 = cfg.mirror.md5 if cfg.mirror.source and cfg.data.generate is None else cfg.data.md5
    if cfg.data.generate is None and not re.fullmatch(r"[0-9a-f]{32}", str(md5)):
        _fail("mirror.md5" if cfg.mirror.source else "data.md5", md5, "32 lowercase hex digits (an md5)")
    try:
        check_layer_specs(cfg.model.layers, "model.layers")
        check_layer_specs(cfg.augmentation.layers, "augmentation.layers")
    except ModelConfigError as err:
        raise ConfigError(str(err)) from err
