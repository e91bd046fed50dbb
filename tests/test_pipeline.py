"""The pipeline on tiny data in a temporary copy of the repository (never the user's data or store): the quick
look a new user is given (`dvc exp run --temp`, in a fresh clone: every project trained, the committed results left
as they are), then that experiment applied as the tiny pipeline the other tests edit and rebuild with `dvc repro`:
no-op reruns, an honest graph (what changes a model retrains it, nothing else does), DVC's metrics/plots/experiments
views, the MLflow UI in headless Chromium against the store the pipeline made; then, last, as they leave it edited,
more seeds and a new project on the same pipeline."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.conftest import ROOT
from tests.support import (
    ARTIFACTS,
    BROWSER_ARGS,
    QUICK_LOOK,
    chosen,
    conf_projects,
    find_chromium,
    git_copy,
    listing,
    mlflow_server,
    pipeline_projects,
    project_file,
    sh,
    stages_run,
)

pytestmark = pytest.mark.system
PROJECTS = pipeline_projects()  # the committed params.yaml's: the seed table, P11 two ways, P12
# a run's name starts with its project
NAMED = rf"(?:{'|'.join(map(re.escape, PROJECTS))}) test \d+\.\d% · tiny · 1 ep \(cap 1\) · [0-9a-f]{{6}}"


@dataclass(frozen=True)
class QuickLook:
    """A new user's fresh clone after the quick look, and what it showed: the command's output, `git status`
    right after it, the published files before and after it."""

    clone: Path
    output: subprocess.CompletedProcess[str]
    status: str
    published: dict[Path, bytes]
    after: dict[Path, bytes]
    runs: list  # the clone's MLflow runs right after it, before the module's other tests add theirs

    @property
    def name(self) -> str:
        """The experiment's name, as the command printed it (exactly one)."""
        (name,) = re.findall(r"Ran experiment\(s\): (\S+)", self.output.stdout)
        return name


@pytest.fixture(scope="module")
def quick_look(tmp_path_factory: pytest.TempPathFactory) -> QuickLook:
    """The quick look (README, docs/getting-started.md) run as a new user runs it, in a fresh clone of a git copy
    of this repository with params.yaml as committed (the reference table on CIFAR-10): it trains and reports every
    project on tiny data in DVC's temporary copy, tracked in the clone's store. The same fourteen trainings are the
    tiny pipeline the rest of the module works on (`repo`), so they are paid for once."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    listed = params["projects"]
    assert len(set(listed)) == len(listed) and set(listed) <= set(conf_projects()), "each a file of conf/project/"
    assert {p for p in conf_projects() if project_file(p)["project"].get("reported_accuracy") is not None} <= \
        set(listed), "every project with the source's figure"
    assert all(project_file(p)["project"].get("follows") in (None, *listed) for p in listed), "and every step"
    assert params["data"] == "cifar10", "the committed default is the real table"
    assert params["seeds"] == [42, 43, 44], "over three seeds"
    root = tmp_path_factory.mktemp("pipeline")
    origin = git_copy(root / "origin")
    clone = root / "cnnlab"
    sh(root, "git", "clone", "-q", str(origin), str(clone))
    published = {p: p.read_bytes() for p in [clone / "params.yaml", clone / "dvc.lock",
                                            *(clone / "reports").iterdir(), *(clone / "metrics").rglob("*.json")]}
    started = time.perf_counter()
    done = sh(clone, *shlex.split(QUICK_LOOK), timeout=None)  # fourteen trainings: on a busy machine no bound holds
    print(f"the quick look (tiny pipeline) took {time.perf_counter() - started:.0f}s")
    return QuickLook(clone, done, sh(clone, "git", "status", "--porcelain").stdout, published,
                     {p: p.read_bytes() for p in published}, mlflow_runs(clone))


@pytest.fixture(scope="module")
def repo(quick_look: QuickLook) -> Path:
    """The quick look's clone with its experiment applied (`dvc exp apply`: `data: tiny`, a one-epoch cap, seed 42)
    and committed: the tiny pipeline, every project trained once, that the tests below edit and rebuild."""
    repo = quick_look.clone
    sh(repo, "dvc", "exp", "apply", quick_look.name)
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "tiny pipeline")
    return repo


def mlflow_runs(repo: Path):
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    return client.search_runs([client.get_experiment_by_name("cnnlab").experiment_id])


def test_the_quick_look_leaves_the_committed_results_as_they_are(quick_look: QuickLook) -> None:
    """(Moved from tests/test_quicklook.py, where it ran the same thirteen trainings a second time.)"""
    done, runs = quick_look.output, quick_look.runs
    assert "have been applied" not in done.stdout + done.stderr
    assert quick_look.status == "", "nothing tracked changed, nothing new unignored"
    assert quick_look.after == quick_look.published
    assert sorted(r.data.tags["project"] for r in runs) == sorted(pipeline_projects()) and \
        {r.data.tags["data"] for r in runs} == {"tiny"}
    assert quick_look.name in sh(quick_look.clone, "dvc", "exp", "show", "--no-pager", "--csv").stdout, \
        "kept, to look at or apply"


def test_tiny_pipeline_builds_every_project_and_the_report(quick_look: QuickLook, repo: Path) -> None:
    assert stages_run(quick_look.output.stdout) == \
        {"fetch", "prepare", "compose", "report", *(f"train@{p}-42" for p in PROJECTS)}
    runs = mlflow_runs(repo)
    assert sorted(r.data.tags["project"] for r in runs) == sorted(PROJECTS)
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert {r.data.tags["dvc_stage"] for r in runs} == {f"train@{p}-42" for p in PROJECTS}
    for project in PROJECTS:
        metrics = json.loads((repo / "metrics" / "s42" / f"{project}.json").read_text())
        assert 0 <= metrics["test_accuracy"] <= 1 and metrics["epochs"] == 1
        published = json.loads((repo / "outputs" / "s42" / project / "run.json").read_text())
        assert published["mlflow_run_id"] in {r.info.run_id for r in runs}
        assert (repo / "outputs" / "s42" / project / "model.keras").exists()
        assert json.loads((repo / "runs" / project / published["mlflow_run_id"] / "metrics.json").read_text()) == \
            metrics, "the one test evaluation of the run, published"
    report = (repo / "reports" / "leaderboard.md").read_text()
    run_ids = {r.data.tags["project"]: r.info.run_id for r in runs}
    registry = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    for project in PROJECTS:
        assert f"| {project.upper()} |" in report and run_ids[project] in report
        champion = registry.get_model_version_by_alias(f"cnnlab-{project}", "champion")
        assert champion.run_id == run_ids[project], "each train stage registers its run"
        assert f"`models:/cnnlab-{project}@champion` = [version {champion.version}]" in report
    assert "| P11 | " in report and "| 82.86 |" in report
    assert (repo / "reports" / "leaderboard.png").stat().st_size > 0
    (info,) = (repo / "data" / "prepared" / "tiny").glob("*/info.json")
    sha = json.loads(info.read_text())["sha256"]
    device = runs[0].data.tags["device"]
    assert f"Data: tiny, generated by cnnlab (seed 0), prepared sha256 {sha[:12]}." in report
    machine = runs[0].data.tags["machine"]
    assert "Epochs capped at 1." in report and f"Machines: {machine}." in report
    for project in PROJECTS:
        metrics = json.loads((repo / "metrics" / "s42" / f"{project}.json").read_text())
        assert metrics["data"] == {"name": "tiny", "source": "generated by cnnlab (seed 0)", "md5": "-", "sha256": sha}
        assert metrics["epoch_cap"] == 1 and metrics["device"] == device
        assert metrics["reported_accuracy"] is None or metrics["reported_accuracy"] < 1, "fractions, one unit"
    assert {r.data.tags["epoch_cap"] for r in runs} == {"1"}
    assert all(re.fullmatch(NAMED, r.info.run_name) for r in runs), [r.info.run_name for r in runs]


def test_second_repro_does_nothing(repo: Path) -> None:
    done = sh(repo, "dvc", "repro")
    assert stages_run(done.stdout) == set(), done.stdout
    assert "up to date" in sh(repo, "dvc", "status").stdout


def test_dvc_metrics_plots_and_experiments_show_test_accuracy(repo: Path) -> None:
    shown = json.loads(sh(repo, "dvc", "metrics", "show", "--json").stdout)
    files = next(iter(shown.values()))["data"]
    assert {Path(f).stem for f in files} == set(PROJECTS)
    assert all("test_accuracy" in files[f]["data"] for f in files)
    sh(repo, "dvc", "plots", "show", "--out", "dvc_plots")
    html = (repo / "dvc_plots" / "index.html").read_text()
    assert "p05 seed 42 learning curves" in html and "p05 seed 42 test confusion matrix" in html
    table = sh(repo, "dvc", "exp", "show", "--no-pager", "--md").stdout
    for project in PROJECTS:
        assert f"metrics/s42/{project}.json:test_accuracy" in table


@pytest.mark.browser
def test_the_plots_page_shows_learning_curves_and_confusion_matrices_offline(repo: Path) -> None:
    """`dvc plots show` with every network request refused (Vega's scripts come from a CDN): the static images of
    the learning curves and confusion matrices still load and show."""
    chromium = find_chromium()
    from playwright.sync_api import sync_playwright

    sh(repo, "dvc", "plots", "show", "--out", "dvc_plots_offline")
    refused: list[str] = []

    def offline(route) -> None:
        if route.request.url.startswith("file:"):
            route.continue_()
        else:
            refused.append(route.request.url)
            route.abort()

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=BROWSER_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.route("**/*", offline)
        page.goto((repo / "dvc_plots_offline" / "index.html").as_uri())
        page.wait_for_load_state("load")
        for kind in ("learning_curves", "confusion_matrix"):
            images = page.locator(f"img[src*='{kind}']")
            assert images.count() == len(PROJECTS), kind
            for i in range(images.count()):
                assert images.nth(i).evaluate("img => img.complete && img.naturalWidth > 300"), (kind, i)
        curve = page.locator("img[src*='p05'][src*='learning_curves']").first
        curve.scroll_into_view_if_needed()
        assert curve.is_visible() and curve.bounding_box()["height"] > 200
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dvc_plots_offline.png"))
        browser.close()
    assert refused, "the page does ask the network for Vega: this test must run it offline"


def test_editing_a_description_retrains_nothing(repo: Path) -> None:
    project = repo / "conf" / "project" / "p05.yaml"
    project.write_text(project.read_text().replace('description: "', 'description: "edited: '))
    assert stages_run(sh(repo, "dvc", "repro").stdout) == {"compose", "report"}, "the report shows descriptions"
    assert "up to date" in sh(repo, "dvc", "status").stdout
    sh(repo, "git", "checkout", "conf")
    sh(repo, "dvc", "repro")


def test_a_comment_in_core_reuses_every_finished_run_and_a_changed_line_retrains(repo: Path) -> None:
    """DVC sees src/cnnlab/core change and reruns the train stages; the run key (cnnlab.config.code: the syntax a
    job reaches, without comments and docstrings) is the same for a comment, so a stage reuses its finished run
    (no new MLflow run); a changed line that every project runs gives new keys, and the stage trains again."""
    module = repo / "src" / "cnnlab" / "core" / "loop.py"
    original = module.read_text()
    module.write_text(original + "\n# an edit\n")
    status = json.loads(sh(repo, "dvc", "status", "--json").stdout)
    assert set(status) == {f"train@{p}-42" for p in PROJECTS}, "DVC's view: the code folder changed"
    before = len(mlflow_runs(repo))
    assert stages_run(sh(repo, "dvc", "repro", "-s", "train@p05-42").stdout) == {"train@p05-42"}
    assert len(mlflow_runs(repo)) == before, "the same key: the finished run is reused, nothing retrained"
    module.write_text(original.replace("default_rng([seed, epoch])", "default_rng([seed, epoch, 1])"))
    sh(repo, "dvc", "repro", "-s", "train@p05-42")
    assert len(mlflow_runs(repo)) == before + 1, "another epoch order: a new run"
    sh(repo, "git", "checkout", "src")
    sh(repo, "dvc", "repro", "-s", "train@p05-42")  # back to the first run (reused), as DVC's lock records it
    assert len(mlflow_runs(repo)) == before + 1
    assert "up to date" in sh(repo, "dvc", "status").stdout


def test_editing_the_report_tracking_registry_or_predict_retrains_nothing(repo: Path) -> None:
    """Only src/cnnlab/core decides a trained model: other edits keep every stage (but the report's own) and every
    run key, so a finished run is still found (no new MLflow run)."""
    report = repo / "src" / "cnnlab" / "report.py"
    report.write_text(report.read_text().replace('"# Leaderboard"', '"# Leaderboard "'))
    assert stages_run(sh(repo, "dvc", "repro").stdout) == {"report"}
    runs_before = len(mlflow_runs(repo))
    for name in ("tracking/runs.py", "tracking/registry.py", "predict.py", "job/steps.py"):
        module = repo / "src" / "cnnlab" / name
        module.write_text(module.read_text() + "\n# an edit\n")
    assert stages_run(sh(repo, "dvc", "repro").stdout) == set()
    sh(repo, "python", "-m", "cnnlab.pipeline", "train", "p05", "42")
    assert len(mlflow_runs(repo)) == runs_before, "the same key: the finished run is reused, nothing retrained"
    sh(repo, "git", "checkout", "src")
    sh(repo, "dvc", "repro")
    assert "up to date" in sh(repo, "dvc", "status").stdout


def png_width(path: Path) -> int:
    return int.from_bytes(path.read_bytes()[16:20], "big")  # the IHDR chunk's width, after the 8-byte signature


def test_editing_the_plotting_code_reuses_every_run_and_draws_its_published_figures_again(repo: Path) -> None:
    """A train stage depends on the code that writes its outputs: an edit to the plotting code reruns it, the
    finished run is reused (the key is the same: nothing retrained) and the published figures are drawn again from
    the run's CSVs by the edited code; the run's own files, logged with it, stay as they were."""
    module = repo / "src" / "cnnlab" / "run" / "plots.py"
    original = module.read_text()
    module.write_text(original.replace("fig.savefig(path, dpi=100)", "fig.savefig(path, dpi=50)"))
    status = json.loads(sh(repo, "dvc", "status", "--json").stdout)
    assert set(status) == {f"train@{p}-42" for p in PROJECTS} | {"report"}
    before = len(mlflow_runs(repo))
    assert stages_run(sh(repo, "dvc", "repro", "-s", "train@p03-42").stdout) == {"train@p03-42"}
    assert len(mlflow_runs(repo)) == before, "the same key: the finished run is reused, nothing retrained"
    run_id = json.loads((repo / "metrics" / "s42" / "p03.json").read_text())["run"]["mlflow_run_id"]
    for name in ("learning_curves.png", "confusion_matrix.png"):
        published, logged = repo / "plots" / "s42" / "p03" / name, repo / "runs" / "p03" / run_id / name
        assert png_width(published) * 2 == png_width(logged), f"{name} drawn again at half the resolution"
    sh(repo, "git", "checkout", "src")
    sh(repo, "dvc", "repro", "-s", "train@p03-42")
    assert png_width(repo / "plots" / "s42" / "p03" / "learning_curves.png") == \
        png_width(repo / "runs" / "p03" / run_id / "learning_curves.png")
    assert len(mlflow_runs(repo)) == before
    assert "up to date" in sh(repo, "dvc", "status").stdout


def test_the_backend_is_a_param_that_retrains_every_project(repo: Path) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    (repo / "params.yaml").write_text(yaml.safe_dump({**params, "backend": "jax"}))
    done = sh(repo, "dvc", "repro", "compose", env={"KERAS_BACKEND": "tensorflow"})
    assert "KERAS_BACKEND=tensorflow is ignored by the pipeline" in done.stderr
    status = json.loads(sh(repo, "dvc", "status", "--json").stdout)
    assert set(status) == {f"train@{p}-42" for p in PROJECTS}
    sh(repo, "git", "checkout", "params.yaml")
    sh(repo, "dvc", "repro", "compose")
    assert "up to date" in sh(repo, "dvc", "status").stdout


def test_editing_one_model_retrains_exactly_that_project(repo: Path) -> None:
    """In this copy of the checkout, with this checkout's environment (its editable install points here): the
    copy's config is trained and nothing of this checkout is written (cnnlab.run.checkout)."""
    model = repo / "conf" / "model" / "p05.yaml"
    model.write_text(model.read_text().replace("{type: Dense, units: 32,", "{type: Dense, units: 48,"))
    before, runs_before = listing(ROOT), len(mlflow_runs(repo))
    done = sh(repo, "dvc", "repro")
    assert listing(ROOT) == before
    assert stages_run(done.stdout) == {"compose", "train@p05-42", "report"}
    assert "| P05 | " in (repo / "reports" / "leaderboard.md").read_text()
    assert json.loads((repo / "metrics" / "s42" / "p05.json").read_text())["params"] != 171_458
    assert len(mlflow_runs(repo)) == runs_before + 1
    sh(repo, "git", "commit", "-qam", "p05 with a wider dense layer")


def test_a_shared_training_default_invalidates_the_projects_using_it(repo: Path) -> None:
    setup = repo / "conf" / "training" / "batch32.yaml"
    setup.write_text(setup.read_text().replace("batch_size: 32", "batch_size: 16"))
    sh(repo, "dvc", "repro", "compose")
    status = json.loads(sh(repo, "dvc", "status", "--json").stdout)
    using = {p for p in PROJECTS if chosen(p, "training") == "batch32"}  # P08-P11 and P11_TRANSFORMS as committed
    assert using, "some project of the table uses it"
    assert {s for s in status if s.startswith("train@")} == {f"train@{p}-42" for p in using}
    sh(repo, "git", "checkout", "conf")
    sh(repo, "dvc", "repro", "compose")
    assert "up to date" in sh(repo, "dvc", "status").stdout


def test_p12_trains_in_the_pipeline_under_an_epoch_cap(quick_look: QuickLook, repo: Path) -> None:
    """P12's warm-up is longer than the quick look's one-epoch cap: the cap shortens it too, so P12 stays valid and
    trains beside the other projects. (An experiment adding P12 to the projects did this before params.yaml had it.)"""
    assert "train@p12-42" in stages_run(quick_look.output.stdout)
    assert json.loads((repo / "metrics" / "s42" / "p12.json").read_text())["epochs"] == 1
    assert "| P12 |" in (repo / "reports" / "leaderboard.md").read_text()
    table = sh(repo, "dvc", "exp", "show", "--no-pager", "--md").stdout
    assert "metrics/s42/p12.json:test_accuracy" in table


@pytest.mark.browser
def test_mlflow_ui_shows_the_pipeline_runs_and_their_test_accuracy(repo: Path) -> None:
    """The runs table as it opens, no columns added: every run's name carries its data, cap and test accuracy."""
    chromium = find_chromium()
    from playwright.sync_api import sync_playwright

    with mlflow_server(f"sqlite:///{repo / 'mlflow.db'}", repo) as base:
        stored = mlflow_runs(repo)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=BROWSER_ARGS)
            page = browser.new_page(viewport={"width": 1800, "height": 1000})
            page.goto(f"{base}/#/experiments/{stored[0].info.experiment_id}/runs?workflowType=machine_learning")
            page.get_by_text("p11 test ", exact=False).first.wait_for(timeout=60_000)
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "mlflow_ui_runs.png"))
            cells = [page.locator(f"[role=row][row-index='{i}'] [col-id='attributes.`Run Name`']")
                     for i in range(len(stored))]
            for cell in cells:  # a cell shows its colour before its name: wait for the name (a loaded CI showed it)
                cell.filter(has_text=re.compile(r" test \d")).wait_for(timeout=60_000)
            names = [cell.inner_text() for cell in cells]
            browser.close()
        expected: dict[str, list[float]] = {}
        for r in stored:
            expected.setdefault(r.data.tags["project"], []).append(100 * r.data.metrics["test_accuracy"])
        shown = []
        trained = conf_projects()  # the pipeline's projects and those an experiment above added (P12)
        for name in names:  # the cell's text starts with the run's colour, then its name
            match = re.fullmatch(rf"({'|'.join(map(re.escape, trained))}) test (\d+\.\d)% · tiny · 1 ep \(cap 1\) · "
                                 r"[0-9a-f]{6}", name.strip().splitlines()[-1])
            assert match, name
            shown.append((match[1], float(match[2])))
        assert sorted(project for project, _ in shown) == sorted(r.data.tags["project"] for r in stored)
        for project, percent in shown:
            assert any(abs(percent - v) < 0.051 for v in expected[project]), (project, percent, expected[project])


def test_seeds_fan_out_and_a_new_seed_trains_only_its_stages(repo: Path) -> None:
    """Two projects over two seeds are four train stages and a report of means over n = 2; adding a third seed
    runs only its two stages (and the report), and removing it again trains nothing. On the tiny pipeline, whose
    seed-42 stages of P00 and P01 are trained already: only the seed-43 stages train. (Moved from a fresh copy of
    the repository, where all four trained; the last two tests of the module, as they leave the pipeline edited.)"""
    two = ["p00", "p01"]  # the other projects' runs in the store are the quick look's

    def runs_of_the_two() -> list:
        return [r for r in mlflow_runs(repo) if r.data.tags["project"] in two]

    params = yaml.safe_load((repo / "params.yaml").read_text())
    (repo / "params.yaml").write_text(yaml.safe_dump({**params, "projects": two, "seeds": [42, 43]}))
    done = sh(repo, "dvc", "repro", timeout=None)
    assert {s for s in stages_run(done.stdout) if s.startswith("train@")} == {"train@p00-43", "train@p01-43"}
    assert "up to date" in sh(repo, "dvc", "status").stdout, "all four train stages are built"
    report = (repo / "reports" / "leaderboard.md").read_text()
    assert re.search(r"\| P00 \| 2 \| \d+\.\d\d \| \d+\.\d\d \| \[", report), report
    assert re.search(r"\| P00 → P01 \| .* \| (improvement|regression|not resolved with 2 seeds) \|", report), report
    seeds = {r.data.tags["dvc_stage"]: r.data.params["training.seed"] for r in runs_of_the_two()}
    assert seeds == {"train@p00-42": "42", "train@p00-43": "43", "train@p01-42": "42", "train@p01-43": "43"}
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "two seeds")

    params = yaml.safe_load((repo / "params.yaml").read_text())
    (repo / "params.yaml").write_text(yaml.safe_dump({**params, "seeds": [42, 43, 44]}))
    assert stages_run(sh(repo, "dvc", "repro", timeout=None).stdout) == {"train@p00-44", "train@p01-44", "report"}
    assert "| P01 | 3 |" in (repo / "reports" / "leaderboard.md").read_text()
    (repo / "params.yaml").write_text(yaml.safe_dump({**params, "seeds": [42, 43]}))
    assert stages_run(sh(repo, "dvc", "repro").stdout) == {"report"}
    assert len(runs_of_the_two()) == 6


P13_MODEL = """# P13 (a test's project): P01 with 8 filters in its second conv.
name: p13
input_shape: [32, 32, 3]
num_classes: 10
layers:
  - {type: Conv2D, filters: 32, kernel_size: 3, padding: same, activation: relu}
  - {type: MaxPooling2D, pool_size: 2}
  - {type: Conv2D, filters: 8, kernel_size: 3, padding: same, activation: relu}
  - {type: Flatten}
  - {type: Dense, units: 32, activation: relu}
"""
P13_PROJECT = """# @package _global_
# P13 (a test's project): P01 with 8 filters in its second conv.
defaults:
  - override /model: p13
  - override /augmentation: none
  - override /training: default

project:
  id: p13
  reported_accuracy: null
  description: "P01 with 8 filters in its second conv"
  follows: p00
"""


def test_a_new_project_is_two_files_and_the_pipeline_and_the_report_take_it(repo: Path) -> None:
    """P13 added as docs/configs.md adds a project: conf/project/p13.yaml, conf/model/p13.yaml and its name in
    params.yaml's projects, no code edited. `dvc repro` trains it in a stage of its own and the leaderboard has its
    row and its step from the project it follows; the command line trains it too. On the tiny pipeline, whose P00
    stage is trained already (moved from a fresh copy of the repository, where P00 trained too)."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    (repo / "params.yaml").write_text(yaml.safe_dump({**params, "projects": ["p00", "p13"], "seeds": [42]}))
    (repo / "conf" / "model" / "p13.yaml").write_text(P13_MODEL)
    (repo / "conf" / "project" / "p13.yaml").write_text(P13_PROJECT)
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "P13")
    done = sh(repo, "dvc", "repro", timeout=None)
    assert {"train@p13-42", "report"} <= stages_run(done.stdout) <= {"compose", "train@p13-42", "report"}, done.stdout
    metrics = json.loads((repo / "metrics" / "s42" / "p13.json").read_text())
    assert metrics["epochs"] == 1 and 0 <= metrics["test_accuracy"] <= 1 and metrics["reported_accuracy"] is None
    conv = 3 * 3 * 3 * 32 + 32 + 3 * 3 * 32 * 8 + 8
    assert metrics["params"] == conv + 16 * 16 * 8 * 32 + 32 + 32 * 10 + 10 == 69_106, "conf/model/p13.yaml's model"
    report = (repo / "reports" / "leaderboard.md").read_text()
    assert re.search(r"^\| P13 \| 1 \| ", report, re.MULTILINE), report
    assert re.search(r"^\| P00 → P13 \| P01 with 8 filters in its second conv \| ", report, re.MULTILINE), report
    assert [r.data.tags["dvc_stage"] for r in mlflow_runs(repo) if r.data.tags["project"] == "p13"] == \
        ["train@p13-42"]
    assert "up to date" in sh(repo, "dvc", "status").stdout

    trained = sh(repo, "python", "-m", "cnnlab.train", "project=p13", "data=tiny", "training.epochs=1",
                 "training.seed=1", "tracking.log_model=false", "tracking.system_metrics=false")
    assert trained.returncode == 0
    (run,) = [r for r in mlflow_runs(repo) if "dvc_stage" not in r.data.tags and r.data.tags["project"] == "p13"]
    assert (run.data.tags["project"], run.data.params["training.seed"], run.info.status) == ("p13", "1", "FINISHED")
    assert json.loads((repo / "runs" / "p13" / run.info.run_id / "metrics.json").read_text())["epochs"] == 1
