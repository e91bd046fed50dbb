"""`python -m cnnlab.report`: the leaderboard of the pipeline's projects, reproduced beside the source.

Reads what the pipeline published for the projects in params.yaml, `metrics/<project>.json` (the figures) and
`outputs/<project>/run.json` (the MLflow run and the device), and the MLflow registry (each project's
champion), and writes `reports/leaderboard.md` (project, cnnlab's and the source's test accuracy, difference,
params, epochs, train time, device, MLflow run, champion model) and `reports/leaderboard.png`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from cnnlab import plots
from cnnlab.config import compose
from cnnlab.pipeline import read_params, run_overrides
from cnnlab.registry import CHAMPION, champion_uri, model_name
from cnnlab.tracking import sqlite_file

UI = "http://127.0.0.1:5000"


def load_rows(projects: list[str], metrics_dir: Path, outputs_dir: Path) -> list[dict[str, Any]]:
    rows = []
    for project in projects:
        path, trained = metrics_dir / f"{project}.json", outputs_dir / project / "run.json"
        if not path.exists() or not trained.exists():
            raise SystemExit(f"{path} or {trained} is missing: run `dvc repro`")
        run = json.loads(trained.read_text())
        rows.append({"project": project, **{k: run.get(k) for k in ("device", "mlflow_run_id", "mlflow_experiment_id")},
                     **json.loads(path.read_text())})
    return rows


def champions(projects: list[str], uri: str) -> dict[str, str]:
    """The version `champion` points at, per project that has one in the store at `uri`."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    database = sqlite_file(uri)
    if database is not None and not database.exists():
        return {}
    client, found = MlflowClient(uri), {}
    for project in projects:
        try:
            found[project] = client.get_model_version_by_alias(model_name(project), CHAMPION).version
        except MlflowException:
            continue
    return found


def _champion(project: str, version: str | None) -> str:
    if version is None:
        return "–"
    return f"`{champion_uri(project)}` = [version {version}]({UI}/#/models/{model_name(project)}/versions/{version})"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def markdown(rows: list[dict[str, Any]], data: str) -> str:
    lines = [
        "# Leaderboard", "",
        f"Test accuracy on {data} ({'CIFAR-10' if data == 'cifar10' else 'the tiny synthetic set'}), "
        "cnnlab's reproduction beside the source's reported figure. "
        "The champion is the project's registered model version that is best on validation, not on test. "
        f"MLflow links assume `mlflow ui --backend-store-uri sqlite:///mlflow.db` on {UI}.", "",
        "| project | cnnlab % | source % | difference | params | epochs | train s | device | MLflow run | champion |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ours, source = 100 * r["test_accuracy"], r.get("reported_accuracy")
        diff = "–" if source is None else f"{ours - source:+.2f}"
        run = r.get("mlflow_run_id", "")
        link = f"[{run[:8]}]({UI}/#/experiments/{r.get('mlflow_experiment_id', '')}/runs/{run})" if run else "–"
        lines.append(f"| {r['project'].upper()} | {ours:.2f} | {_pct(source)} | {diff} | {r.get('params', 0):,} | "
                     f"{r.get('epochs', '–')} | {r.get('train_seconds', '–')} | {r.get('device') or '–'} | {link} | "
                     f"{_champion(r['project'], r.get('champion'))} |")
    return "\n".join(lines) + "\n"


def figure(rows: list[dict[str, Any]]) -> Any:
    import matplotlib.pyplot as plt

    names = [r["project"].upper() for r in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(6, len(rows) * 0.8), 4))
    ax.bar(x - 0.2, [100 * r["test_accuracy"] for r in rows], 0.4, label="cnnlab")
    ax.bar(x + 0.2, [r.get("reported_accuracy") or 0 for r in rows], 0.4, label="source (0 = not reported)")
    ax.set_xticks(x, names)
    ax.set(ylabel="test accuracy %", title="cnnlab vs the source")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def main() -> None:
    params = read_params()
    rows = load_rows(params["projects"], Path("metrics"), Path("outputs"))
    versions = champions(params["projects"], compose(run_overrides(params)).tracking.uri)
    for row in rows:
        row["champion"] = versions.get(row["project"])
    out = Path("reports")
    out.mkdir(exist_ok=True)
    (out / "leaderboard.md").write_text(markdown(rows, params["data"]))
    plots.save(figure(rows), out / "leaderboard.png")
    print((out / "leaderboard.md").read_text())


if __name__ == "__main__":
    main()
