"""cnnlab's knowledge of its config, in one place: composing it (Hydra's compose API), what in it decides a
trained model (`settings`, hashed into the run's key), checking every value before anything runs, and the Keras
backend switch (it must be set before the first `import keras`)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import re
import sys
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

PACKAGE = Path(__file__).resolve().parent
CONF = PACKAGE.parents[1] / "conf"
BACKENDS = ("tensorflow", "jax", "torch")
ON_FINISHED = ("skip", "new")
SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
PATH_KEYS = ("data", "outputs", "runs", "checkpoints", "metrics", "plots")


class ConfigError(ValueError):
    """A config value is not allowed; the message names the key, the value and what is allowed."""


def fail(key: str, value: Any, allowed: str) -> None:
    raise ConfigError(f"{key}={value!r} is not allowed: {allowed}")


def compose(overrides: Sequence[str] = (), config_dir: Path = CONF) -> DictConfig:
    """The primary config with `overrides`, as `python -m cnnlab.train` would see it (without Hydra's own keys)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides))


def settings(cfg: DictConfig) -> dict[str, Any]:
    """What decides the trained model: the project id, the backend, the data's identity, model, augmentation and
    training. Not what describes it (description, the source's figure), where files go, how the run is tracked or
    where the data is fetched from: those can change without changing the result."""
    from cnnlab.data import data_md5

    plain = OmegaConf.to_container(cfg, resolve=True)
    return {
        "project": plain["project"]["id"],
        "backend": plain["backend"],
        "data": {"name": plain["data"]["name"], "md5": data_md5(cfg), "generate": plain["data"]["generate"]},
        "model": plain["model"],
        "augmentation": plain["augmentation"],
        "training": plain["training"],
    }


def apply_settings(cfg: DictConfig, chosen: dict[str, Any]) -> DictConfig:
    """`cfg` with its result-deciding parts replaced by `chosen` (as `settings` returns them), whole subtrees at a
    time, so nothing of `cfg`'s own model or training survives."""
    cfg = cfg.copy()
    cfg.project.id = chosen["project"]
    cfg.backend = chosen["backend"]
    for group in ("model", "augmentation", "training"):
        OmegaConf.update(cfg, group, chosen[group], merge=False)
    data = chosen["data"]
    cfg.data.name, cfg.data.generate = data["name"], data["generate"]
    if data["generate"] is None:
        OmegaConf.update(cfg, "mirror.md5" if cfg.mirror.source else "data.md5", data["md5"], merge=False)
    return cfg


@cache
def code_digest() -> str:
    """sha256 of cnnlab's own source files: a run trained by other code is another result."""
    digest = hashlib.sha256()
    for path in sorted(PACKAGE.rglob("*.py")):
        digest.update(str(path.relative_to(PACKAGE)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def result_key(cfg: DictConfig) -> str:
    """A short hash of the settings and the code: runs with the same key compute the same thing."""
    text = json.dumps(settings(cfg), sort_keys=True, default=str) + code_digest()
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def capped(cfg: DictConfig) -> DictConfig:
    """`cfg` with at most `max_epochs` epochs (0: no cap), kept valid: the warm-up shrinks with the epochs."""
    t, cap = cfg.training, cfg.max_epochs
    if isinstance(cap, bool) or not isinstance(cap, int) or cap < 0:
        fail("max_epochs", cap, "a non-negative integer (0 = no cap)")
    if not cap or t.epochs <= cap:
        return cfg
    cfg = cfg.copy()
    cfg.training.epochs = cap
    cfg.training.optimizer.warmup_epochs = min(t.optimizer.warmup_epochs, cap - 1)
    return cfg


def check_id(key: str, value: Any) -> str:
    """A project id names folders: one safe path component (no '.', '..', '/', leading dot)."""
    if not isinstance(value, str) or not SAFE_ID.fullmatch(value):
        fail(key, value, "a name of letters, digits, '_', '.' or '-' that starts with a letter or digit "
                         "(it names the project's folders)")
    return value


def use_backend(backend: str) -> None:
    """Select the Keras backend and start it (quietly, see cnnlab.console); refuses a backend other than the one
    already imported."""
    if backend not in BACKENDS:
        fail("backend", backend, f"one of {', '.join(BACKENDS)}")
    if importlib.util.find_spec(backend) is None:
        fail("backend", backend, f"an installed backend; {backend} is not installed here (pip install {backend})")
    if "keras" in sys.modules:
        import keras

        if keras.backend.backend() != backend:
            fail("backend", backend, f"Keras is already running on {keras.backend.backend()!r} in this process "
                 "(set KERAS_BACKEND or backend= before starting)")
    os.environ["KERAS_BACKEND"] = backend
    from cnnlab.console import start_backend

    start_backend()


def _positive_int(value: Any, key: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        fail(key, value, "a positive integer")


def _fraction(value: Any, key: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
        fail(key, value, "a number in [0, 1)")


def _finite_numbers(node: Any, key: str) -> None:
    """No NaN or infinity anywhere under `node`: they pass every range check and ruin a run later."""
    if isinstance(node, DictConfig | dict):
        for k, v in node.items():
            _finite_numbers(v, f"{key}.{k}")
    elif isinstance(node, ListConfig | list):
        for i, v in enumerate(node):
            _finite_numbers(v, f"{key}.{i}")
    elif isinstance(node, float) and not math.isfinite(node):
        fail(key, node, "a finite number")


def validate(cfg: DictConfig) -> None:
    """Everything that can be checked without data, checked before any data is loaded or anything written:
    raises ConfigError naming the first bad key, its value and what is allowed."""
    check_id("project.id", cfg.project.id)
    for group in ("model", "augmentation", "training"):
        _finite_numbers(cfg[group], group)
    _check_training(cfg.training)
    if cfg.on_finished not in ON_FINISHED:
        fail("on_finished", cfg.on_finished, f"one of {', '.join(ON_FINISHED)}")
    if not isinstance(cfg.publish, bool):
        fail("publish", cfg.publish, "true or false")
    if cfg.registry.register not in (True, False):
        fail("registry.register", cfg.registry.register, "true or false")
    if cfg.registry.register and not cfg.tracking.log_model:
        fail("registry.register", True, "false when tracking.log_model=false (there is no model to register)")
    _check_selection(cfg)
    _check_tracking(cfg.tracking)
    _check_data(cfg)
    _check_layers(cfg)
    _check_paths(cfg)


def _check_tracking(t: DictConfig) -> None:
    for key in ("log_model", "system_metrics"):
        if not isinstance(t[key], bool):
            fail(f"tracking.{key}", t[key], "true or false")
    interval = t.system_metrics_interval
    if isinstance(interval, bool) or not isinstance(interval, int | float) or not 0 < interval < math.inf:
        fail("tracking.system_metrics_interval", interval, "a positive number of seconds")


SELECTION_METRICS = ("val_accuracy", "val_loss")
DIRECTIONS = ("maximize", "minimize")


def _check_selection(cfg: DictConfig) -> None:
    """Runs are chosen on validation data, never on the test set (without a validation split, on nothing)."""
    if cfg.selection.metric not in SELECTION_METRICS:
        fail("selection.metric", cfg.selection.metric,
             f"a validation metric ({', '.join(SELECTION_METRICS)}); the test set is never used for choosing")
    if cfg.selection.direction not in DIRECTIONS:
        fail("selection.direction", cfg.selection.direction, " or ".join(DIRECTIONS))


def _check_training(t: DictConfig) -> None:
    for key in ("epochs", "batch_size", "steps_per_execution"):
        _positive_int(t.get(key), f"training.{key}")
    _positive_int(t.early_stopping.patience, "training.early_stopping.patience")
    if not isinstance(t.seed, int) or isinstance(t.seed, bool) or t.seed < 0:
        fail("training.seed", t.seed, "a non-negative integer")
    _fraction(t.validation_split, "training.validation_split")
    _fraction(t.label_smoothing, "training.label_smoothing")
    if not isinstance(t.mixed_precision, bool):
        fail("training.mixed_precision", t.mixed_precision, "true or false")
    if t.device_data not in ("auto", True, False):
        fail("training.device_data", t.device_data, "auto, true or false")
    if t.jit_compile not in ("auto", True, False):
        fail("training.jit_compile", t.jit_compile, "auto, true or false")
    if t.early_stopping.monitor not in ("val_loss", "val_accuracy", "loss", "accuracy"):
        fail("training.early_stopping.monitor", t.early_stopping.monitor, "val_loss, val_accuracy, loss or accuracy")
    if t.early_stopping.monitor.startswith("val_") and t.early_stopping.enabled and t.validation_split == 0:
        fail("training.early_stopping.monitor", t.early_stopping.monitor,
             "a training metric (loss, accuracy) when training.validation_split is 0")
    opt = t.optimizer
    if opt.schedule not in ("none", "warmup_cosine"):
        fail("training.optimizer.schedule", opt.schedule, "none or warmup_cosine")
    warmup = opt.warmup_epochs
    if isinstance(warmup, bool) or not isinstance(warmup, int) or not 0 <= warmup < t.epochs:
        fail("training.optimizer.warmup_epochs", warmup, f"an integer from 0 to training.epochs - 1 ({t.epochs - 1})")
    lr = opt.learning_rate
    if isinstance(lr, bool) or not isinstance(lr, int | float) or lr <= 0:
        fail("training.optimizer.learning_rate", lr, "a positive number")
    from cnnlab.fitting import make_optimizer

    make_optimizer(opt, steps_per_epoch=1, epochs=t.epochs)  # every other argument, checked by the optimizer


def _check_data(cfg: DictConfig) -> None:
    if cfg.data.generate is None:
        md5 = cfg.mirror.md5 if cfg.mirror.source else cfg.data.md5
        if not re.fullmatch(r"[0-9a-f]{32}", str(md5)):
            fail("mirror.md5" if cfg.mirror.source else "data.md5", md5, "32 lowercase hex digits (an md5)")
        return
    for key in ("train_per_batch", "test"):
        _positive_int(cfg.data.generate.get(key), f"data.generate.{key}")
    if not isinstance(cfg.data.generate.get("seed"), int) or cfg.data.generate.seed < 0:
        fail("data.generate.seed", cfg.data.generate.get("seed"), "a non-negative integer")


def _check_layers(cfg: DictConfig) -> None:
    """Build every layer and the model itself: a wrong argument or shape fails here, naming the layer."""
    from cnnlab.models import ModelConfigError, build_layer, build_model, check_layer_specs

    try:
        check_layer_specs(cfg.model.layers, "model.layers")
        check_layer_specs(cfg.augmentation.layers, "augmentation.layers")
        for i, spec in enumerate(cfg.augmentation.layers):
            build_layer(spec, f"augmentation.layers.{i}")
        build_model(cfg.model)
    except ModelConfigError as err:
        raise ConfigError(str(err)) from err


def _check_paths(cfg: DictConfig) -> None:
    from cnnlab.files import writable_dir

    for key in PATH_KEYS:
        problem = writable_dir(Path(cfg.paths[key]))
        if problem:
            fail(f"paths.{key}", cfg.paths[key], f"a folder cnnlab can write into ({problem})")
