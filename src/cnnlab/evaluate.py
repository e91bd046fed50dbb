"""Test-set evaluation: loss, accuracy, per-class accuracy and confusion matrix of a trained model.

`python -m cnnlab.evaluate project=p04` re-evaluates the saved `outputs/p04/model.keras` without training and
writes `metrics/p04.json`, `plots/p04/confusion_matrix.png` (+ `confusion.csv`) and `plots/p04/history.csv`."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig

from cnnlab.config import use_backend

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


def reevaluate(cfg: DictConfig) -> dict[str, Any]:
    """Load outputs/<project>/model.keras and the test set, write metrics/<project>.json and the plots."""
    use_backend(cfg.backend)
    import keras

    import cnnlab.layers  # noqa: F401  (registers custom layers for loading)
    from cnnlab.data import DataSpec, load

    project = str(cfg.project.id)
    out_dir = Path(cfg.paths.outputs) / project
    model_path = out_dir / "model.keras"
    if not model_path.is_file():
        raise FileNotFoundError(f"no trained model for project {project!r} at {model_path}; train it first: "
                                f"python -m cnnlab.train project={project}")
    data = load(DataSpec.from_config(cfg))
    result = evaluate_model(keras.saving.load_model(model_path), data.x_test, data.y_test, data.class_names)
    trained = json.loads((out_dir / "metrics.json").read_text()) if (out_dir / "metrics.json").exists() else {}
    metrics = {  # numbers only, so `dvc metrics show` / `dvc exp show` compare them
        "test_accuracy": result["test_accuracy"],
        "test_loss": result["test_loss"],
        "per_class_accuracy": result["per_class_accuracy"],
        "reported_accuracy": cfg.project.reported_accuracy,
        **{k: trained[k] for k in ("epochs", "train_seconds", "params") if k in trained},
    }
    metrics_path = Path(cfg.paths.metrics) / f"{project}.json"
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    metrics_path.write_text(json.dumps(metrics, indent=2) + "\n")
    plot_dir = Path(cfg.paths.plots) / project
    write_confusion(np.asarray(result["confusion_matrix"]), data.class_names, plot_dir,
                    f"{project.upper()} test confusion matrix")
    if (out_dir / "history.csv").exists():  # the learning curves, beside the confusion matrix for DVC plots
        shutil.copyfile(out_dir / "history.csv", plot_dir / "history.csv")
    log.info("%s: test accuracy %.4f -> %s", project, metrics["test_accuracy"], metrics_path)
    return metrics


@hydra.main(version_base="1.3", config_path="../../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    return reevaluate(cfg)["test_accuracy"]


if __name__ == "__main__":
    main()
