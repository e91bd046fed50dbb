"""A project's seeds in MLflow (cnnlab.tracking.groups): each seed's run tagged with its group, and one group run
per project, in `<experiment>-seeds`, whose metrics are the seeds' mean and spread, the same numbers as the report
(cnnlab.report, cnnlab.run.seeds) computes from the published figures."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from cnnlab.job.steps import train
from cnnlab.report import accuracies, load_rows
from cnnlab.run.seeds import summarize

pytestmark = pytest.mark.integration


def test_the_group_run_holds_the_seeds_mean_and_spread_as_the_report_does(make_cfg, workdir: Path) -> None:
    for seed in (42, 43, 44):
        published = (f"paths.{k}={workdir / k / f's{seed}'}" for k in ("outputs", "metrics", "plots"))
        cfg = make_cfg("project=p00", "training.epochs=1", "training.batch_size=64", f"training.seed={seed}",
                       "publish=true", *published)
        train(cfg)
        if seed == 42:
            train(cfg)  # a reuse updates the group, and counts the seed once
    client = MlflowClient(cfg.tracking.uri)
    seeds_experiment = client.get_experiment_by_name(f"{cfg.tracking.experiment}-seeds")
    (group,) = client.search_runs([seeds_experiment.experiment_id])
    trained = client.search_runs([client.get_experiment_by_name(cfg.tracking.experiment).experiment_id])
    assert len(trained) == 3 and {r.data.tags["cnnlab.group"] for r in trained} == {group.data.tags["cnnlab.group"]}
    assert sorted(group.data.tags["seed_runs"].split()) == sorted(r.info.run_id for r in trained)
    assert group.data.tags["seeds"] == "42 43 44" and group.info.status == "FINISHED"

    summary = summarize(accuracies(load_rows(["p00"], [42, 43, 44], workdir / "metrics", workdir / "outputs")))
    figures = group.data.metrics
    assert figures["test_accuracy_n"] == 3
    for name, value in (("mean", summary.mean), ("std", summary.std), ("min", summary.min), ("max", summary.max),
                        ("ci95_low", summary.low), ("ci95_high", summary.high)):
        assert 100 * figures[f"test_accuracy_{name}"] == pytest.approx(value, abs=1e-9), name
    assert figures["best_val_accuracy_n"] == 3
    assert [m.step for m in client.get_metric_history(group.info.run_id, "test_accuracy_n")] == [1, 1, 2, 3]
    assert group.info.run_name == f"p00 · mean of 3 seeds test {figures['test_accuracy_mean']:.1%}"
