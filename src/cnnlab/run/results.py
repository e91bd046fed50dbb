"""What a finished run leaves behind, and how it appears in one step.

Every run's files go to `<paths.runs>/<project>/<run id>/`: model.keras, metrics.json (numbers only),
run.json (which run, device, data), history.csv, config.yaml, learning_curves.png, confusion_matrix.png and
confusion.csv. They are written into a staging folder beside it and renamed into place at the end. With
`publish=true` (the DVC pipeline's train stages) the run is also published where the pipeline declares its
outputs: `<paths.outputs>/<project>/` (model, config, run.json), `<paths.plots>/<project>/` (curves and
confusion) and `<paths.metrics>/<project>.json` (the one metrics file), each complete in one rename, under a
per-project lock. Publishing draws the two figures again from the run's CSVs with the code of the day: a train
stage depends on this module and on `plots`, and a change to them reruns it without retraining (its run key is
the same, the finished run is reused) and the published figures show the change."""

from __future__ import annotations

import csv
import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from filelock import FileLock

from cnnlab.config.schema import JobConfig, PathsConfig, ProjectConfig
from cnnlab.config.settings import plain
from cnnlab.run import plots
from cnnlab.run.files import atomic_write, publish_copy, remove, replace_dir, temporary_beside

ARTIFACTS = ["metrics.json", "run.json", "config.yaml", "history.csv", "learning_curves.png",
             "confusion_matrix.png", "confusion.csv"]
PUBLISHED_OUTPUTS = ["model.keras", "run.json", "config.yaml"]
PUBLISHED_PLOTS = ["history.csv", "confusion.csv", "learning_curves.png", "confusion_matrix.png"]


def run_folder(paths: PathsConfig, project: str, run_id: str) -> Path:
    return Path(paths.runs) / project / run_id


def as_columns(history: list[dict[str, float]]) -> dict[str, list[float]]:
    """Per-epoch rows as per-metric columns."""
    keys = sorted({key for row in history for key in row})
    return {key: [row.get(key, float("nan")) for row in history] for key in keys}


def reported_accuracy(project: ProjectConfig) -> float | None:
    """The source's test accuracy as a fraction, the unit of cnnlab's own figures (the config quotes the source's
    percent)."""
    reported = project.reported_accuracy
    return None if reported is None else round(reported / 100, 4)


def read_history(path: Path) -> list[dict[str, float]]:
    """history.csv's rows back as per-epoch metrics (what the figures are drawn from again)."""
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items() if k != "epoch" and v != ""} for row in csv.DictReader(f)]


def write_history(history: list[dict[str, float]], path: Path) -> None:
    """history.csv: one row per epoch of the whole (possibly resumed) run, counted from 1 as Keras' log and the
    plots count, with the metrics it has (the journal's placeholders for metrics an epoch did not have, such as
    validation without a split, left out)."""
    keys = sorted({key for row in history for key in row})
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["epoch", *keys], lineterminator="\n")
        writer.writeheader()
        writer.writerows({"epoch": epoch, **row} for epoch, row in enumerate(history, start=1))


def stage(job: JobConfig, run_id: str, trained: Path, evaluation: dict[str, Any], class_names: list[str],
          identity: dict[str, Any], history: list[dict[str, float]], selection: dict[str, Any]) -> Path:
    """Write every file of the run into a fresh staging folder beside its final place; returns the folder.
    `selection` is the kept epoch's record: metric, direction, its value and epoch (counted from 1)."""
    folder = temporary_beside(run_folder(job.paths, job.project.id, run_id), "staged")
    remove(folder)
    folder.mkdir(parents=True)
    project = job.project.id
    curves = as_columns(history)
    metrics = {
        "test_accuracy": evaluation["test_accuracy"], "test_loss": evaluation["test_loss"],
        "per_class_accuracy": evaluation["per_class_accuracy"], "epochs": len(history),
        "train_seconds": round(float(sum(curves.get("epoch_seconds", []))), 2),
        "params": identity["params"], "reported_accuracy": reported_accuracy(job.project),
        "selection": selection,
        "data": {"name": identity["data"], "source": identity["data_source"], "md5": identity["data_md5"],
                 "sha256": identity["data_sha256"]},
        "seed": job.training.seed, "epoch_cap": identity["epoch_cap"], "device": identity["device"],
        "machine": identity["machine"], "early_stopped": identity["early_stopped"],
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "run": {"mlflow_run_id": run_id, "key": identity["key"]},  # which run: the report checks run.json against it
    }
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (folder / "run.json").write_text(json.dumps({"project": project, **identity}, indent=2) + "\n")
    shutil.copyfile(trained, folder / "model.keras")
    write_history(history, folder / "history.csv")
    (folder / "config.yaml").write_text(yaml.safe_dump(plain(job), sort_keys=False))
    write_confusion_csv(np.asarray(evaluation["confusion_matrix"]), class_names, folder)
    draw_figures(folder, project)
    return folder


def draw_figures(folder: Path, project: str) -> None:
    """learning_curves.png and confusion_matrix.png in `folder`, drawn from its history.csv and confusion.csv: a
    run's figures are a view of its numbers, so they can be drawn again whenever the drawing code changes."""
    plots.save(plots.learning_curves(as_columns(read_history(folder / "history.csv")), project.upper()),
               folder / "learning_curves.png")
    matrix, class_names = read_confusion(folder / "confusion.csv")
    plots.save(plots.confusion_matrix(matrix, class_names, f"{project.upper()} test confusion matrix"),
               folder / "confusion_matrix.png")


def write_confusion_csv(matrix: np.ndarray, class_names: list[str], folder: Path) -> None:
    """A long-format confusion.csv (actual,predicted,count), row by row, for DVC plots."""
    rows = ["actual,predicted,count"] + [
        f"{class_names[i]},{class_names[j]},{int(n)}" for (i, j), n in np.ndenumerate(matrix)
    ]
    (folder / "confusion.csv").write_text("\n".join(rows) + "\n")


def read_confusion(path: Path) -> tuple[np.ndarray, list[str]]:
    """confusion.csv back as the matrix (actual rows, predicted columns) and the class names in its order."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    class_names = list(dict.fromkeys(row["actual"] for row in rows))
    index = {name: i for i, name in enumerate(class_names)}
    matrix = np.zeros((len(class_names), len(class_names)), dtype=np.int64)
    for row in rows:
        matrix[index[row["actual"]], index[row["predicted"]]] = int(row["count"])
    return matrix, class_names


def write_confusion(matrix: np.ndarray, class_names: list[str], folder: Path, title: str) -> Path:
    """confusion_matrix.png and confusion.csv of an evaluation outside a run (`cnnlab.evaluate`)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_confusion_csv(matrix, class_names, folder)
    png = folder / "confusion_matrix.png"
    plots.save(plots.confusion_matrix(np.asarray(matrix), class_names, title), png)
    return png


def place(paths: PathsConfig, project: str, run_id: str, staged: Path) -> Path:
    """Rename the staged folder to the run's folder; returns it."""
    final = run_folder(paths, project, run_id)
    replace_dir(staged, final)
    return final


def publish(paths: PathsConfig, project: str, folder: Path) -> None:
    """Publish a finished run's folder where the DVC pipeline declares the project's outputs."""
    Path(paths.checkpoints).mkdir(parents=True, exist_ok=True)
    with FileLock(Path(paths.checkpoints) / f"{project}.publish.lock"):
        publish_copy(folder, Path(paths.outputs) / project, PUBLISHED_OUTPUTS)
        publish_copy(folder, Path(paths.plots) / project, PUBLISHED_PLOTS,
                     before_rename=lambda staged: draw_figures(staged, project))
        atomic_write(Path(paths.metrics) / f"{project}.json", (folder / "metrics.json").read_bytes())

