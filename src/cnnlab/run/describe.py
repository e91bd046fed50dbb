"""How a job's run describes itself in the tracking store: its name (what tells runs apart in the runs table), its
params (what users compare: the settings that decide the model) and its tags (what describes it without deciding
its result). Plain data; cnnlab.tracking writes it."""

from __future__ import annotations

from typing import Any

from cnnlab.config.schema import JobConfig
from cnnlab.config.settings import group_key, plain, settings
from cnnlab.run.context import JobContext

PARENT_TAG = "mlflow.parentRunId"
GROUP_TAG = "cnnlab.group"
CHECKOUT_TAG = "cnnlab.checkout"


def flatten(node: Any) -> dict[str, str]:
    """A nested mapping as `a.b.0.c` -> value strings, as MLflow params."""
    flat: dict[str, str] = {}

    def walk(value: Any, prefix: str) -> None:
        if isinstance(value, dict | list) and value:
            for key, item in value.items() if isinstance(value, dict) else enumerate(value):
                walk(item, f"{prefix}.{key}" if prefix else str(key))
        else:
            flat[prefix] = str(value)

    walk(plain(node), "")
    return flat


def run_params(job: JobConfig) -> dict[str, str]:
    """A run's params: the settings that decide the model, except the data's identity (`data.generate.*`, md5),
    which the tags data, data_source, data_md5 and data_sha256 describe instead."""
    return {key: value for key, value in flatten(settings(job)).items() if not key.startswith("data.")}


def base_tags(job: JobConfig, context: JobContext) -> dict[str, str]:
    """What describes a job's run without deciding its result (so it may change when a run is resumed)."""
    reported = job.project.reported_accuracy
    tags = {
        "project": job.project.id,
        "reported_accuracy": "not reported" if reported is None else f"{reported / 100:.4f}",  # a fraction
        "description": job.project.description,
        "keras_backend": plain(job.backend),
        "seed": str(job.training.seed),
        GROUP_TAG: group_key(job),
    }
    if context.checkout is not None:
        tags["git_commit"] = context.checkout.describe()
        tags[CHECKOUT_TAG] = context.checkout.path
    if context.dvc_stage:
        tags["dvc_stage"] = context.dvc_stage
    if context.dvc_experiment:  # `dvc exp run`, queued or not: which experiment the run belongs to
        tags["dvc_experiment"] = context.dvc_experiment
    if context.overrides:
        tags["overrides"] = " ".join(context.overrides)[:5000]
    if context.sweep_run_id:
        tags[PARENT_TAG] = context.sweep_run_id
    return tags


def value_of(job: JobConfig, key: str, context: JobContext) -> str:
    """A varied key's value in this job: the option chosen for a config group, the value otherwise."""
    node: Any = plain(job)
    for part in key.lstrip("+~").split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            node = None
            break
    if isinstance(node, dict | list) or node is None:
        return str(context.choices.get(key, node))
    return str(node)


def run_name(job: JobConfig, key: str, context: JobContext, test_accuracy: float | None = None) -> str:
    """A name that tells runs apart in the runs table, most telling first (the UI cuts long names): project,
    test accuracy once known, the values a sweep varies, data, epochs (and a cap in force), the start of the key."""
    epochs = f"{job.training.epochs} ep" + (f" (cap {job.max_epochs})" if job.max_epochs else "")
    varied = [k for k in context.sweep_varied if k not in ("project", "data")]
    values = [f"{k.rsplit('.', 1)[-1]}={value_of(job, k, context)}" for k in varied]
    head = job.project.id + ("" if test_accuracy is None else f" test {test_accuracy:.1%}")
    return " · ".join([head, *values, job.data.name, epochs, key[:6]])
