"""`python -m cnnlab.report`: the leaderboard of the pipeline's projects, reproduced beside the source.

Reads what the pipeline published for the projects in params.yaml, `metrics/<project>.json` (the figures) and
`outputs/<project>/run.json` (the MLflow run), and the MLflow registry (each project's champion), and writes
`reports/leaderboard.md` (project, cnnlab's and the source's test accuracy in percent, difference, params,
epochs, epoch cap, train time, the data's checksum, device, MLflow run, champion model; above it which data, cap
and devices the figures come from) and `reports/leaderboard.png`.

`python -m cnnlab.report --progress` prints the table of the projects published so far while the pipeline is
still training (the others: "in progress"), and writes nothing."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from cnnlab.cli import one_line_errors
from cnnlab.config.compose import compose, to_job
from cnnlab.errors import UserError
from cnnlab.pipeline import read_params, run_overrides
from cnnlab.run import plots
from cnnlab.run.checkout import relocated, run_own_code

UI = "http://127.0.0.1:5000"


def load_rows(projects: list[str], metrics_dir: Path, outputs_dir: Path,
              missing_ok: bool = False) -> list[dict[str, Any]]:
    """The published figures and run of each project. With `missing_ok`, those published so far, and a project
    whose figures are committed but whose run folder is not here (a clone: outputs/ is DVC's, not git's) is shown
    without its run's link."""
    rows = []
    for project in projects:
        path, trained = metrics_dir / f"{project}.json", outputs_dir / project / "run.json"
        if missing_ok and not path.exists():
            continue
        missing = [str(p) for p in (path, trained) if not p.exists()]
        if not missing_ok and missing:
            raise UserError(f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing: run "
                            f"`dvc repro` (it trains and publishes {project})")
        run = read_json(trained, project) if trained.exists() else {}
        rows.append({"project": project, **{k: run.get(k) for k in ("device", "mlflow_run_id", "mlflow_experiment_id",
                                                                     "mlflow_tracking_uri")},
                     **read_json(path, project)})
    return rows


def read_json(path: Path, project: str) -> dict[str, Any]:
    """A published JSON object; an empty, corrupt or unreadable one is a UserError naming it and the fix."""
    text = None
    try:
        text = path.read_text()
        value = json.loads(text)
    except (OSError, ValueError) as err:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        problem = "empty" if text is not None and not text.strip() else f"not readable JSON ({err})"
        raise UserError(f"{path} is {problem}: publish {project} again (`dvc repro -f train@{project}`, or "
                        f"`dvc checkout {path}` for the committed one)") from None
    if not isinstance(value, dict):
        raise UserError(f"{path} is not a JSON object: publish {project} again (`dvc repro -f train@{project}`)")
    return value


def ui(row: dict[str, Any]) -> str:
    """Where a run can be looked at: its tracking server, or `mlflow ui` on this machine for a local store."""
    uri = row.get("mlflow_tracking_uri") or ""
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else UI


def _champion(project: str, version: str | None, base: str) -> str:
    from cnnlab.tracking.registry import champion_uri, model_name

    if version is None:
        return "–"
    return f"`{champion_uri(project)}` = [version {version}]({base}/#/models/{model_name(project)}/versions/{version})"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def provenance(rows: list[dict[str, Any]]) -> str:
    """Which data (source and checksum), which epoch cap and which devices the figures come from."""
    data = sorted({f"{r['data']['name']}, {r['data']['source']}, prepared sha256 {r['data']['sha256'][:12]}"
                   for r in rows})
    caps = sorted({r.get("epoch_cap") or 0 for r in rows})
    cap = "no epoch cap" if caps == [0] else "epochs capped at " + " / ".join(str(c or "none") for c in caps)
    devices = sorted({r.get("device") or "unknown device" for r in rows})
    return f"Data: {'; '.join(data)}. {cap[0].upper()}{cap[1:]}. Device: {'; '.join(devices)}."


def epochs(row: dict[str, Any]) -> str:
    """Epochs trained, whether early stopping ended them, and the kept epoch (the selection's best)."""
    text = str(row.get("epochs", "–")) + (" (early stop)" if row.get("early_stopped") else "")
    kept = (row.get("selection") or {}).get("epoch")
    return text if kept is None else f"{text}, kept {kept}"


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "# Leaderboard", "",
        "Test accuracy in percent: cnnlab's reproduction beside the source's reported figure, of the weights of "
        "the kept epoch (the best on validation accuracy). "
        "The champion is the project's registered model version that is best on validation, not on test. "
        f"{provenance(rows)} MLflow links go to the run's tracking server, or for the local store to "
        f"`mlflow ui --backend-store-uri sqlite:///mlflow.db` on {UI}.", "",
        "| project | cnnlab % | source % | difference | params | epochs | cap | train s | data sha256 | device "
        "| finished | MLflow run | champion |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ours, source = r["test_accuracy"], r.get("reported_accuracy")
        diff = "–" if source is None else f"{100 * (ours - source):+.2f}"
        run = r.get("mlflow_run_id", "")
        link = f"[{run[:8]}]({ui(r)}/#/experiments/{r.get('mlflow_experiment_id', '')}/runs/{run})" if run else "–"
        lines.append(f"| {r['project'].upper()} | {_pct(ours)} | {_pct(source)} | {diff} | {r.get('params', 0):,} | "
                     f"{epochs(r)} | {r.get('epoch_cap') or '–'} | {r.get('train_seconds', '–')} | "
                     f"{r['data']['sha256'][:12]} | {r.get('device') or '–'} | {(r.get('finished') or '–')[:10]} | "
                     f"{link} | {_champion(r['project'], r.get('champion'), ui(r))} |")
    return "\n".join(lines) + "\n"


def figure(rows: list[dict[str, Any]]) -> Any:
    import matplotlib.pyplot as plt

    names = [r["project"].upper() for r in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(7, len(rows) * 0.8), 4.4))
    ax.bar(x - 0.2, [100 * r["test_accuracy"] for r in rows], 0.4, label="cnnlab")
    ax.bar(x + 0.2, [100 * (r.get("reported_accuracy") or 0) for r in rows], 0.4, label="source (0 = not reported)")
    ax.set_xticks(x, names)
    ax.set(ylabel="test accuracy %", title="cnnlab vs the source")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.text(0.01, 0.01, provenance(rows), fontsize=7, wrap=True)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


@one_line_errors
def main(argv: list[str] | None = None) -> None:
    run_own_code("cnnlab.report", sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m cnnlab.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--progress", action="store_true", help="print the projects published so far, write nothing")
    args = parser.parse_args(argv)
    params = read_params()
    rows = load_rows(params["projects"], Path("metrics"), Path("outputs"), missing_ok=args.progress)
    if args.progress:
        done = {r["project"] for r in rows}
        waiting = [p.upper() for p in params["projects"] if p not in done]
        print(markdown(rows) + (f"\nIn progress: {', '.join(waiting)}.\n" if waiting else ""))
        return
    from cnnlab.tracking.registry import champions

    versions = champions(relocated(to_job(compose(run_overrides(params)))).tracking.uri, params["projects"])
    for row in rows:
        row["champion"] = versions.get(row["project"])
    out = Path("reports")
    out.mkdir(exist_ok=True)
    (out / "leaderboard.md").write_text(markdown(rows))
    plots.save(figure(rows), out / "leaderboard.png")
    print((out / "leaderboard.md").read_text())


if __name__ == "__main__":
    main()
