"""cnnlab's MLflow experiment opens on its runs table: the store tags it as model development
(`mlflow.experimentKind`), new or made before, and the links cnnlab gives to the UI (`ui_url`: the leaderboard's)
open the runs table in headless Chromium. MLflow 3.17's UI takes its view from a global GenAI / Model training
switch, GenAI unless the URL or the browser's last choice says otherwise, and not from that tag: a plain link to
the experiment opens a GenAI overview of traces (checked by hand with 3.17.2, tagged or not)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from cnnlab.tracking.store import EXPERIMENT_KIND, MODEL_DEVELOPMENT, open_store, ui_url
from tests.conftest import answer, free_port, wait_for
from tests.test_pipeline import ARTIFACTS, BROWSER_ARGS, _chromium


def test_a_new_experiment_and_one_made_before_are_tagged_as_model_development(make_cfg, workdir: Path) -> None:
    tracking = make_cfg().tracking
    client = MlflowClient(tracking.uri)
    made_before = client.create_experiment(tracking.experiment)  # untagged, as cnnlab made them before
    assert EXPERIMENT_KIND not in client.get_experiment(made_before).tags
    assert open_store(tracking) == made_before
    assert client.get_experiment(made_before).tags[EXPERIMENT_KIND] == MODEL_DEVELOPMENT
    fresh = make_cfg(f"tracking.uri=sqlite:///{workdir / 'fresh.db'}").tracking
    assert MlflowClient(fresh.uri).get_experiment(open_store(fresh)).tags[EXPERIMENT_KIND] == MODEL_DEVELOPMENT


@pytest.mark.system
@pytest.mark.browser
def test_cnnlabs_link_opens_the_experiment_on_its_runs_table(make_cfg, workdir: Path) -> None:
    """The experiment's link as cnnlab writes it shows the runs table with the run's name (screenshot in
    test-artifacts/)."""
    chromium = _chromium()
    from playwright.sync_api import sync_playwright

    tracking = make_cfg().tracking
    experiment_id = open_store(tracking)
    client = MlflowClient(tracking.uri)
    run = client.create_run(experiment_id, run_name="p00 test 61.2% · quick look")
    client.log_metric(run.info.run_id, "test_accuracy", 0.612)
    client.set_terminated(run.info.run_id)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", tracking.uri,
                               "--host", "127.0.0.1", "--port", str(port)],
                              cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)  # its own process group: the server and its workers
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: answer(f"{base}/health") == b"OK", "mlflow server")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=BROWSER_ARGS)
            page = browser.new_page(viewport={"width": 1600, "height": 900})
            page.goto(ui_url(base, experiment_id))
            cell = page.locator("[role=row][row-index='0'] [col-id='attributes.`Run Name`']")
            try:  # the run's name in the runs table's first row, once the table has loaded it
                cell.get_by_text("p00 test 61.2% · quick look", exact=True).wait_for(timeout=90_000)
            finally:
                ARTIFACTS.mkdir(exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / "mlflow_ui_experiment.png"))
            assert "/runs" in page.url and "overview" not in page.url, page.url
            browser.close()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:  # a loaded machine: its workers slow to stop
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
