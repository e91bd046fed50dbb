"""Every check of a job's values that can be made before data is loaded or anything is written, each raising a
ConfigError that names the key, the value and what is allowed. Types are the schema's business (composition
refuses them); what is left is meaning: ranges, names, combinations, what Keras can build, where files can go.

`check_job` needs no Keras, so a command refuses a bad value in seconds, before the backend starts;
`check_buildable` builds every layer, the model and the optimizer (Keras must be running)."""

from __future__ import annotations

import difflib
import math
import re
from pathlib import Path
from typing import Any

from cnnlab.config.errors import ConfigError, fail
from cnnlab.config.schema import DataConfig, JobConfig, MirrorConfig, TrackingConfig, TrainingConfig, sqlite_file
from cnnlab.config.settings import check_epoch_cap, data_md5, plain, uses_mirror
from cnnlab.core.optimizer import make_optimizer
from cnnlab.run.files import writable_dir

SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
PATH_KEYS = ("data", "outputs", "runs", "checkpoints", "metrics", "plots")


def check_id(key: str, value: Any) -> str:
    """A project id names folders: one safe path component (no '.', '..', '/', leading dot)."""
    if not isinstance(value, str) or not SAFE_ID.fullmatch(value):
        fail(key, value, "a name of letters, digits, '_', '.' or '-' that starts with a letter or digit "
                         "(it names the project's folders)")
    return value


def check_job(job: JobConfig) -> None:
    """Everything that needs neither Keras nor data, the first bad key raising a ConfigError."""
    check_id("project.id", job.project.id)
    for group in ("model", "augmentation", "training"):
        _finite_numbers(plain(getattr(job, group)), group)
    _check_training(job.training)
    if job.registry.register and not job.tracking.log_model:
        fail("registry.register", True, "false when tracking.log_model=false (there is no model to register)")
    check_epoch_cap("max_epochs", job.max_epochs)
    _check_tracking(job.tracking)
    _check_data(job.data, job.mirror)
    _check_paths(job)


def _positive(value: int, key: str) -> None:
    if value <= 0:
        fail(key, value, "a positive integer")


def _fraction(value: float, key: str) -> None:
    if not 0 <= value < 1:
        fail(key, value, "a number in [0, 1)")


def _finite_numbers(node: Any, key: str) -> None:
    """No NaN or infinity anywhere under `node`: they pass every range check and ruin a run later."""
    if isinstance(node, dict):
        for k, v in node.items():
            _finite_numbers(v, f"{key}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _finite_numbers(v, f"{key}.{i}")
    elif isinstance(node, float) and not math.isfinite(node):
        fail(key, node, "a finite number")


def _auto_or_bool(value: bool | str, key: str) -> None:
    if isinstance(value, str) and value != "auto":
        fail(key, value, "auto, true or false")


def _check_training(t: TrainingConfig) -> None:
    for key in ("epochs", "batch_size", "steps_per_execution"):
        _positive(getattr(t, key), f"training.{key}")
    _positive(t.early_stopping.patience, "training.early_stopping.patience")
    if t.seed < 0:
        fail("training.seed", t.seed, "a non-negative integer")
    _fraction(t.validation_split, "training.validation_split")
    _fraction(t.label_smoothing, "training.label_smoothing")
    _auto_or_bool(t.device_data, "training.device_data")
    _auto_or_bool(t.jit_compile, "training.jit_compile")
    _auto_or_bool(t.mixed_precision, "training.mixed_precision")
    monitor = t.early_stopping.monitor.value
    if monitor.startswith("val_") and t.early_stopping.enabled and t.validation_split == 0:
        fail("training.early_stopping.monitor", monitor,
             "a training metric (loss, accuracy) when training.validation_split is 0")
    opt = t.optimizer
    if not 0 <= opt.warmup_epochs < t.epochs:
        fail("training.optimizer.warmup_epochs", opt.warmup_epochs,
             f"an integer from 0 to training.epochs - 1 ({t.epochs - 1})")
    if opt.learning_rate <= 0:
        fail("training.optimizer.learning_rate", opt.learning_rate, "a positive number")


def _check_tracking(t: TrackingConfig) -> None:
    if not 0 < t.system_metrics_interval < math.inf:
        fail("tracking.system_metrics_interval", t.system_metrics_interval, "a positive number of seconds")


def _check_data(data: DataConfig, mirror: MirrorConfig) -> None:
    if data.generate is None:
        md5 = data_md5(data, mirror)
        if not re.fullmatch(r"[0-9a-f]{32}", str(md5)):
            fail("mirror.md5" if uses_mirror(data, mirror) else "data.md5", md5, "32 lowercase hex digits (an md5)")
        return
    for key in ("train_per_batch", "test"):
        _positive(getattr(data.generate, key), f"data.generate.{key}")
    if data.generate.seed < 0:
        fail("data.generate.seed", data.generate.seed, "a non-negative integer")


def _check_paths(job: JobConfig) -> None:
    """Every folder the job will write, checked writable up front (a read-only one would fail after training):
    the configured folders, the project's own folders under them, and the artifacts folder of a local store."""
    project = job.project.id
    own = {"runs": project, "outputs": project, "plots": project}  # <paths.x>/<project>/ (results.place, publish)
    for key in PATH_KEYS:
        value = getattr(job.paths, key)
        for folder in (Path(value), *([Path(value) / own[key]] if key in own else [])):
            problem = writable_dir(folder)
            if problem:
                fail(f"paths.{key}", value, f"a folder cnnlab can write into ({problem})")
    database = sqlite_file(job.tracking.uri)
    if database is not None:  # its runs' artifacts go to mlruns/ beside it (cnnlab.tracking.store.artifact_location)
        problem = writable_dir(database.parent / "mlruns")
        if problem:
            fail("tracking.uri", job.tracking.uri, f"a store whose artifacts folder cnnlab can write ({problem})")


def check_buildable(job: JobConfig) -> None:
    """Build every layer, the model and the optimizer: a wrong argument or shape fails here, naming the key."""
    # cnnlab.core.models imports Keras: only here, once the backend is chosen (check_job must stay Keras-free)
    from cnnlab.core.models import ModelConfigError, build_layer, build_model, check_layer_specs

    try:
        check_layer_specs(job.model.layers, "model.layers")
        check_layer_specs(job.augmentation.layers, "augmentation.layers")
        for i, spec in enumerate(job.augmentation.layers):
            build_layer(spec, f"augmentation.layers.{i}")
        built = build_model(job.model)
    except ModelConfigError as err:
        raise ConfigError(str(err)) from err
    # the head (Dense then softmax) acts on the last axis: layers that leave an image (e.g. none at all) make one
    # prediction per pixel, which Keras only refuses in fit, after the data, the store and a run
    shape = tuple(built.output_shape)
    if shape != (None, job.model.num_classes):
        layers = [spec.get("type") for spec in job.model.layers]
        fail("model.layers", layers, "layers whose output is one vector per image (end them in Flatten or a global "
             f"pooling layer), so the head makes one prediction of {job.model.num_classes} classes per image; "
             f"these make predictions of shape {shape}")
    make_optimizer(job.training.optimizer, steps_per_epoch=1, epochs=job.training.epochs)
    opt = job.training.optimizer
    if opt.frozen_variables:  # else a misspelt path fails at the first step, after the data and the run started
        paths = sorted(v.path for v in built.trainable_variables)
        missing = sorted(set(opt.frozen_variables) - set(paths))
        if missing:
            near = difflib.get_close_matches(missing[0], paths, n=3) or paths[:3]
            fail("training.optimizer.frozen_variables", missing,
                 f"paths of the model's trained variables ({', '.join(near)}, ...)")
        if opt.frozen_after_steps is None or opt.frozen_after_steps < 0:
            fail("training.optimizer.frozen_after_steps", opt.frozen_after_steps,
                 "a number of steps >= 0 (after which the frozen_variables stop training)")
