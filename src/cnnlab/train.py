"""`python -m cnnlab.train project=p04 [overrides]`: train one project, evaluate it once on the test set, keep
its files in `runs/<project>/<run id>/` and track everything in MLflow. With `-m` Hydra sweeps; a failing job is
recorded FAILED and the sweep goes on.

`train` reads as the steps it takes: check the config and the store, claim the run's state, reuse a finished
run of the same settings, load the data, then inside the MLflow run fit (resuming), evaluate, write, log and
place the results, and finally clear the state. Each step is a function the tests and the benchmark use.

Keras is imported only after the configured backend is applied, so this module imports it inside functions."""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import hydra
import numpy as np
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig
from optuna import TrialPruned

from cnnlab import faults, registry, results, study, tracking
from cnnlab.config import capped, use_backend, validate
from cnnlab.console import one_line_errors
from cnnlab.data import Dataset, DataSpec, data_md5, data_source, load
from cnnlab.runstate import RunState

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; Keras' TerminateOnNaN stopped the job."""


def device_name() -> str:
    """The devices Keras computes on, with the accelerator's model where the backend tells it (and the CPU's
    core count when it computes on the CPU alone)."""
    import keras

    devices = ", ".join(keras.distribution.list_devices())
    if devices.lower() == "cpu:0":
        return f"{os.cpu_count()}-core CPU (no GPU)"
    if keras.backend.backend() == "jax":
        import jax

        return f"{jax.devices()[0].device_kind} ({devices})"
    return devices


def fit_count(data: Dataset, validation_split: float) -> int:
    """How many training images are fitted on: the last `validation_split` of them are held out."""
    return len(data.x_train) - int(len(data.x_train) * validation_split)


def lineage(data: Dataset, validation_split: float) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The images and labels of each split the run uses, by MLflow's dataset contexts."""
    n_fit = fit_count(data, validation_split)
    splits = {"training": (data.x_train[:n_fit], data.y_train[:n_fit])}
    if n_fit < len(data.x_train):
        splits["validation"] = (data.x_train[n_fit:], data.y_train[n_fit:])
    return {**splits, "test": (data.x_test, data.y_test)}


def split(data: Dataset, validation_split: float) -> tuple[np.ndarray, np.ndarray, tuple | None]:
    """Training images and one-hot labels, and the last `validation_split` of them as validation data."""
    import keras

    n_fit = fit_count(data, validation_split)
    onehot = keras.utils.to_categorical(data.y_train, 10)
    validation = (data.x_train[n_fit:], onehot[n_fit:]) if n_fit < len(data.x_train) else None
    return data.x_train[:n_fit], onehot[:n_fit], validation


def make_callbacks(cfg: DictConfig, state: RunState, trial: Any | None = None) -> list[Any]:
    """The per-epoch journal, backup and MLflow logging (cnnlab.callbacks), NaN termination, early stopping, and
    in a search the report to the Optuna trial (after the epoch is kept and logged)."""
    import keras

    from cnnlab.callbacks import epoch_callbacks

    t = cfg.training
    callbacks = [*epoch_callbacks(state.journal, state.backup_dir), keras.callbacks.TerminateOnNaN()]
    if t.early_stopping.enabled:
        monitor = t.early_stopping.monitor if t.validation_split else "loss"
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor=monitor, patience=t.early_stopping.patience,
            restore_best_weights=t.early_stopping.restore_best_weights, verbose=1))
    return [*callbacks, *study.pruning_callbacks(cfg, trial)]


def fit(cfg: DictConfig, data: Dataset, state: RunState, run_id: str, trial: Any | None = None) -> Any:
    """Build, compile and train the project's model, continuing after the state's last backed-up epoch (the
    epochs the store missed are logged first); the trained model is kept in the state and returned. A search's
    pruner may stop it (optuna.TrialPruned)."""
    import keras
    import mlflow

    from cnnlab.fitting import build_trainable, fit_inputs

    t = cfg.training
    x_fit, y_fit, validation = split(data, t.validation_split)
    keras.utils.set_random_seed(t.seed)
    model, core = build_trainable(cfg, x_fit)
    mlflow.set_tag("params", str(core.count_params()))
    done = state.restore(model)
    tracking.replay_epochs(run_id, state.history(done))
    if done:
        log.info("%s: continuing after epoch %d of %d", cfg.project.id, done, t.epochs)
    inputs = fit_inputs(t, x_fit, y_fit)
    mlflow.set_tag("device_data", str("y" not in inputs).lower())
    try:
        losses = model.fit(**inputs, epochs=t.epochs, initial_epoch=done, validation_data=validation,
                           callbacks=make_callbacks(cfg, state, trial), verbose=2).history.get("loss", [])
    except TrialPruned:
        state.reset()  # the pruner ended this run: it is over, not interrupted, so nothing is resumed
        raise
    if losses and not np.isfinite(losses[-1]):
        state.reset()  # nothing worth resuming: a rerun of these settings starts afresh
        raise TrainingDiverged(f"{cfg.project.id}: the loss became {losses[-1]} in epoch {done + len(losses)}; try "
                               f"a lower training.optimizer.learning_rate (now {t.optimizer.learning_rate})")
    state.keep_trained(model)
    return model


def finished(cfg: DictConfig, experiment_id: str, state: RunState, trial: Any | None = None) -> dict[str, Any] | None:
    """With on_finished=skip: the metrics of a finished run of the same settings whose files are still here
    (published again with publish=true, and made the result of a search's trial); its leftover state is cleared.
    None when there is none."""
    if cfg.on_finished != "skip":
        return None
    run = tracking.finished_run(experiment_id, state.key)
    if run is None:
        return None
    folder = results.run_folder(cfg, run.info.run_id)
    if not (folder / "metrics.json").exists():
        log.warning("run %s has these settings but its files are not in %s: training again", run.info.run_id,
                    folder)
        return None
    log.info("%s with these settings already finished in MLflow run %s (%s): nothing to do "
             "(on_finished=new trains it again)", cfg.project.id, run.info.run_id, folder)
    state.clear()
    if cfg.publish:
        results.publish(cfg, folder)
    if cfg.registry.register:
        registry.register(cfg, run.info.run_id)  # a job killed before it registered the run does it now
    study.link_run(trial, run.info.run_id)
    metrics = json.loads((folder / "metrics.json").read_text())
    # judged on its history by this job's selection (the run may have been made under another one)
    return {**metrics, "selection": results.selection(cfg, results.read_history(folder / "history.csv"))}


def finish(cfg: DictConfig, model: Any, data: Dataset, state: RunState, run_id: str) -> dict[str, Any]:
    """Evaluate once on the test set, write the run's files, log them and the model (each once), and put the
    run's folder in place (and publish it with publish=true); returns the metrics."""
    import mlflow

    from cnnlab.evaluate import evaluate_model

    run = mlflow.get_run(run_id)
    evaluation = evaluate_model(model, data.x_test, data.y_test, data.class_names)
    history = state.history(state.epochs_done())
    tags = run.data.tags
    identity = {"mlflow_run_id": run_id, "mlflow_experiment_id": run.info.experiment_id,
                "mlflow_tracking_uri": str(cfg.tracking.uri), "key": state.key,
                **{key: tags.get(key) for key in ("device", "data", "data_source", "data_md5", "data_sha256")},
                "epoch_cap": cfg.max_epochs or None,
                "params": int(tags.get("params") or model.get_layer(str(cfg.model.name)).count_params())}
    staged = results.stage(cfg, run_id, state.trained_file, evaluation, data.class_names, identity, history)
    metrics = json.loads((staged / "metrics.json").read_text())
    chosen = metrics["selection"]
    best = {} if chosen["value"] is None else {f"best_{chosen['metric']}": chosen["value"]}
    tracking.log_results(run_id, {**best,
        "test_accuracy": metrics["test_accuracy"], "test_loss": metrics["test_loss"],
        "epochs_run": metrics["epochs"], "train_seconds": metrics["train_seconds"],
        **{f"test_accuracy_{name}": acc for name, acc in metrics["per_class_accuracy"].items()},
    }, staged, results.ARTIFACTS)
    tracking.name_with_result(run_id, cfg, state.key, metrics["test_accuracy"])
    if cfg.tracking.log_model:
        # uint8 pixels, as the data set has them: what serving and prediction are given (scaling is in the model)
        tracking.log_model_once(state, run_id, model, data.x_test[:2], data.class_names)
    faults.reach("before_publish")
    folder = results.place(cfg, run_id, staged)
    mlflow.set_tag("result_dir", str(folder))
    if cfg.publish:
        results.publish(cfg, folder)
    return metrics


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train one project (continuing an interrupted run of the same settings, or reusing a finished one),
    evaluate it, keep and track its results (and register its model with registry.register=true); returns its
    metrics."""
    use_backend(cfg.backend)
    validate(cfg)
    cfg = capped(cfg)
    from cnnlab.callbacks import signals_interrupt

    experiment_id = tracking.open_store(cfg)
    trial = study.job_trial(cfg)
    with RunState.claim(cfg) as state:
        done = finished(cfg, experiment_id, state, trial)
        if done is not None:
            return done
        spec = DataSpec.from_config(cfg)
        data = load(spec)
        tags = {"data": str(cfg.data.name), "data_source": data_source(cfg), "data_md5": str(data_md5(cfg) or "-"),
                "data_sha256": data.checksum, "epoch_cap": str(cfg.max_epochs or "none"), "device": device_name(),
                **study.run_tags(trial)}
        with tracking.job_run(cfg, state, experiment_id, tags) as run, signals_interrupt():
            study.link_run(trial, run.info.run_id)
            tracking.log_datasets(run.info.run_id, lineage(data, cfg.training.validation_split),
                                  spec.prepared_dir / "arrays.npz", spec.name, data.checksum)
            model = state.trained_model()
            if model is None:
                model = fit(cfg, data, state, run.info.run_id, trial)
            faults.reach("after_fit")
            metrics = finish(cfg, model, data, state, run.info.run_id)
        faults.reach("after_finish")
        if cfg.registry.register:
            registry.register(cfg, run.info.run_id)
        state.clear()
    log.info("%s: test accuracy %.4f after %d epochs in %.1fs; MLflow run %s, its files in %s%s",
             cfg.project.id, metrics["test_accuracy"], metrics["epochs"], metrics["train_seconds"], run.info.run_id,
             results.run_folder(cfg, run.info.run_id),
             f" (published to {cfg.paths.outputs}/{cfg.project.id})" if cfg.publish else
             f" ({cfg.paths.outputs}/{cfg.project.id}, the pipeline's, is only written by dvc repro)")
    return metrics


def selected_value(cfg: DictConfig, metrics: dict[str, Any]) -> float | None:
    """The job's value for Hydra (a sweep's or search's objective): the run's best validation `selection.metric`,
    never a test figure."""
    if metrics["selection"]["value"] is None:
        log.warning("%s had no validation data (training.validation_split=0): no value to choose it by",
                    cfg.project.id)
    return metrics["selection"]["value"]


@hydra.main(version_base="1.3", config_path="../../conf", config_name="config")
@one_line_errors
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns the run's best validation metric (see `selected_value`). In a sweep, a failed
    job is logged and recorded FAILED, and the sweep goes on; a pruned search trial's TrialPruned goes to the
    search sweeper, which tells Optuna."""
    try:
        metrics = train(cfg)
    except Exception as err:
        if HydraConfig.get().mode != RunMode.MULTIRUN or isinstance(err, TrialPruned):
            raise
        log.exception("job %s failed; the sweep goes on", cfg.project.id)
        if not getattr(err, "mlflow_run_id", None):
            tracking.log_rejected_job(cfg, err)
        return None
    return selected_value(cfg, metrics)


if __name__ == "__main__":
    main()
