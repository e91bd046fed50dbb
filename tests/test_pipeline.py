"""`dvc repro` on tiny data in a temporary copy of the repository (never the user's data or store): the
whole pipeline, no-op reruns, an honest graph (what changes a model retrains it, nothing else does), DVC's
metrics/plots/experiments views, and the MLflow UI in headless Chromium against the store the pipeline made."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.conftest import ROOT, job_env

pytestmark = pytest.mark.slow
PROJECTS = [f"p{i:02d}" for i in range(12)]
ARTIFACTS = ROOT / "test-artifacts"


def sh(repo: Path, *cmd: str, check: bool = True, timeout: int = 900,
       env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    extra = env or {}
    env = job_env(PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                  PYTHONPATH=str(repo / "src"), DVC_NO_ANALYTICS="1",
                  GIT_AUTHOR_NAME="cnnlab tests", GIT_AUTHOR_EMAIL="tests@cnnlab.invalid",
                  GIT_COMMITTER_NAME="cnnlab tests", GIT_COMMITTER_EMAIL="tests@cnnlab.invalid")
    env.pop("KERAS_BACKEND", None)  # the pipeline's backend is params.yaml's
    env.update(extra)
    done = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout[-4000:]}\n"
                             f"{done.stderr[-4000:]}")
    return done


def stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git copy of this repository's files with `data: tiny` and a one-epoch cap, after one `dvc repro`."""
    repo = tmp_path_factory.mktemp("pipeline") / "cnnlab"
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, repo / name)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    assert params["projects"] == PROJECTS and params["data"] == "cifar10", "the committed default is the real table"
    (repo / "params.yaml").write_text(yaml.safe_dump({**params, "data": "tiny", "max_epochs": 1}))
    sh(repo, "git", "init", "-q")
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "copy")
    started = time.perf_counter()
    done = sh(repo, "dvc", "repro")
    print(f"tiny pipeline: dvc repro took {time.perf_counter() - started:.0f}s")
    assert stages_run(done.stdout) == {"fetch", "prepare", "compose", "report", *(f"train@{p}" for p in PROJECTS)}
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "tiny pipeline")
    return repo


def mlflow_runs(repo: Path):
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    return client.search_runs([client.get_experiment_by_name("cnnlab").experiment_id])


def test_tiny_pipeline_builds_every_project_and_the_report(repo: Path) -> None:
    runs = mlflow_runs(repo)
    assert sorted(r.data.tags["project"] for r in runs) == PROJECTS
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert {r.data.tags["dvc_stage"] for r in runs} == {f"train@{p}" for p in PROJECTS}
    for project in PROJECTS:
        metrics = json.loads((repo / "metrics" / f"{project}.json").read_text())
        assert 0 <= metrics["test_accuracy"] <= 1 and metrics["epochs"] == 1
        published = json.loads((repo / "outputs" / project / "run.json").read_text())
        assert published["mlflow_run_id"] in {r.info.run_id for r in runs}
        assert (repo / "outputs" / project / "model.keras").exists()
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
    assert "p05 learning curves" in html and "p05 test confusion matrix" in html
    table = sh(repo, "dvc", "exp", "show", "--no-pager", "--md").stdout
    for project in PROJECTS:
        assert f"metrics/{project}.json:test_accuracy" in table


def test_editing_a_description_retrains_nothing(repo: Path) -> None:
    project = repo / "conf" / "project" / "p05.yaml"
    project.write_text(project.read_text().replace('description: "', 'description: "edited: '))
    assert stages_run(sh(repo, "dvc", "repro").stdout) == {"compose"}
    assert "up to date" in sh(repo, "dvc", "status").stdout
    sh(repo, "git", "checkout", "conf")
    sh(repo, "dvc", "repro")


def test_editing_any_module_retrains_every_project_and_only_that(repo: Path) -> None:
    module = repo / "src" / "cnnlab" / "feed.py"
    module.write_text(module.read_text() + "\n# an edit\n")
    status = json.loads(sh(repo, "dvc", "status", "--json").stdout)
    assert set(status) == {f"train@{p}" for p in PROJECTS}
    sh(repo, "git", "checkout", "src")
    assert "up to date" in sh(repo, "dvc", "status").stdout


def test_the_backend_is_a_param_that_retrains_every_project(repo: Path) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    (repo / "params.yaml").write_text(yaml.safe_dump({**params, "backend": "jax"}))
    done = sh(repo, "dvc", "repro", "compose", env={"KERAS_BACKEND": "tensorflow"})
    assert "KERAS_BACKEND=tensorflow is ignored by the pipeline" in done.stderr
    status = json.loads(sh(repo, "dvc", "status", "--json").stdout)
    assert set(status) == {f"train@{p}" for p in PROJECTS}
    sh(repo, "git", "checkout", "params.yaml")
    sh(repo, "dvc", "repro", "compose")
    assert "up to date" in sh(repo, "dvc", "status").stdout


def test_editing_one_model_retrains_exactly_that_project(repo: Path) -> None:
    model = repo / "conf" / "model" / "p05.yaml"
    model.write_text(model.read_text().replace("{type: Dense, units: 32,", "{type: Dense, units: 48,"))
    done = sh(repo, "dvc", "repro")
    assert stages_run(done.stdout) == {"compose", "train@p05", "report"}
    assert "| P05 | " in (repo / "reports" / "leaderboard.md").read_text()
    assert json.loads((repo / "metrics" / "p05.json").read_text())["params"] != 171_458
    assert len(mlflow_runs(repo)) == len(PROJECTS) + 1
    sh(repo, "git", "commit", "-qam", "p05 with a wider dense layer")


def test_a_shared_training_default_invalidates_the_projects_using_it(repo: Path) -> None:
    setup = repo / "conf" / "training" / "batch32.yaml"
    setup.write_text(setup.read_text().replace("batch_size: 32", "batch_size: 16"))
    sh(repo, "dvc", "repro", "compose")
    status = json.loads(sh(repo, "dvc", "status", "--json").stdout)
    assert {s for s in status if s.startswith("train@")} == {"train@p08", "train@p09", "train@p10", "train@p11"}
    sh(repo, "git", "checkout", "conf")
    sh(repo, "dvc", "repro", "compose")
    assert "up to date" in sh(repo, "dvc", "status").stdout


def test_an_experiment_with_p12_and_an_epoch_cap_runs(repo: Path) -> None:
    """P12's warm-up is longer than the cap: the cap shortens it too, so every project stays valid."""
    done = sh(repo, "dvc", "exp", "run", "-S", "max_epochs=1", "-S", "projects=[p00,p12]")
    assert {"train@p12", "report"} <= stages_run(done.stdout) <= {"compose", "train@p00", "train@p12", "report"}
    assert json.loads((repo / "metrics" / "p12.json").read_text())["epochs"] == 1
    assert "| P12 |" in (repo / "reports" / "leaderboard.md").read_text()
    table = sh(repo, "dvc", "exp", "show", "--no-pager", "--md").stdout
    assert "metrics/p12.json:test_accuracy" in table
    sh(repo, "git", "checkout", "params.yaml", "dvc.lock", "reports")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.browser
def test_mlflow_ui_shows_the_pipeline_runs_and_their_test_accuracy(repo: Path) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("CI must run the browser test: install Debian's chromium (see .ci/run)")
        pytest.skip("no chromium on this machine")
    from playwright.sync_api import sync_playwright

    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{repo / 'mlflow.db'}",
         "--host", "127.0.0.1", "--port", str(port)],
        cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(120):
            try:
                if urllib.request.urlopen(f"{base}/health", timeout=1).read() == b"OK":
                    break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("mlflow server did not become healthy")
        stored = mlflow_runs(repo)
        expected: dict[str, list[float]] = {}
        for r in stored:
            expected.setdefault(r.data.tags["project"], []).append(r.data.metrics["test_accuracy"])
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=[
                "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync"])
            page = browser.new_page(viewport={"width": 1800, "height": 1000})
            page.goto(f"{base}/#/experiments/{stored[0].info.experiment_id}/runs?workflowType=machine_learning")
            page.get_by_text("p11", exact=True).first.wait_for(timeout=60_000)
            assistant = page.get_by_role("button", name="Close", exact=True)
            if assistant.count():  # MLflow 3's assistant panel covers the right-hand columns
                assistant.first.click()
            page.get_by_role("button", name="Columns", exact=True).click()
            page.get_by_text("test_accuracy", exact=True).first.click()
            page.keyboard.press("Escape")
            page.locator("[role=columnheader]", has_text="test_accuracy").first.wait_for(timeout=30_000)
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "mlflow_ui_runs.png"))
            rows = [(page.locator(f"[role=row][row-index='{i}'] [col-id='attributes.`Run Name`']").inner_text(),
                     page.locator(f"[role=row][row-index='{i}'] [col-id='metrics.`test_accuracy`']").inner_text())
                    for i in range(len(stored))]
            browser.close()
        shown = [(name.split()[-1], float(value)) for name, value in rows]
        assert sorted(project for project, _ in shown) == sorted(r.data.tags["project"] for r in stored)
        for project, accuracy in shown:
            assert any(abs(accuracy - v) < 1e-3 for v in expected[project]), (project, accuracy, expected[project])
    finally:
        server.terminate()
        server.wait(timeout=30)
