"""What decides a trained model, and the run key made of it.

`settings` is that part of a job: project id, backend, the data's identity, model, augmentation, training and
selection (which epoch's weights are kept). The key hashes the settings with the versions of Keras and its
backend, the machine's part in the numbers (cnnlab.config.machine: the CPU's instruction-set level or the GPUs,
the thread count, op determinism) and the cnnlab.core code the job runs (cnnlab.config.code: its syntax without
docstrings, only the definitions the job reaches; editing the report, the registry, tracking, a CLI, a comment or
a layer the project does not use leaves its key as it is). Runs with the same key compute the same thing.

A setting left unset (None) is not in the key: a new setting added unset changes no finished run's key."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
from enum import Enum
from typing import Any

from omegaconf import OmegaConf

from cnnlab.config.code import installed_code, strings
from cnnlab.config.errors import fail
from cnnlab.config.machine import compute_platform
from cnnlab.config.schema import (
    AugmentationConfig,
    Backend,
    DataConfig,
    GenerateConfig,
    JobConfig,
    MirrorConfig,
    ModelConfig,
    SelectionConfig,
    TrainingConfig,
)

BACKEND_PACKAGES = {"tensorflow": ["tensorflow"], "jax": ["jax", "jaxlib"], "torch": ["torch"]}


def plain(value: Any) -> Any:
    """A config section as plain data (dicts, lists, enum values) for JSON, YAML and MLflow."""
    if dataclasses.is_dataclass(value):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def uses_mirror(data: DataConfig, mirror: MirrorConfig) -> bool:
    """Whether the archive comes from the mirror: a mirror replaces a downloaded data set only, never generated
    data (a mirror set once in conf/local for CIFAR-10 leaves data=tiny as it is)."""
    return data.generate is None and bool(mirror.source)


def data_md5(data: DataConfig, mirror: MirrorConfig) -> str | None:
    """The md5 the archive must have: the mirror's when a mirror replaces a downloaded data set; None for
    generated data (its archive is checked against the md5 recorded when it was made)."""
    if data.generate is not None:
        return None
    return mirror.md5 if uses_mirror(data, mirror) else data.md5


def _training(training: TrainingConfig) -> dict[str, Any]:
    """Training settings without the optimizer arguments left unset (None: the optimizer's own default)."""
    settings = plain(training)
    settings["optimizer"] = {k: v for k, v in settings["optimizer"].items() if v is not None}
    return settings


def settings(job: JobConfig) -> dict[str, Any]:
    """What decides the trained model. Not what describes it (description, the source's figure), where files
    go, how the run is tracked or where the data is fetched from: those can change without changing the result."""
    return {
        "project": job.project.id,
        "backend": plain(job.backend),
        "data": {"name": job.data.name, "md5": data_md5(job.data, job.mirror), "generate": plain(job.data.generate)},
        "model": plain(job.model),
        "augmentation": plain(job.augmentation),
        "training": _training(job.training),
        "selection": plain(job.selection),
    }


def apply_settings(job: JobConfig, chosen: dict[str, Any]) -> JobConfig:
    """`job` with its result-deciding parts replaced by `chosen` (as `settings` returns them), whole sections at a
    time, so nothing of `job`'s own model or training survives; the types are checked again on the way."""

    def typed(kind: type, values: Any) -> Any:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(kind), values))

    data = chosen["data"]
    generate = None if data["generate"] is None else typed(GenerateConfig, data["generate"])
    new_data = dataclasses.replace(job.data, name=data["name"], generate=generate)
    mirror = job.mirror
    if generate is None:
        if uses_mirror(new_data, mirror):
            mirror = dataclasses.replace(mirror, md5=data["md5"])
        else:
            new_data = dataclasses.replace(new_data, md5=data["md5"])
    project = dataclasses.replace(job.project, id=chosen["project"])
    return dataclasses.replace(
        job, project=project, backend=Backend(chosen["backend"]), data=new_data, mirror=mirror,
        model=typed(ModelConfig, chosen["model"]), augmentation=typed(AugmentationConfig, chosen["augmentation"]),
        training=typed(TrainingConfig, chosen["training"]), selection=typed(SelectionConfig, chosen["selection"]))


def check_epoch_cap(key: str, cap: Any) -> int:
    """An epoch cap (the job's `max_epochs`, params.yaml's `max_epochs`): a non-negative integer, 0 for none."""
    if isinstance(cap, bool) or not isinstance(cap, int) or cap < 0:
        fail(key, cap, "a non-negative integer (0 = no cap)")
    return cap


def capped(job: JobConfig) -> JobConfig:
    """`job` with at most `max_epochs` epochs (0: no cap), kept valid: the warm-up shrinks with the epochs."""
    t, cap = job.training, check_epoch_cap("max_epochs", job.max_epochs)
    if not cap or t.epochs <= cap:
        return job
    optimizer = dataclasses.replace(t.optimizer, warmup_epochs=min(t.optimizer.warmup_epochs, cap - 1))
    return dataclasses.replace(job, training=dataclasses.replace(t, epochs=cap, optimizer=optimizer))


def versions(backend: str) -> dict[str, str]:
    """Keras' and its backend's versions: another release can compute another thing."""
    names = ["keras", *BACKEND_PACKAGES.get(backend, [])]
    found = {}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def without_unset(value: Any) -> Any:
    """`value` without the mappings' entries that are None, at any depth."""
    if isinstance(value, dict):
        return {k: without_unset(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_unset(v) for v in value]
    return value


def platform_of(job: JobConfig) -> dict[str, Any]:
    """The machine's part in the job's numbers (cnnlab.config.machine), with the job's thread and determinism
    settings resolved."""
    if job.threads < 0:
        fail("threads", job.threads, "a non-negative integer (0 = every CPU this process may use)")
    return compute_platform(job.threads, plain(job.deterministic_ops))


def _hashed(chosen: dict[str, Any], **machine: Any) -> str:
    """A short hash of settings (`chosen`, unset ones left out), the versions of Keras and its backend, `machine`
    and the cnnlab.core code the settings reach."""
    text = json.dumps({"settings": chosen, "versions": versions(chosen["backend"]), **machine}, sort_keys=True)
    code = installed_code().digest(strings(chosen))
    return hashlib.sha256((text + code).encode()).hexdigest()[:16]


def result_key(job: JobConfig) -> str:
    """A short hash of the settings, the versions, the machine's part and the model-deciding code the job runs:
    runs with the same key compute the same thing."""
    return _hashed(without_unset(settings(job)), platform=platform_of(job))


def group_key(job: JobConfig) -> str:
    """A short hash of what decides the model but the seed, with the versions and the code the job runs: the runs
    of one project's seeds share it (tag `cnnlab.group`), whichever machine trained them, and its group run holds
    their mean and spread."""
    chosen = without_unset(settings(job))
    del chosen["training"]["seed"]
    return _hashed(chosen)
