"""A project's seeds as one run in MLflow: the group run.

Every training run is tagged with its group (`cnnlab.group`: the hash of its settings without the seed), and each
group has one run whose metrics are the seeds' aggregate (`test_accuracy_mean`, `_std`, `_n`, `_min`, `_max`,
`_ci95_low`, `_ci95_high`, and the same of the kept epoch's validation metric), updated when a seed finishes,
each update logged at step n. The group runs live in an experiment of their own, `<experiment>-seeds`, one row per
project: its runs table and compare view show projects side by side as means with their spread, not single
draws, and the training experiment keeps one row per trained run (MLflow nests runs only within an experiment, so
a group run names its seeds' runs in its tag `seed_runs` and each seed run names its group in `cnnlab.group`).

Two seeds finishing at once may both create a group run: the earliest created stays, the others are deleted."""

from __future__ import annotations

from typing import Any

from mlflow.tracking import MlflowClient

from cnnlab.config.schema import TrackingConfig
from cnnlab.tracking.store import ensure_experiment

GROUP_TAG, ROLE_TAG = "cnnlab.group", "cnnlab.role"


def experiment_name(tracking: TrackingConfig) -> str:
    return f"{tracking.experiment}-seeds"


def seed_runs(experiment_id: str, group: str) -> list[Any]:
    """The group's finished seed runs that were evaluated, the newest of each seed."""
    found = MlflowClient().search_runs(
        [experiment_id], filter_string=f"tags.`{GROUP_TAG}` = '{group}' and attributes.status = 'FINISHED' "
                                       "and metrics.test_accuracy >= 0", order_by=["attributes.start_time DESC"])
    newest: dict[str, Any] = {}
    for run in found:
        newest.setdefault(run.data.tags.get("seed", run.info.run_id), run)
    return list(newest.values())


def _group_runs(client: MlflowClient, experiment_id: str, group: str) -> list[Any]:
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{GROUP_TAG}` = '{group}' "
                                                              f"and tags.`{ROLE_TAG}` = 'group'")
    return sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id))


def group_run(experiment_id: str, group: str, project: str) -> str:
    """The group's run id, created (FINISHED: it holds figures, it trains nothing) if there is none."""
    client = MlflowClient()
    existing = _group_runs(client, experiment_id, group)
    if existing:
        return existing[0].info.run_id
    created = client.create_run(experiment_id, tags={GROUP_TAG: group, ROLE_TAG: "group", "project": project},
                                run_name=f"{project} · seeds")
    client.set_terminated(created.info.run_id, "FINISHED")
    winner = _group_runs(client, experiment_id, group)[0].info.run_id
    if winner != created.info.run_id:  # another job created one first
        client.delete_run(created.info.run_id)
    return winner


def update_group(tracking: TrackingConfig, group: str, project: str, metrics: dict[str, float], name: str,
                 seeds: list[Any]) -> str:
    """Log the seeds' aggregate `metrics` to the group's run (at step n) in `<experiment>-seeds`, name it and say
    which seeds and runs it holds; returns its id."""
    client = MlflowClient()
    run_id = group_run(ensure_experiment(tracking.uri, experiment_name(tracking)), group, project)
    step = int(metrics.get("test_accuracy_n", len(seeds)))
    for key, value in metrics.items():
        client.log_metric(run_id, key, value, step=step)
    ordered = sorted(seeds, key=lambda r: int(r.data.tags.get("seed", "0")))
    client.set_tag(run_id, "seeds", " ".join(r.data.tags.get("seed", "?") for r in ordered))
    client.set_tag(run_id, "seed_runs", " ".join(r.info.run_id for r in ordered))
    client.set_tag(run_id, "machines", "; ".join(sorted({r.data.tags.get("machine", "not recorded") for r in seeds})))
    client.update_run(run_id, name=name)
    return run_id
