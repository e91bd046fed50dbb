"""Shared fixtures: configs composed with Hydra's compose API from the real conf/ tree, pointed at a
temporary folder (data, outputs, MLflow sqlite store), on the tiny synthetic data set."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


def compose_config(*overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data folder for the session: the tiny archive is generated and prepared once."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture
def workdir(tmp_path: Path, tiny_data_dir: Path) -> Path:
    return tmp_path


@pytest.fixture
def make_cfg(workdir: Path, tiny_data_dir: Path) -> Callable[..., DictConfig]:
    """compose(overrides) on tiny data with outputs and a fresh MLflow store in this test's folder."""

    def make(*overrides: str) -> DictConfig:
        return compose_config(
            "data=tiny",
            f"paths.data={tiny_data_dir}",
            f"paths.outputs={workdir / 'outputs'}",
            f"paths.checkpoints={workdir / 'checkpoints'}",
            f"paths.metrics={workdir / 'metrics'}",
            f"paths.plots={workdir / 'plots'}",
            f"tracking.uri=sqlite:///{workdir / 'mlflow.db'}",
            *overrides,
        )

    return make
