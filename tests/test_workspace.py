"""cnnlab.run.checkout: in a DVC temporary copy (DVC_ROOT names another folder), a relative sqlite store, runs/ and
checkpoints/ resolve against the user's repository, and its conf/local/ is read; elsewhere nothing changes."""

from __future__ import annotations

from pathlib import Path

import pytest

from cnnlab.run.checkout import config_overrides, relocated
from tests.conftest import compose_config


@pytest.fixture
def copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The user's repository, with this process working in a temporary copy of it as DVC's queue does."""
    root = tmp_path / "repo"
    copy = root / ".dvc" / "tmp" / "exps" / "tmp1234"
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)
    monkeypatch.setenv("DVC_ROOT", str(root))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return root


def test_a_copy_tracks_in_the_repositorys_store_and_folders(copy: Path) -> None:
    cfg = relocated(compose_config())
    assert cfg.tracking.uri == f"sqlite:///{copy / 'mlflow.db'}"
    assert (cfg.paths.runs, cfg.paths.checkpoints) == (str(copy / "runs"), str(copy / "checkpoints"))
    assert (cfg.paths.outputs, cfg.paths.metrics, cfg.paths.data) == ("outputs", "metrics", "data"), \
        "what DVC collects from the copy stays in it"


def test_a_copy_reads_the_repositorys_conf_local(copy: Path) -> None:
    (copy / "conf" / "local").mkdir(parents=True)
    (copy / "conf" / "local" / "default.yaml").write_text("# @package _global_\ntracking:\n  experiment: mine\n")
    assert compose_config(*config_overrides()).tracking.experiment == "mine"


def test_absolute_and_remote_locations_are_kept(copy: Path) -> None:
    cfg = relocated(compose_config("tracking.uri=http://127.0.0.1:5000", "paths.runs=/scratch/runs"))
    assert (cfg.tracking.uri, cfg.paths.runs) == ("http://127.0.0.1:5000", "/scratch/runs")


def test_outside_a_copy_nothing_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))  # `dvc repro` in the repository itself
    cfg = compose_config()
    assert relocated(cfg) is cfg and config_overrides() == []
    monkeypatch.delenv("DVC_ROOT")  # the command line
    assert relocated(cfg) is cfg and config_overrides() == []
