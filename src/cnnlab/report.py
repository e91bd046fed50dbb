"""`python -m cnnlab.report`: the leaderboard of the pipeline's projects over their seeds, reproduced beside the
source, and which of the source's steps were real.

Reads what the pipeline published for each (project, seed) in params.yaml, `metrics/s<seed>/<project>.json` (the
figures) and `outputs/s<seed>/<project>/run.json` (the MLflow run), and the MLflow registry (each project's
champion), and writes `reports/leaderboard.md` and `reports/leaderboard.png`:

- per project: the test accuracy's mean, standard deviation, 95 % confidence interval and range over its seeds
  (cnnlab.run.seeds), the source's figure and whether it lies in the interval;
- per step (a project and the one it `follows` in its config): the difference of means, its interval from
  Welch's t-test and a verdict: improvement, regression, or not resolved with these seeds;
- per run: its seed, figures, machine and MLflow run;
- the figure: every seed as a point, each project's mean with its interval, the source's figure.

`python -m cnnlab.report --progress` prints the tables of the runs published so far while the pipeline is still
training, and writes nothing; `--published` writes them (without champions: the registry is where the runs trained,
and a clone has only the committed figures)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from cnnlab.cli import one_line_errors
from cnnlab.config.compose import compose, to_job
from cnnlab.errors import UserError
from cnnlab.pipeline import read_params, run_overrides
from cnnlab.run import plots
from cnnlab.run.checkout import relocated, run_own_code
from cnnlab.run.files import write_atomically
from cnnlab.run.seeds import Step, step, summarize
from cnnlab.tracking.store import ui_url

UI = "http://127.0.0.1:5000"


def load_rows(projects: list[str], seeds: list[int], metrics_dir: Path, outputs_dir: Path,
              missing_ok: bool = False) -> list[dict[str, Any]]:
    """The published figures and run of each (project, seed). With `missing_ok`, those published so far, and a
    run whose figures are committed but whose run folder is not here (a clone: outputs/ is DVC's, not git's) is
    shown without its run's link. A run record that is not the figures' run (`other_run`) is said in the row and
    warned about, and its link left out."""
    rows = []
    for project in projects:
        for seed in seeds:
            path = metrics_dir / f"s{seed}" / f"{project}.json"
            trained = outputs_dir / f"s{seed}" / project / "run.json"
            if missing_ok and not path.exists():
                continue
            missing = [str(p) for p in (path, trained) if not p.exists()]
            if not missing_ok and missing:
                raise UserError(f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing: run "
                                f"`dvc repro` (it trains and publishes {project} with seed {seed})")
            figures = read_json(path, project, seed)
            run = read_json(trained, project, seed) if trained.exists() else {}
            row = {"project": project, "seed": seed, **figures}
            other = other_run(figures, run) if run else None
            if run and other is None:  # the run's record fills in its link (and what the figures lack)
                row.update({k: run[k] for k in RUN_KEYS if run.get(k) is not None})
            elif other is not None:
                row["other_run"] = f"{trained} is run {str(run.get('mlflow_run_id'))[:8]}, not this row's ({other})"
                print(f"warning: {path} and {trained} are not from the same run ({other}): the row shows {path}'s "
                      "figures without a run link; `dvc checkout` or `dvc repro` puts the pair back together",
                      file=sys.stderr)
            rows.append(row)
    return rows


MISSING = object()
RUN_KEYS = ("device", "machine", "mlflow_run_id", "mlflow_experiment_id", "mlflow_tracking_uri")


def other_run(figures: dict[str, Any], run: dict[str, Any]) -> str | None:
    """Why a run record (outputs/s<seed>/<p>/run.json) is not the run that made the figures
    (metrics/s<seed>/<p>.json), or None when nothing says so: the run id and key where the figures name them (runs
    published since they do), else what both record of the run (data, epoch cap, params, device, early stop)."""
    named = figures.get("run") or {}
    pairs = [(key, named.get(key), run.get(key, MISSING)) for key in ("mlflow_run_id", "key") if named.get(key)]
    if not pairs:
        ours = {**figures, "data_sha256": (figures.get("data") or {}).get("sha256", MISSING)}
        pairs = [(name.replace("_", " "), ours.get(name, MISSING), run.get(name, MISSING))
                 for name in ("data_sha256", "epoch_cap", "params", "device", "early_stopped")]
    for name, ours, theirs in pairs:
        if MISSING not in (ours, theirs) and ours != theirs:
            shown = [str(v)[:12] if isinstance(v, str) else v for v in (ours, theirs)]
            return f"{name} {shown[0]} in the figures, {shown[1]} in the run record"
    return None


def read_json(path: Path, project: str, seed: int) -> dict[str, Any]:
    """A published JSON object; an empty, corrupt or unreadable one is a UserError naming it and the fix."""
    text = None
    try:
        text = path.read_text()
        value = json.loads(text)
    except (OSError, ValueError) as err:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        problem = "empty" if text is not None and not text.strip() else f"not readable JSON ({err})"
        raise UserError(f"{path} is {problem}: publish {project} again (`dvc repro -f train@{project}-{seed}`, "
                        f"or `dvc checkout {path}` for the committed one)") from None
    if not isinstance(value, dict):
        raise UserError(f"{path} is not a JSON object: publish {project} again "
                        f"(`dvc repro -f train@{project}-{seed}`)")
    return value


def by_project(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The rows of each project, in the order they come."""
    found: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        found.setdefault(row["project"], []).append(row)
    return found


def accuracies(rows: list[dict[str, Any]]) -> list[float]:
    return [100 * r["test_accuracy"] for r in rows]


def ui(row: dict[str, Any]) -> str:
    """Where a run can be looked at: its tracking server, or `mlflow ui` on this machine for a local store."""
    uri = row.get("mlflow_tracking_uri") or ""
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else UI


def _champion(project: str, version: str | None, base: str) -> str:
    if version is None:
        return "–"
    from cnnlab.tracking.registry import champion_uri, model_name  # imports MLflow: only for a row with a champion

    return f"`{champion_uri(project)}` = [version {version}]({base}/#/models/{model_name(project)}/versions/{version})"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def machine(row: dict[str, Any]) -> str:
    """Where a run computed: the machine it recorded (CPU and instruction set, or GPUs; threads), else its device."""
    return row.get("machine") or row.get("device") or "not recorded"


def provenance(rows: list[dict[str, Any]]) -> str:
    """Which data (source and checksum), which epoch cap and which devices the figures come from."""
    data = sorted({f"{r['data']['name']}, {r['data']['source']}, prepared sha256 {r['data']['sha256'][:12]}"
                   for r in rows})
    caps = sorted({r.get("epoch_cap") or 0 for r in rows})
    cap = "no epoch cap" if caps == [0] else "epochs capped at " + " / ".join(str(c or "none") for c in caps)
    machines = sorted({machine(r) for r in rows})
    return f"Data: {'; '.join(data)}. {cap[0].upper()}{cap[1:]}. Machines: {'; '.join(machines)}."


def epochs(row: dict[str, Any]) -> str:
    """Epochs trained, whether early stopping ended them, and the kept epoch (the selection's best)."""
    text = str(row.get("epochs", "–")) + (" (early stop)" if row.get("early_stopped") else "")
    kept = (row.get("selection") or {}).get("epoch")
    return text if kept is None else f"{text}, kept {kept}"


def _interval(low: float | None, high: float | None, digits: int = 2) -> str:
    return "–" if low is None else f"[{low:.{digits}f}, {high:.{digits}f}]"


def project_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| project | seeds | mean % | std | 95 % CI | min–max | source % | source in CI | params | epochs "
             "(mean) | train s (mean) | champion |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for project, runs in by_project(rows).items():
        summary = summarize(accuracies(runs))
        source = runs[0].get("reported_accuracy")
        inside = "–" if source is None or summary.low is None else "yes" if summary.holds(100 * source) else "no"
        std = "–" if summary.std is None else f"{summary.std:.2f}"
        epochs_mean = sum(r.get("epochs", 0) for r in runs) / len(runs)
        seconds = sum(r.get("train_seconds") or 0 for r in runs) / len(runs)
        lines.append(f"| {project.upper()} | {summary.n} | {summary.mean:.2f} | {std} | "
                     f"{_interval(summary.low, summary.high)} | {summary.min:.2f}–{summary.max:.2f} | {_pct(source)} | "
                     f"{inside} | {runs[0].get('params', 0):,} | {epochs_mean:.1f} | {seconds:.0f} | "
                     f"{_champion(project, runs[0].get('champion'), ui(runs[0]))} |")
    return lines


def steps(rows: list[dict[str, Any]], follows: dict[str, str | None]) -> list[Step]:
    """Each project against the one it follows, where both have published runs."""
    groups = by_project(rows)
    return [step(before, after, accuracies(groups[before]), accuracies(groups[after]))
            for after, before in follows.items() if before in groups and after in groups]


def step_table(found: list[Step], descriptions: dict[str, str]) -> list[str]:
    lines = ["| step | what changed | difference (points) | 95 % CI | p (Welch) | verdict |",
             "|---|---|---|---|---|---|"]
    for s in found:
        p_value = "–" if s.p_value is None else f"{s.p_value:.3f}"
        lines.append(f"| {s.before.upper()} → {s.after.upper()} | {descriptions.get(s.after, '')} | "
                     f"{s.difference:+.2f} | {_interval(s.low, s.high)} | {p_value} | {s.verdict} |")
    return lines


def run_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| project | seed | test % | difference to source | epochs | cap | train s | data sha256 | machine | "
             "finished | files | MLflow run |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ours, source = r["test_accuracy"], r.get("reported_accuracy")
        diff = "–" if source is None else f"{100 * (ours - source):+.2f}"
        run = r.get("mlflow_run_id") or ""
        link = f"[{run[:8]}]({ui_url(ui(r), r.get('mlflow_experiment_id', ''), run)})" if run else "–"
        if r.get("other_run"):
            link = f"⚠ {r['other_run']}"
        lines.append(f"| {r['project'].upper()} | {r.get('seed', '–')} | {_pct(ours)} | {diff} | {epochs(r)} | "
                     f"{r.get('epoch_cap') or '–'} | {r.get('train_seconds', '–')} | {r['data']['sha256'][:12]} | "
                     f"{machine(r)} | {(r.get('finished') or '–')[:10]} | {files(r)} | {link} |")
    return lines


def files(row: dict[str, Any]) -> str:
    """Links, relative to reports/leaderboard.md, to the run's published metrics and curves: what a clone has."""
    where = f"s{row['seed']}/{row['project']}"
    return f"[metrics](../metrics/{where}.json), [curves](../plots/{where}/learning_curves.png)"


def markdown(rows: list[dict[str, Any]], follows: dict[str, str | None] | None = None,
             descriptions: dict[str, str] | None = None) -> str:
    found = steps(rows, follows or {})
    lines = [
        "# Leaderboard", "",
        "Test accuracy in percent over each project's seeds: the mean, the sample standard deviation, the 95 % "
        "confidence interval of the mean (Student's t) and the range, beside the source's reported figure; each "
        "run's figure is of the weights of its kept epoch (the best on validation accuracy, or the last where a "
        "project has no validation split). The champion is the project's registered model version that is best "
        f"on validation, not on test. {provenance(rows)}", "",
        *project_table(rows), "",
    ]
    if found:
        lines += ["## Which steps were real", "",
                  "Each project against the one it follows (its config's `project.follows`): the difference of the "
                  "mean test accuracies, its 95 % confidence interval and p-value from Welch's t-test (unequal "
                  "variances, scipy), and the verdict: an improvement or a regression where the interval excludes 0, "
                  "otherwise not resolved with these seeds.", "", *step_table(found, descriptions or {}), ""]
    lines += ["## Every run", "",
              "MLflow links go to the run's tracking server, or for the local store to `mlflow ui "
              f"--backend-store-uri sqlite:///mlflow.db` on {UI}; they open where that store is (the machine that "
              "trained the run), not in a clone, which has the figures above and each run's published metrics and "
              "curves, linked under files.", "",
              *run_table(rows)]
    return "\n".join(lines) + "\n"


def figure(rows: list[dict[str, Any]]) -> Any:
    """Every seed as a point, each project's mean with its 95 % interval, the source's figure as a cross."""
    import matplotlib.pyplot as plt  # here, after cnnlab.run.plots has chosen the file-only Agg backend

    groups = by_project(rows)
    fig, ax = plt.subplots(figsize=(max(7, len(groups) * 0.8), 4.6))
    for x, runs in enumerate(groups.values()):
        values = accuracies(runs)
        summary = summarize(values)
        ax.scatter([x + 0.12] * len(values), values, s=14, color="tab:blue", alpha=0.6,
                   label="a seed" if x == 0 else None)
        error = None if summary.low is None else [[summary.mean - summary.low], [summary.high - summary.mean]]
        ax.errorbar([x], [summary.mean], yerr=error, fmt="o", color="tab:blue", capsize=4,
                    label="mean, 95 % CI" if x == 0 else None)
        source = runs[0].get("reported_accuracy")
        if source is not None:
            ax.scatter([x - 0.12], [100 * source], marker="x", color="tab:orange",
                       label="source" if x == 0 or "source" not in ax.get_legend_handles_labels()[1] else None)
    ax.set_xticks(range(len(groups)), [p.upper() for p in groups], rotation=30, ha="right")  # long names
    ax.set(ylabel="test accuracy %", title="cnnlab over seeds vs the source")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))  # outside: inside, it hid a low row's seeds
    ax.grid(axis="y", alpha=0.3)
    fig.text(0.01, 0.01, provenance(rows), fontsize=7, wrap=True)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


def projects_described(params: dict[str, Any]) -> tuple[dict[str, str | None], dict[str, str]]:
    """Which project each one follows, and what it changed (its description), from conf/."""
    follows, descriptions = {}, {}
    for project in params["projects"]:
        described = to_job(compose([f"project={project}", *run_overrides(params)])).project
        follows[project], descriptions[project] = described.follows, described.description
    return follows, descriptions


@one_line_errors
def main(argv: list[str] | None = None) -> None:
    run_own_code("cnnlab.report", sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m cnnlab.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    so_far = parser.add_mutually_exclusive_group()
    so_far.add_argument("--progress", action="store_true", help="print the projects published so far, write nothing")
    so_far.add_argument("--published", action="store_true",
                        help="write the leaderboard of the runs published so far (e.g. a clone's committed "
                             "metrics/ while a long run trains): the missing ones named, no champions")
    args = parser.parse_args(argv)
    params = read_params()
    partial = args.progress or args.published
    rows = load_rows(params["projects"], params["seeds"], Path("metrics"), Path("outputs"), missing_ok=partial)
    follows, descriptions = projects_described(params)
    done = {(r["project"], r["seed"]) for r in rows}
    waiting = [f"{p.upper()} seed {s}" for p in params["projects"] for s in params["seeds"] if (p, s) not in done]
    if not partial:  # the champions are in the registry of the store that trained every run
        from cnnlab.tracking.registry import champions  # imports MLflow: --progress and --published need none

        versions = champions(relocated(to_job(compose(run_overrides(params)))).tracking.uri, params["projects"])
        for row in rows:
            row["champion"] = versions.get(row["project"])
    text = markdown(rows, follows, descriptions) + (f"\nNot yet published: {', '.join(waiting)}.\n" if waiting else "")
    if args.progress:
        print(text)
        return
    out = Path("reports")
    out.mkdir(exist_ok=True)
    write_atomically(out / "leaderboard.md", lambda tmp: tmp.write_text(text))
    plots.save(figure(rows), out / "leaderboard.png")
    print((out / "leaderboard.md").read_text())


if __name__ == "__main__":
    main()
