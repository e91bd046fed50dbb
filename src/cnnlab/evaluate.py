"""`python -m cnnlab.evaluate project=p04 [evaluate.model=<model.keras>]`: re-evaluate a saved model without
training (by default the pipeline's `outputs/s42/p04/model.keras`: seed 42, or training.seed=<seed>) and write its
figures into the job's own folder (`logs/evaluate/runs/<time>_p04/`)."""

from __future__ import annotations

import json
import logging
import sys
import zipfile
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig

from cnnlab.cli import one_line_errors, precheck, refuse
from cnnlab.config.backend import use_backend
from cnnlab.config.compose import check_composed, to_job
from cnnlab.config.errors import ConfigError
from cnnlab.config.schema import JobConfig
from cnnlab.core.evaluation import evaluate_model
from cnnlab.job.checks import check_id
from cnnlab.run.checkout import run_own_code
from cnnlab.run.context import JobContext
from cnnlab.run.data import DataSpec, load
from cnnlab.tracking.store import open_store

log = logging.getLogger(__name__)


class DataMismatch(ConfigError):
    """The model was trained on other data than it is asked to be evaluated on, or does not fit that data."""


def check_recorded_data(model_path: Path, data_name: str, checksum: str | None, allow: bool) -> None:
    """Refuse, unless `allow`, a model whose run.json (written beside every run's and published model) names
    other data than `data_name`/`checksum` (None: not loaded yet, names only), or that has no such record."""
    if allow:
        return
    hint = "evaluate.allow_other_data=true evaluates it anyway"
    record = model_path.parent / "run.json"
    if not record.is_file():
        raise DataMismatch(f"{model_path}: no run.json beside it records which data it was trained on; {hint}")
    trained = json.loads(record.read_text())
    if trained.get("data") != data_name:
        raise DataMismatch(f"{model_path} was trained on data={trained.get('data')}, not data={data_name}: its "
                           f"accuracy there means nothing; give data={trained.get('data')}, or {hint}")
    if checksum is not None and trained.get("data_sha256") != checksum:
        raise DataMismatch(f"{model_path} was trained on {data_name} with sha256 {trained.get('data_sha256')}, but "
                           f"the prepared {data_name} here has sha256 {checksum} (another copy or other settings); "
                           f"{hint}")


def model_file(job: JobConfig) -> Path:
    """The model a job evaluates: evaluate.model, by default the pipeline's `outputs/s<seed>/<project>/model.keras`
    (as the pipeline publishes it)."""
    default = Path(job.paths.outputs) / f"s{job.training.seed}" / job.project.id / "model.keras"
    return Path(job.evaluate.model or default)


def check_model_file(model_path: Path, project: str) -> None:
    """Refuse, before Keras starts, a model file that is missing or not a Keras model file (a `.keras` file is a
    zip archive with the model's config.json)."""
    fix = f"run the pipeline (dvc repro) or give one: evaluate.model=runs/{project}/<run id>/model.keras"
    if not model_path.is_file():
        what = "a folder, not a model file" if model_path.is_dir() else "no such file"
        raise ConfigError(f"no trained model for project {project!r} at {model_path} ({what}); {fix}")
    try:
        with zipfile.ZipFile(model_path) as archive:
            found = "config.json" in archive.namelist()
    except (zipfile.BadZipFile, OSError):
        found = False
    if not found:
        raise ConfigError(f"{model_path} is not a Keras model file (a .keras file cnnlab or Keras saved, a zip "
                          f"archive with config.json); {fix}")


def check_fits(model: Any, model_path: Path, image_shape: tuple[int, ...], classes: int) -> None:
    """Refuse a model whose input is not the data's image shape or whose output is not one score per class."""
    expected_in, expected_out = (None, *image_shape), (None, classes)
    if tuple(model.input_shape) != expected_in or tuple(model.output_shape) != expected_out:
        raise DataMismatch(f"{model_path} takes {tuple(model.input_shape)} and gives {tuple(model.output_shape)}; "
                           f"the data needs input {expected_in} and output {expected_out}")


def reevaluate(job: JobConfig, out_dir: Path) -> dict[str, Any]:
    """Evaluate a saved model (evaluate.model, by default the pipeline's `outputs/s<seed>/<project>/model.keras`) on the
    configured test set without training, after checking that it was trained on the same data (its run.json)
    and fits it; writes metrics.json, confusion_matrix.png and confusion.csv into `out_dir` and touches nothing
    else (no MLflow run, nothing published)."""
    check_id("project.id", job.project.id)
    project = job.project.id
    model_path = model_file(job)
    check_model_file(model_path, project)
    allow = job.evaluate.allow_other_data
    check_recorded_data(model_path, job.data.name, None, allow)
    use_backend(job.backend)
    # Keras (and cnnlab.core.models, which imports it) only once the backend is applied; cnnlab.run.results imports
    # matplotlib: neither is needed to refuse a model file
    import keras

    import cnnlab.core.models  # noqa: F401  (registers cnnlab's layers for loading)
    from cnnlab.run.results import write_confusion

    data = load(DataSpec.from_config(job.data, job.mirror, job.paths.data))
    check_recorded_data(model_path, job.data.name, data.checksum, allow)
    model = keras.saving.load_model(model_path)
    check_fits(model, model_path, data.x_test.shape[1:], len(data.class_names))
    result = evaluate_model(model, data.x_test, data.y_test, data.class_names)
    metrics = {"model": str(model_path), "data": job.data.name, "data_sha256": data.checksum,
               **{k: result[k] for k in ("test_accuracy", "test_loss", "per_class_accuracy")}}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    write_confusion(np.asarray(result["confusion_matrix"]), data.class_names, out_dir,
                    f"{project.upper()} test confusion matrix")
    log.info("%s: test accuracy %.4f (%s on %s) -> %s", project, metrics["test_accuracy"], model_path,
             job.data.name, out_dir)
    return metrics


@hydra.main(version_base="1.3", config_path="../../conf", config_name="config")
@one_line_errors
def task(cfg: DictConfig) -> float:
    context = JobContext.current()
    check_composed(cfg, context.overrides)
    job = to_job(cfg)
    out_dir = Path(context.output_dir)
    metrics = reevaluate(job, out_dir)
    if context.launcher_run_id:  # `mlflow run . -e evaluate`: its run holds the evaluation
        from cnnlab.tracking.evaluation import log_evaluation  # imports MLflow: only for `mlflow run`'s evaluation

        open_store(job.tracking)
        log_evaluation(context.launcher_run_id, f"{job.project.id} evaluate · {Path(metrics['model']).parent.name}",
                       {"project": job.project.id, "evaluated_model": metrics["model"], "data": job.data.name,
                        "data_sha256": metrics["data_sha256"]},
                       {"test_accuracy": metrics["test_accuracy"], "test_loss": metrics["test_loss"]}, out_dir,
                       ["metrics.json", "confusion_matrix.png", "confusion.csv"])
    return metrics["test_accuracy"]


def main() -> None:
    run_own_code("cnnlab.evaluate", sys.argv[1:])
    job = precheck(sys.argv[1:], store=False)
    if job is not None:  # a model file that is missing or not one: refused before Hydra's app (and MLflow) starts
        try:
            check_model_file(model_file(job), job.project.id)
        except ConfigError as err:
            refuse(err)
    task()


if __name__ == "__main__":
    main()
