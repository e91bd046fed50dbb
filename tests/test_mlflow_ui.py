"""cnnlab's MLflow experiment in the MLflow UI: the store tags it as model development (`mlflow.experimentKind`),
new or made before; the links cnnlab gives (`ui_url`: the leaderboard's) open its runs table; and a user who opens
the UI's root and clicks the experiment lands where docs/tracking.md says, in headless Chromium.

What MLflow 3.17's UI opens on a click is decided in the browser, by a global GenAI / Model training switch:
the URL's `workflowType`, else the choice stored in the browser's localStorage (`mlflow.workflowType_v1`, written
only when the user flips the sidebar's switch), else GenAI. The experiment's tag is not read for it (the OSS
build derives an experiment's kind from that switch), no server setting changes it, and the experiment list's
links carry no `workflowType`: in a browser that never chose, a click on cnnlab opens a GenAI overview of
traces. docs/tracking.md gives the click path that opens the runs table: flip the switch to Model training once
per browser (the evidence, file by file in MLflow's bundle, is in that page)."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from cnnlab.tracking.store import EXPERIMENT_KIND, MODEL_DEVELOPMENT, open_store, ui_url
from tests.support import ARTIFACTS, BROWSER_ARGS, find_chromium, mlflow_server

RUN_NAME = "p00 test 61.2% · quick look"
STORED_CHOICE = "mlflow.workflowType_v1"  # MLflow's localStorage key of the switch: `${key}_v${version}`


def test_a_new_experiment_and_one_made_before_are_tagged_as_model_development(make_cfg, workdir: Path,
                                                                              migrated_store: Path) -> None:
    tracking = make_cfg().tracking
    client = MlflowClient(tracking.uri)
    made_before = client.create_experiment(tracking.experiment)  # untagged, as cnnlab made them before
    assert EXPERIMENT_KIND not in client.get_experiment(made_before).tags
    assert open_store(tracking) == made_before
    assert client.get_experiment(made_before).tags[EXPERIMENT_KIND] == MODEL_DEVELOPMENT
    shutil.copy(migrated_store, workdir / "fresh.db")  # a store without the experiment
    fresh = make_cfg(f"tracking.uri=sqlite:///{workdir / 'fresh.db'}").tracking
    assert MlflowClient(fresh.uri).get_experiment(open_store(fresh)).tags[EXPERIMENT_KIND] == MODEL_DEVELOPMENT


@contextmanager
def mlflow_ui(make_cfg, workdir: Path) -> Iterator[tuple[str, str]]:
    """(the UI's root URL, the experiment's id): cnnlab's experiment with one finished run, served by `mlflow
    server` on a free port."""
    tracking = make_cfg().tracking
    experiment_id = open_store(tracking)
    client = MlflowClient(tracking.uri)
    run = client.create_run(experiment_id, run_name=RUN_NAME)
    client.log_metric(run.info.run_id, "test_accuracy", 0.612)
    client.set_terminated(run.info.run_id)
    with mlflow_server(tracking.uri, workdir) as base:
        yield base, experiment_id


def shows_the_runs_table(page, screenshot: str) -> None:
    """The page is the experiment's runs table, with the run's name in its first row once loaded (screenshot in
    test-artifacts/ either way)."""
    cell = page.locator("[role=row][row-index='0'] [col-id='attributes.`Run Name`']")
    try:
        cell.get_by_text(RUN_NAME, exact=True).wait_for(timeout=90_000)
    finally:
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / screenshot))
    assert "/runs" in page.url and "overview" not in page.url, page.url


@pytest.mark.system
@pytest.mark.browser
def test_cnnlabs_link_opens_the_experiment_on_its_runs_table(make_cfg, workdir: Path) -> None:
    """The experiment's link as cnnlab writes it shows the runs table with the run's name (screenshot in
    test-artifacts/)."""
    chromium = find_chromium()
    from playwright.sync_api import sync_playwright

    with mlflow_ui(make_cfg, workdir) as (base, experiment_id), sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=BROWSER_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 900})
        page.goto(ui_url(base, experiment_id))
        shows_the_runs_table(page, "mlflow_ui_experiment.png")
        browser.close()


@pytest.mark.system
@pytest.mark.browser
def test_a_user_clicking_the_experiment_from_the_root_lands_where_the_docs_say(make_cfg, workdir: Path) -> None:
    """docs/tracking.md's click path from http://127.0.0.1:5000, no `workflowType` in any URL: a browser that never
    chose opens cnnlab on MLflow's GenAI overview; flipping the sidebar's switch to Model training, then clicking
    cnnlab, opens its runs table, and the browser keeps that choice for its next pages (screenshots in
    test-artifacts/: mlflow_ui_plain_click.png, mlflow_ui_model_training.png, mlflow_ui_model_training_later.png)."""
    chromium = find_chromium()
    from playwright.sync_api import sync_playwright

    with mlflow_ui(make_cfg, workdir) as (base, experiment_id), sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=BROWSER_ARGS)
        experiment_page = re.compile(rf"#/experiments/{experiment_id}/(overview|runs|traces)")

        contexts = [browser.new_context(viewport={"width": 1600, "height": 900}) for _ in range(2)]
        for context in contexts:
            context.set_default_timeout(90_000)  # a loaded machine: the UI's first load can take long
        fresh = contexts[0].new_page()  # a browser that never chose
        fresh.goto(f"{base}/")
        fresh.get_by_role("link", name="cnnlab", exact=True).click()  # the home page's Recent Experiments
        try:
            fresh.wait_for_url(experiment_page, timeout=90_000)
            assert "/overview" in fresh.url, (
                f"{fresh.url}: MLflow no longer opens a GenAI overview on a plain click in a browser that never "
                "chose; docs/tracking.md's click path (and README's) can drop the switch, and this test its first part")
            fresh.get_by_text("Usage", exact=True).first.wait_for(timeout=90_000)  # the overview's first tab
        finally:
            ARTIFACTS.mkdir(exist_ok=True)
            fresh.screenshot(path=str(ARTIFACTS / "mlflow_ui_plain_click.png"))
        assert fresh.evaluate(f"localStorage.getItem('{STORED_CHOICE}')") is None

        page = contexts[1].new_page()
        page.goto(f"{base}/")
        page.get_by_role("button", name="Model training", exact=True).click()  # the switch atop the sidebar
        page.wait_for_function(f"localStorage.getItem('{STORED_CHOICE}') === '\"machine_learning\"'")
        page.get_by_role("link", name="cnnlab", exact=True).click()
        shows_the_runs_table(page, "mlflow_ui_model_training.png")

        later = contexts[1].new_page()  # another tab of the same browser, through the Experiments list this time
        later.goto(f"{base}/")
        later.get_by_role("link", name="Experiments", exact=True).click()
        later.get_by_role("link", name="cnnlab", exact=True).click()
        shows_the_runs_table(later, "mlflow_ui_model_training_later.png")
        browser.close()
