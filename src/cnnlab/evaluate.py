"""Test-set evaluation: loss, accuracy, per-class accuracy and confusion matrix of a trained model.

`python -m cnnlab.evaluate project=p04 [evaluate.model=<model.keras>]` re-evaluates a saved model without
training (by default the pipeline's `outputs/p04/model.keras`) and writes its figures into the job's own folder
(`logs/evaluate/runs/<time>_p04/`)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from cnnlab.config import ConfigError, check_id, use_backend
from cnnlab.console import one_line_errors

log = logging.getLogger(__name__)


def evaluate_model(model: Any, images: np.ndarray, labels: np.ndarray, class_names: list[str],
                   batch_size: int = 1024) -> dict[str, Any]:
    """One pass over the test set; the loss is plain cross-entropy (no label smoothing)."""
    probs = np.asarray(model.predict(images, batch_size=batch_size, verbose=0), dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    predicted = probs.argmax(axis=1)
    k = len(class_names)
    matrix = np.bincount(labels * k + predicted, minlength=k * k).reshape(k, k)
    per_class = matrix.diagonal() / np.maximum(matrix.sum(axis=1), 1)
    return {
        "test_loss": float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1)).mean()),
        "test_accuracy": float((predicted == labels).mean()),
        "per_class_accuracy": {name: float(acc) for name, acc in zip(class_names, per_class, strict=True)},
        "confusion_matrix": matrix.tolist(),
    }


def write_confusion(matrix: np.ndarray, class_names: list[str], folder: Path, title: str) -> Path:
    """confusion_matrix.png and a long-format confusion.csv (actual,predicted,count) for DVC plots."""
    from cnnlab import plots

    folder.mkdir(parents=True, exist_ok=True)
    rows = ["actual,predicted,count"] + [
        f"{class_names[i]},{class_names[j]},{int(n)}" for (i, j), n in np.ndenumerate(matrix)
    ]
    (folder / "confusion.csv").write_text("\n".join(rows) + "\n")
    png = folder / "confusion_matrix.png"
    plots.save(plots.confusion_matrix(np.asarray(matrix), class_names, title), png)
    return png


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


def check_fits(model: Any, model_path: Path, image_shape: tuple[int, ...], classes: int) -> None:
    """Refuse a model whose input is not the data's image shape or whose output is not one score per class."""
    expected_in, expected_out = (None, *image_shape), (None, classes)
    if tuple(model.input_shape) != expected_in or tuple(model.output_shape) != expected_out:
        raise DataMismatch(f"{model_path} takes {tuple(model.input_shape)} and gives {tuple(model.output_shape)}; "
                           f"the data needs input {expected_in} and output {expected_out}")


def reevaluate(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Evaluate a saved model (evaluate.model, by default the pipeline's `outputs/<project>/model.keras`) on the
    configured test set without training, after checking that it was trained on the same data (its run.json)
    and fits it; writes metrics.json, confusion_matrix.png and confusion.csv into `out_dir` and touches nothing
    else (no MLflow run, nothing published)."""
    use_backend(cfg.backend)
    check_id("project.id", cfg.project.id)
    import keras

    import cnnlab.layers  # noqa: F401  (registers custom layers for loading)
    from cnnlab.data import DataSpec, load

    project = str(cfg.project.id)
    model_path = Path(cfg.evaluate.model or Path(cfg.paths.outputs) / project / "model.keras")
    if not model_path.is_file():
        raise FileNotFoundError(f"no trained model for project {project!r} at {model_path}; run the pipeline "
                                f"(dvc repro) or give one: evaluate.model=runs/{project}/<run id>/model.keras")
    allow = bool(cfg.evaluate.allow_other_data)
    check_recorded_data(model_path, str(cfg.data.name), None, allow)
    data = load(DataSpec.from_config(cfg))
    check_recorded_data(model_path, str(cfg.data.name), data.checksum, allow)
    model = keras.saving.load_model(model_path)
    check_fits(model, model_path, data.x_test.shape[1:], len(data.class_names))
    result = evaluate_model(model, data.x_test, data.y_test, data.class_names)
    metrics = {"model": str(model_path), "data": str(cfg.data.name), "data_sha256": data.checksum,
               **{k: result[k] for k in ("test_accuracy", "test_loss", "per_class_accuracy")}}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    write_confusion(np.asarray(result["confusion_matrix"]), data.class_names, out_dir,
                    f"{project.upper()} test confusion matrix")
    log.info("%s: test accuracy %.4f (%s on %s) -> %s", project, metrics["test_accuracy"], model_path,
             cfg.data.name, out_dir)
    return metrics


@hydra.main(version_base="1.3", config_path="../../conf", config_name="config")
@one_line_errors
def main(cfg: DictConfig) -> float:
    return reevaluate(cfg, Path(HydraConfig.get().runtime.output_dir))["test_accuracy"]


if __name__ == "__main__":
    main()
