"""Real training on tiny data, tracked in a real MLflow sqlite store, composed from the real config tree: what a
run writes and logs, re-evaluation, and what happens when the same settings run again."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from cnnlab.evaluate import reevaluate
from cnnlab.tracking import EPOCH_METRICS
from cnnlab.train import main, train

pytestmark = pytest.mark.slow


@pytest.fixture
def trained(make_cfg, workdir: Path):
    cfg = make_cfg("project=p00", "training.epochs=4", "training.batch_size=64")
    return cfg, train(cfg)


def test_train_writes_outputs_and_a_complete_mlflow_run(trained, workdir: Path) -> None:
    cfg, metrics = trained
    (out,) = (workdir / "runs" / "p00").iterdir()
    assert sorted(p.name for p in out.iterdir()) == [
        "config.yaml", "confusion.csv", "confusion_matrix.png", "history.csv", "learning_curves.png",
        "metrics.json", "model.keras", "run.json"]
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert metrics["epochs"] == 4 and metrics["params"] == 263_402
    assert metrics["test_accuracy"] > 0.5, "the tiny classes are learnable: P00 must beat chance (0.1) clearly"
    assert len((out / "history.csv").read_text().strip().splitlines()) == 1 + 4
    identity = json.loads((out / "run.json").read_text())
    assert identity["mlflow_run_id"] == out.name and identity["project"] == "p00"
    assert not (workdir / "outputs").exists() and not (workdir / "metrics").exists(), "only the pipeline publishes"

    client = MlflowClient(cfg.tracking.uri)
    run = client.get_run(out.name)
    assert run.info.status == "FINISHED"
    assert run.info.artifact_uri.startswith((workdir / "mlruns").as_uri()), "artifacts go beside the store"
    params, tags = run.data.params, run.data.tags
    assert params["model.layers.0.filters"] == "32" and params["model.layers.3.units"] == "32"
    assert params["training.batch_size"] == "64" and params["project"] == "p00"
    assert params["augmentation.layers"] == "[]" and params["data.name"] == "tiny"
    assert not [k for k in params if k.startswith(("paths.", "tracking.", "project.", "mirror."))], \
        "only what decides the model is a param"
    for key in ("project", "reported_accuracy", "description", "git_commit", "data_sha256", "keras_backend",
                "device", "cnnlab.key", "result_dir"):
        assert tags[key], key
    assert tags["reported_accuracy"] == "62.10" and tags["keras_backend"] == keras.backend.backend()
    for key in EPOCH_METRICS:
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [0, 1, 2, 3], key
    assert run.data.metrics["test_accuracy"] == pytest.approx(metrics["test_accuracy"])
    assert run.data.metrics["epochs_run"] == 4 and run.data.metrics["train_seconds"] > 0
    assert len([k for k in run.data.metrics if k.startswith("test_accuracy_")]) == 10
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "learning_curves.png", "confusion_matrix.png", "history.csv", "metrics.json"} <= artifacts

    model_uri = f"models:/{run.outputs.model_outputs[0].model_id}"
    info = mlflow.models.get_model_info(model_uri)
    assert list(info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == [-1, 32, 32, 3]
    assert info.saved_input_example_info is not None
    images = np.random.default_rng(0).integers(0, 256, size=(5, 32, 32, 3)).astype("float32")
    logged = mlflow.keras.load_model(model_uri)
    saved = keras.saving.load_model(out / "model.keras")
    np.testing.assert_allclose(logged.predict(images, verbose=0), saved.predict(images, verbose=0), atol=1e-6)


def test_a_job_returns_its_best_validation_value_never_a_test_figure(trained, make_cfg) -> None:
    cfg, metrics = trained
    client = MlflowClient(cfg.tracking.uri)
    (out,) = (Path(cfg.paths.runs) / "p00").iterdir()
    run = client.get_run(out.name)
    val_accuracy = [m.value for m in client.get_metric_history(run.info.run_id, "val_accuracy")]
    val_loss = [m.value for m in client.get_metric_history(run.info.run_id, "val_loss")]
    assert main(cfg) == pytest.approx(max(val_accuracy)) == pytest.approx(run.data.metrics["best_val_accuracy"])
    assert metrics["selection"] == {"metric": "val_accuracy", "direction": "maximize",
                                    "value": pytest.approx(max(val_accuracy)),
                                    "epoch": val_accuracy.index(max(val_accuracy))}
    by_loss = make_cfg("project=p00", "training.epochs=4", "training.batch_size=64", "selection.metric=val_loss",
                       "selection.direction=minimize")
    assert main(by_loss) == pytest.approx(min(val_loss)), "the same finished run, judged by another selection"
    assert main(by_loss) != pytest.approx(metrics["test_loss"])


def test_reevaluate_reproduces_the_test_accuracy_without_training(trained, make_cfg, workdir: Path) -> None:
    cfg, metrics = trained
    (out,) = (workdir / "runs" / "p00").iterdir()
    result = reevaluate(make_cfg("project=p00", f"evaluate.model={out / 'model.keras'}"), workdir / "evaluation")
    assert result["test_accuracy"] == pytest.approx(metrics["test_accuracy"])
    assert json.loads((workdir / "evaluation" / "metrics.json").read_text())["data"] == "tiny"
    assert (workdir / "evaluation" / "confusion_matrix.png").stat().st_size > 0
    client = MlflowClient(cfg.tracking.uri)
    experiment = client.get_experiment_by_name(cfg.tracking.experiment).experiment_id
    assert len(client.search_runs([experiment])) == 1, "evaluation must not start a run"


def test_reevaluate_without_a_model_says_how_to_get_one(make_cfg, workdir: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no trained model for project 'p04'.*dvc repro.*evaluate\.model="):
        reevaluate(make_cfg("project=p04"), workdir / "evaluation")


def test_the_same_settings_again_reuse_the_finished_run_unless_asked_for_a_new_one(trained, make_cfg,
                                                                                    workdir: Path) -> None:
    cfg, first = trained
    again = make_cfg("project=p00", "training.epochs=4", "training.batch_size=64",
                     "project.description=described otherwise")
    assert train(again) == first, "nothing that decides the model changed: the finished run is the result"
    assert len(list((workdir / "runs" / "p00").iterdir())) == 1
    second = train(make_cfg("project=p00", "training.epochs=4", "training.batch_size=64", "on_finished=new"))
    folders = {p.name: json.loads((p / "metrics.json").read_text()) for p in (workdir / "runs" / "p00").iterdir()}
    assert len(folders) == 2 and first in folders.values() and second in folders.values(), "none overwritten"
    other = train(make_cfg("project=p00", "training.epochs=1"))
    assert other["epochs"] == 1 and len(list((workdir / "runs" / "p00").iterdir())) == 3


@pytest.mark.parametrize("project", ["p08", "p11"])
def test_batch32_and_augmented_projects_train(make_cfg, workdir: Path, project: str) -> None:
    metrics = train(make_cfg(f"project={project}", "training.epochs=1"))
    assert metrics["epochs"] == 1 and 0 <= metrics["test_accuracy"] <= 1
    (out,) = (workdir / "runs" / project).iterdir()
    loaded = keras.saving.load_model(out / "model.keras")
    assert loaded.get_layer(project).count_params() == metrics["params"]


def test_p12_trains_one_epoch_on_tiny_data(make_cfg, workdir: Path) -> None:
    metrics = train(make_cfg("project=p12", "training.epochs=1", "training.optimizer.warmup_epochs=0",
                             "training.mixed_precision=false", "tracking.log_model=false"))
    assert metrics["epochs"] == 1 and metrics["params"] == 6_577_610
    (out,) = (workdir / "runs" / "p12").iterdir()
    run = MlflowClient(make_cfg().tracking.uri).get_run(out.name)
    assert run.data.params["training.optimizer.schedule"] == "warmup_cosine"
    assert run.data.params["augmentation.layers.1.type"] == "RandomPadShift"
