"""The model registry on a real sqlite store with real trainings: two trainings of one project give two
versions of `cnnlab-<project>`, `champion` on the one with the better recorded validation value; a job killed
right after it registered (failpoint `registered`) and run again adds no version; the report links the
champion."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.entities.model_registry import ModelVersion, ModelVersionTag
from mlflow.tracking import MlflowClient

from cnnlab import report
from cnnlab.config.schema import Direction
from cnnlab.job.steps import train
from cnnlab.tracking import registry
from tests.conftest import job_env, run_job

COMMON = ("project=p00", "training.batch_size=64", "registry.register=true")


def _versions(*values: float | None) -> list[ModelVersion]:
    return [ModelVersion("cnnlab-p00", str(i + 1), 0, tags=[ModelVersionTag("best_val_accuracy", str(v))])
            for i, v in enumerate(values)]


def test_the_best_version_respects_direction_and_a_missing_value() -> None:
    def best(direction: Direction, *values: float | None) -> str:
        return registry.best_version(None, _versions(*values), "val_accuracy", direction).version

    assert best(Direction.maximize, 0.5, 0.6) == "2" and best(Direction.maximize, 0.6, 0.5) == "1"
    assert best(Direction.minimize, 0.5, 0.4) == "2" and best(Direction.minimize, 0.5, 0.5) == "1", "the earlier"
    assert best(Direction.maximize, None, 0.1) == "2", "a champion without a value loses to one with"
    assert best(Direction.maximize, 0.1, None) == "1"


def test_register_is_refused_without_a_logged_model(make_checked_cfg) -> None:
    from cnnlab.config.errors import ConfigError
    from tests.support import validate

    with pytest.raises(ConfigError, match="registry.register"):
        validate(make_checked_cfg(*COMMON, "tracking.log_model=false"))


@pytest.mark.system
def test_two_trainings_two_versions_champion_on_the_better_one(make_cfg, workdir: Path,
                                                               tiny_data_dir: Path) -> None:
    short = make_cfg(*COMMON, "training.epochs=1")
    train(short)
    client = MlflowClient(short.tracking.uri)
    (first,) = client.search_model_versions("name = 'cnnlab-p00'")
    assert client.get_model_version_by_alias("cnnlab-p00", "champion").version == first.version
    registry._ensure_registered(client, "cnnlab-p00")  # what a process that lost the creation race does: no error

    longer = (*COMMON, "training.epochs=4")
    killed = run_job("cnnlab.train", workdir, tiny_data_dir, *longer, env=job_env(CNNLAB_FAILPOINT="registered"))
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert len(client.search_model_versions("name = 'cnnlab-p00'")) == 2
    assert client.get_model_version_by_alias("cnnlab-p00", "champion").version == first.version, \
        "killed before the champion was decided"
    train(make_cfg(*longer))  # the same job again, in this process

    versions = client.search_model_versions("name = 'cnnlab-p00'")
    assert len(versions) == 2, "the rerun found its version instead of registering the run again"
    assert len({v.run_id for v in versions}) == 2
    value = {v.version: client.get_run(v.run_id).data.metrics["best_val_accuracy"] for v in versions}
    assert len(set(value.values())) == 2, f"the two trainings must differ on validation to be told apart: {value}"
    better = max(value, key=value.get)
    assert client.get_model_version_by_alias("cnnlab-p00", "champion").version == better
    for version in versions:
        (logged,) = client.get_run(version.run_id).outputs.model_outputs
        assert version.source == f"models:/{logged.model_id}", "the version is the run's logged model"

    published = json.loads((Path(short.paths.runs) / "p00" / versions[0].run_id / "metrics.json").read_text())
    table = report.markdown([{"project": "p00", **published,
                              "champion": registry.champions(short.tracking.uri, ["p00"])["p00"]}])
    assert f"`models:/cnnlab-p00@champion` = [version {better}]" in table
