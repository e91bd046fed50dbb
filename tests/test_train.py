"""Real training on tiny data, tracked in a real MLflow sqlite store, composed from the real config tree."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from cnnlab.evaluate import reevaluate
from cnnlab.train import train

pytestmark = pytest.mark.slow
EPOCH_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate")


@pytest.fixture
def trained(make_cfg, workdir: Path):
    cfg = make_cfg("project=p00", "training.epochs=4", "training.batch_size=64")
    return cfg, train(cfg)


def test_train_writes_outputs_and_a_complete_mlflow_run(trained, workdir: Path) -> None:
    cfg, metrics = trained
    out = workdir / "outputs" / "p00"
    assert sorted(p.name for p in out.iterdir()) == [
        "config.yaml", "confusion.csv", "confusion_matrix.png", "history.csv", "learning_curves.png",
        "metrics.json", "model.keras"]
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert metrics["epochs"] == 4 and metrics["params"] == 263_402
    assert metrics["test_accuracy"] > 0.5, "the tiny classes are learnable: P00 must beat chance (0.1) clearly"
    assert len((out / "history.csv").read_text().strip().splitlines()) == 1 + 4

    client = MlflowClient(cfg.tracking.uri)
    run = client.get_run(metrics["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.info.artifact_uri.startswith((workdir / "mlruns").as_uri()), "artifacts go beside the store"
    params, tags = run.data.params, run.data.tags
    assert params["model.layers.0.filters"] == "32" and params["model.layers.3.units"] == "32"
    assert params["training.batch_size"] == "64" and params["project.id"] == "p00"
    assert params["augmentation.layers"] == "[]"
    for key in ("project", "reported_accuracy", "git_commit", "data_sha256", "keras_backend", "device"):
        assert tags[key], key
    assert tags["reported_accuracy"] == "62.10" and tags["keras_backend"] == keras.backend.backend()
    for key in EPOCH_METRICS:
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [0, 1, 2, 3], key
    assert run.data.metrics["test_accuracy"] == pytest.approx(metrics["test_accuracy"])
    assert run.data.metrics["epochs_run"] == 4 and run.data.metrics["train_seconds"] > 0
    assert len([k for k in run.data.metrics if k.startswith("test_accuracy_")]) == 10
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "learning_curves.png", "confusion_matrix.png", "history.csv"} <= artifacts

    model_uri = f"models:/{run.outputs.model_outputs[0].model_id}"
    info = mlflow.models.get_model_info(model_uri)
    assert list(info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == [-1, 32, 32, 3]
    assert info.saved_input_example_info is not None
    images = np.random.default_rng(0).integers(0, 256, size=(5, 32, 32, 3)).astype("float32")
    logged = mlflow.keras.load_model(model_uri)
    saved = keras.saving.load_model(workdir / "outputs" / "p00" / "model.keras")
    np.testing.assert_allclose(logged.predict(images, verbose=0), saved.predict(images, verbose=0), atol=1e-6)


def test_reevaluate_reproduces_the_test_accuracy_without_training(trained, workdir: Path) -> None:
    cfg, metrics = trained
    result = reevaluate(cfg)
    assert result["test_accuracy"] == pytest.approx(metrics["test_accuracy"])
    assert json.loads((workdir / "metrics" / "p00.json").read_text())["epochs"] == 4
    assert (workdir / "plots" / "p00" / "confusion_matrix.png").stat().st_size > 0
    client = MlflowClient(cfg.tracking.uri)
    experiment = client.get_experiment_by_name(cfg.tracking.experiment).experiment_id
    assert len(client.search_runs([experiment])) == 1, "evaluation must not start a run"


def test_reevaluate_without_a_model_says_how_to_train(make_cfg) -> None:
    with pytest.raises(FileNotFoundError, match=r"no trained model for project 'p04'.*cnnlab.train project=p04"):
        reevaluate(make_cfg("project=p04"))


def test_a_finished_run_is_archived_or_skipped_never_overwritten(trained, make_cfg, workdir: Path) -> None:
    cfg, first = trained
    assert train(make_cfg("project=p00", "training.epochs=1", "on_finished=skip")) == first
    second = train(make_cfg("project=p00", "training.epochs=1"))
    archived = list((workdir / "outputs" / ".archive").iterdir())
    assert len(archived) == 1 and json.loads((archived[0] / "metrics.json").read_text()) == first
    assert second["epochs"] == 1 and second["mlflow_run_id"] != first["mlflow_run_id"]


@pytest.mark.parametrize("project", ["p08", "p11"])
def test_batch32_and_augmented_projects_train(make_cfg, workdir: Path, project: str) -> None:
    metrics = train(make_cfg(f"project={project}", "training.epochs=1"))
    assert metrics["epochs"] == 1 and 0 <= metrics["test_accuracy"] <= 1
    loaded = keras.saving.load_model(workdir / "outputs" / project / "model.keras")
    assert loaded.get_layer(project).count_params() == metrics["params"]


def test_p12_trains_one_epoch_on_tiny_data(make_cfg, workdir: Path) -> None:
    metrics = train(make_cfg("project=p12", "training.epochs=1", "training.optimizer.warmup_epochs=0",
                             "training.mixed_precision=false", "tracking.log_model=false"))
    assert metrics["epochs"] == 1 and metrics["params"] == 6_577_610
    run = MlflowClient(make_cfg().tracking.uri).get_run(metrics["mlflow_run_id"])
    assert run.data.params["training.optimizer.schedule"] == "warmup_cosine"
    assert run.data.params["augmentation.layers.1.type"] == "RandomPadShift"
