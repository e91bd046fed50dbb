"""What a finished run leaves behind, and how it appears in one step.

Every run's files go to `<paths.runs>/<project>/<run id>/`: model.keras, metrics.json (numbers only),
run.json (which run, device, data), history.csv, config.yaml, learning_curves.png, confusion_matrix.png and
confusion.csv. They are written into a staging folder beside it and renamed into place at the end. With
`publish=true` (the DVC pipeline's train stages) the run is also published where the pipeline declares its
outputs: `<paths.outputs>/<project>/` (model, config, run.json), `<paths.plots>/<project>/` (curves and
confusion) and `<paths.metrics>/<project>.json` (the one metrics file), each complete in one rename, under a
per-project lock."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock
from omegaconf import DictConfig, OmegaConf

from cnnlab import plots
from cnnlab.evaluate import write_confusion
from cnnlab.files import atomic_write, publish_copy, remove, replace_dir, temporary_beside

ARTIFACTS = ["metrics.json", "run.json", "config.yaml", "history.csv", "learning_curves.png",
             "confusion_matrix.png", "confusion.csv"]
PUBLISHED_OUTPUTS = ["model.keras", "run.json", "config.yaml"]
PUBLISHED_PLOTS = ["history.csv", "confusion.csv", "learning_curves.png", "confusion_matrix.png"]


def run_folder(cfg: DictConfig, run_id: str) -> Path:
    return Path(cfg.paths.runs) / str(cfg.project.id) / run_id


def as_columns(history: list[dict[str, float]]) -> dict[str, list[float]]:
    """Per-epoch rows as per-metric columns."""
    keys = sorted({key for row in history for key in row})
    return {key: [row.get(key, float("nan")) for row in history] for key in keys}


def reported_accuracy(cfg: DictConfig) -> float | None:
    """The source's test accuracy as a fraction, the unit of cnnlab's own figures (the config quotes the source's
    percent)."""
    reported = cfg.project.reported_accuracy
    return None if reported is None else round(reported / 100, 4)


def selection(cfg: DictConfig, history: list[dict[str, float]]) -> dict[str, Any]:
    """The run's value for choosing between runs: the best epoch of `selection.metric` (a validation metric)
    in `selection.direction`; value and epoch are None when the run had no validation data."""
    metric, direction = str(cfg.selection.metric), str(cfg.selection.direction)
    values = [(row[metric], epoch) for epoch, row in enumerate(history)
              if np.isfinite(row.get(metric, float("nan")))]
    best = (max if direction == "maximize" else min)(values, default=(None, None))
    return {"metric": metric, "direction": direction, "value": best[0], "epoch": best[1]}


def read_history(path: Path) -> list[dict[str, float]]:
    """history.csv's rows back as per-epoch metrics."""
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items() if k != "epoch" and v != ""} for row in csv.DictReader(f)]


def write_history(history: list[dict[str, float]], path: Path) -> None:
    """history.csv: one row per epoch of the whole (possibly resumed) run, with the metrics it has (the
    journal's placeholders for metrics an epoch did not have, such as validation without a split, left out)."""
    keys = sorted({key for row in history for key in row})
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["epoch", *keys], lineterminator="\n")
        writer.writeheader()
        writer.writerows({"epoch": epoch, **row} for epoch, row in enumerate(history))


def stage(cfg: DictConfig, run_id: str, trained: Path, evaluation: dict[str, Any], class_names: list[str],
          identity: dict[str, Any], history: list[dict[str, float]]) -> Path:
    """Write every file of the run into a fresh staging folder beside its final place; returns the folder."""
    folder = temporary_beside(run_folder(cfg, run_id), "staged")
    remove(folder)
    folder.mkdir(parents=True)
    project = str(cfg.project.id)
    curves = as_columns(history)
    metrics = {
        "test_accuracy": evaluation["test_accuracy"], "test_loss": evaluation["test_loss"],
        "per_class_accuracy": evaluation["per_class_accuracy"], "epochs": len(history),
        "train_seconds": round(float(sum(curves.get("epoch_seconds", []))), 2),
        "params": identity["params"], "reported_accuracy": reported_accuracy(cfg),
        "selection": selection(cfg, history),
        "data": {"name": identity["data"], "source": identity["data_source"], "md5": identity["data_md5"],
                 "sha256": identity["data_sha256"]},
        "epoch_cap": identity["epoch_cap"], "device": identity["device"],
    }
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (folder / "run.json").write_text(json.dumps({"project": project, **identity}, indent=2) + "\n")
    shutil.copyfile(trained, folder / "model.keras")
    write_history(history, folder / "history.csv")
    OmegaConf.save(cfg, folder / "config.yaml", resolve=True)
    plots.save(plots.learning_curves(curves, project.upper()), folder / "learning_curves.png")
    write_confusion(np.asarray(evaluation["confusion_matrix"]), class_names, folder,
                    f"{project.upper()} test confusion matrix")
    return folder


def place(cfg: DictConfig, run_id: str, staged: Path) -> Path:
    """Rename the staged folder to the run's folder; returns it."""
    final = run_folder(cfg, run_id)
    replace_dir(staged, final)
    return final


def publish(cfg: DictConfig, folder: Path) -> None:
    """Publish a finished run's folder where the DVC pipeline declares the project's outputs."""
    project = str(cfg.project.id)
    Path(cfg.paths.checkpoints).mkdir(parents=True, exist_ok=True)
    with FileLock(Path(cfg.paths.checkpoints) / f"{project}.publish.lock"):
        publish_copy(folder, Path(cfg.paths.outputs) / project, PUBLISHED_OUTPUTS)
        publish_copy(folder, Path(cfg.paths.plots) / project, PUBLISHED_PLOTS)
        atomic_write(Path(cfg.paths.metrics) / f"{project}.json", (folder / "metrics.json").read_bytes())

