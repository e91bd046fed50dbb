"""What decides a trained model, and the run key made of it.

`settings` is that part of a job: project id, backend, the data's identity, model, augmentation, training and
selection (which epoch's weights are kept). The key hashes the settings with the versions of Keras and its backend
and the source of `cnnlab.core`, the code that decides a trained model (and only that code: editing the report,
the registry, tracking or a CLI leaves every key as it is). Runs with the same key compute the same thing."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
from enum import Enum
from functools import cache
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from cnnlab.config.errors import fail
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

CORE = Path(__file__).resolve().parents[1] / "core"
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


def data_md5(data: DataConfig, mirror: MirrorConfig) -> str | None:
    """The md5 the archive must have: the mirror's when a mirror replaces a downloaded data set; None for
    generated data (its archive is checked against the md5 recorded when it was made)."""
    if data.generate is not None:
        return None
    return mirror.md5 if mirror.source else data.md5


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
        if mirror.source:
            mirror = dataclasses.replace(mirror, md5=data["md5"])
        else:
            new_data = dataclasses.replace(new_data, md5=data["md5"])
    project = dataclasses.replace(job.project, id=chosen["project"])
    return dataclasses.replace(
        job, project=project, backend=Backend(chosen["backend"]), data=new_data, mirror=mirror,
        model=typed(ModelConfig, chosen["model"]), augmentation=typed(AugmentationConfig, chosen["augmentation"]),
        training=typed(TrainingConfig, chosen["training"]), selection=typed(SelectionConfig, chosen["selection"]))


def capped(job: JobConfig) -> JobConfig:
    """`job` with at most `max_epochs` epochs (0: no cap), kept valid: the warm-up shrinks with the epochs."""
    t, cap = job.training, job.max_epochs
    if cap < 0:
        fail("max_epochs", cap, "a non-negative integer (0 = no cap)")
    if not cap or t.epochs <= cap:
        return job
    optimizer = dataclasses.replace(t.optimizer, warmup_epochs=min(t.optimizer.warmup_epochs, cap - 1))
    return dataclasses.replace(job, training=dataclasses.replace(t, epochs=cap, optimizer=optimizer))


@cache
def code_digest() -> str:
    """sha256 of cnnlab.core's source files: a run trained by other model-deciding code is another result."""
    digest = hashlib.sha256()
    for path in sorted(CORE.rglob("*.py")):
        digest.update(str(path.relative_to(CORE)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


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


def result_key(job: JobConfig) -> str:
    """A short hash of the settings, the versions and the model-deciding code: runs with the same key compute the
    same thing."""
    chosen = settings(job)
    text = json.dumps({"settings": chosen, "versions": versions(chosen["backend"])}, sort_keys=True) + code_digest()
    return hashlib.sha256(text.encode()).hexdigest()[:16]
