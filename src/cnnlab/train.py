"""`python -m cnnlab.train project=p04 [overrides]`: train one project, evaluate it once on the test set,
write `outputs/<project>/` and track everything in MLflow. With `-m` Hydra sweeps projects; a failing job is
recorded FAILED and the sweep goes on.

Keras is imported only after the configured backend is applied, so this module imports it inside functions."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from cnnlab import tracking
from cnnlab.config import use_backend, validate

log = logging.getLogger(__name__)
EPOCH_METRICS = ["loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "epoch_seconds"]


def _make_room(cfg: DictConfig, out_dir: Path) -> bool:
    """False when a finished run must be kept as it is (on_finished=skip); otherwise move it aside."""
    if not out_dir.exists():
        return True
    if cfg.on_finished == "skip" and (out_dir / "metrics.json").is_file():
        log.info("%s holds a finished run and on_finished=skip: nothing to do", out_dir)
        return False
    archive = out_dir.parent / ".archive" / f"{out_dir.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    archive.parent.mkdir(parents=True, exist_ok=True)
    os.replace(out_dir, archive)
    log.info("moved the previous %s to %s (on_finished=new)", out_dir, archive)
    return True


def device_name() -> str:
    """The devices Keras computes on, with the accelerator's model where the backend tells it."""
    import keras

    devices = ", ".join(keras.distribution.list_devices())
    if keras.backend.backend() == "jax":
        import jax

        return f"{jax.devices()[0].device_kind} ({devices})"
    return devices


def make_optimizer(opt: DictConfig, steps_per_epoch: int, epochs: int) -> Any:
    """The configured Keras optimizer; `warmup_cosine` ramps linearly from 10% of the peak learning rate over
    `warmup_epochs`, then decays it along a cosine to 0 by the last step (keras.optimizers.schedules.CosineDecay)."""
    import keras

    settings = {k: v for k, v in OmegaConf.to_container(opt, resolve=True).items()
                if k not in ("name", "schedule", "warmup_epochs")}
    if opt.schedule == "warmup_cosine":
        warmup = opt.warmup_epochs * steps_per_epoch
        settings["learning_rate"] = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=opt.learning_rate / 10, decay_steps=max(1, epochs * steps_per_epoch - warmup),
            warmup_target=opt.learning_rate, warmup_steps=warmup)
    return keras.optimizers.get({"class_name": opt.name, "config": settings})


def use_precision(t: DictConfig) -> None:
    """The global dtype policy for models built next: mixed_bfloat16 when training.mixed_precision is on."""
    import keras

    keras.mixed_precision.set_global_policy("mixed_bfloat16" if t.mixed_precision else "float32")


def compile_model(model: Any, t: DictConfig, examples: int) -> None:
    """Compile for training on `examples` images per epoch (the learning-rate schedule counts steps)."""
    import keras

    model.compile(
        optimizer=make_optimizer(t.optimizer, -(-examples // t.batch_size), t.epochs),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=t.label_smoothing),
        metrics=["accuracy"],
        steps_per_execution=t.steps_per_execution,
        jit_compile=t.jit_compile,
    )


def fit_inputs(t: DictConfig, x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """model.fit's data arguments: batches cut on the accelerator (cnnlab.feed) when training.device_data
    says so (`auto`: on JAX), otherwise the NumPy arrays, shuffled by Keras."""
    import keras

    if t.device_data is True or (t.device_data == "auto" and keras.backend.backend() == "jax"):
        from cnnlab.feed import DeviceBatches

        return {"x": DeviceBatches(x, y, t.batch_size, t.seed)}
    return {"x": x, "y": y, "batch_size": t.batch_size, "shuffle": True}


def make_callbacks(cfg: DictConfig, backup_dir: Path) -> list[Any]:
    """Backup for resuming, then per-epoch MLflow logging (so a logged epoch is always backed up), a best-model
    checkpoint outside outputs/, NaN termination and early stopping."""
    import keras

    from cnnlab.callbacks import EpochLogger

    t = cfg.training
    checkpoint = Path(cfg.paths.checkpoints) / str(cfg.project.id) / "best.keras"
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    monitor = t.early_stopping.monitor if t.validation_split else "loss"
    callbacks = [
        keras.callbacks.BackupAndRestore(str(backup_dir)),
        EpochLogger(),
        keras.callbacks.ModelCheckpoint(str(checkpoint), monitor=monitor, save_best_only=True),
        keras.callbacks.TerminateOnNaN(),
    ]
    if t.early_stopping.enabled:
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor=monitor, patience=t.early_stopping.patience,
            restore_best_weights=t.early_stopping.restore_best_weights, verbose=1))
    return callbacks


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; Keras' TerminateOnNaN stopped the job."""


def train(cfg: DictConfig) -> dict[str, Any] | None:
    """Train (resuming an interrupted run of the same config), evaluate, write outputs and log one project;
    returns its metrics."""
    use_backend(cfg.backend)
    validate(cfg)
    project = str(cfg.project.id)
    out_dir = Path(cfg.paths.outputs) / project
    if not _make_room(cfg, out_dir):
        return json.loads((out_dir / "metrics.json").read_text())

    import keras
    import mlflow

    from cnnlab.augment import assemble, build_augmentation
    from cnnlab.callbacks import signals_interrupt
    from cnnlab.data import DataSpec, load
    from cnnlab.models import build_model
    from cnnlab.resume import ResumeState, config_hash

    t = cfg.training
    data = load(DataSpec.from_config(cfg))
    keras.utils.set_random_seed(t.seed)
    use_precision(t)
    n_fit = len(data.x_train) - int(len(data.x_train) * t.validation_split)
    x_fit, y_fit = data.x_train[:n_fit], keras.utils.to_categorical(data.y_train[:n_fit], 10)
    validation = None
    if n_fit < len(data.x_train):
        validation = (data.x_train[n_fit:], keras.utils.to_categorical(data.y_train[n_fit:], 10))

    tracking.configure(cfg)
    state = ResumeState(Path(cfg.paths.checkpoints) / project, config_hash(cfg))
    tags = {"data_sha256": data.checksum, "data": str(cfg.data.name), "device": device_name()}
    if os.environ.get("DVC_STAGE"):
        tags["dvc_stage"] = os.environ["DVC_STAGE"]
    with tracking.job_run(cfg, tags, run_id=state.run_to_resume()) as run, signals_interrupt():
        state.remember(run.info.run_id)
        mlflow.log_params(tracking.flatten(cfg))
        core = build_model(cfg.model)
        mlflow.set_tag("params", str(core.count_params()))
        model = assemble(core, build_augmentation(cfg.augmentation.layers, x_fit / np.float32(255), t.seed))
        compile_model(model, t, len(x_fit))
        inputs = fit_inputs(t, x_fit, y_fit)
        mlflow.set_tag("device_data", str("y" not in inputs).lower())
        fitted = model.fit(**inputs, epochs=t.epochs, validation_data=validation,
                           callbacks=make_callbacks(cfg, state.backup_dir), verbose=2).history
        if fitted.get("loss") and not np.isfinite(fitted["loss"][-1]):
            raise TrainingDiverged(f"{project}: the loss became {fitted['loss'][-1]} in epoch {len(fitted['loss'])} "
                                   f"of this session; try a lower training.optimizer.learning_rate "
                                   f"(now {t.optimizer.learning_rate})")
        history = tracking.metric_history(run.info.run_id, EPOCH_METRICS)
        metrics = {"project": project, "epochs": len(history["loss"]),
                   "train_seconds": round(sum(history.get("epoch_seconds", [])), 2), "params": core.count_params(),
                   "reported_accuracy": cfg.project.reported_accuracy, "device": tags["device"],
                   "mlflow_run_id": run.info.run_id, "mlflow_experiment_id": run.info.experiment_id}
        tmp = out_dir.parent / f".{project}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            metrics = finish(cfg, model, data, history, tmp, metrics)
            os.replace(tmp, out_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        state.clear()
    log.info("%s: test accuracy %.4f after %d epochs in %.1fs -> %s", project, metrics["test_accuracy"],
             metrics["epochs"], metrics["train_seconds"], out_dir)
    return metrics


def write_history(history: dict[str, list[float]], path: Path) -> None:
    """history.csv: one row per epoch, as Keras' CSVLogger writes it, from the whole (possibly resumed) run."""
    keys = sorted(history)
    rows = ["epoch," + ",".join(keys)]
    rows += [",".join([str(i)] + [repr(history[k][i]) for k in keys]) for i in range(len(history["loss"]))]
    path.write_text("\n".join(rows) + "\n")


def finish(cfg: DictConfig, model: Any, data: Any, history: dict[str, list[float]], folder: Path,
           metrics: dict[str, Any]) -> dict[str, Any]:
    """Evaluate once on the test set, write the run's files into `folder`, log metrics, artifacts and the
    model; returns `metrics` completed with the test results."""
    import keras
    import mlflow

    from cnnlab import plots
    from cnnlab.evaluate import evaluate_model, write_confusion

    project = str(cfg.project.id)
    result = evaluate_model(model, data.x_test, data.y_test, data.class_names)
    metrics = {**metrics, **{k: result[k] for k in ("test_accuracy", "test_loss", "per_class_accuracy")}}
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    model.save(folder / "model.keras")
    write_history(history, folder / "history.csv")
    OmegaConf.save(cfg, folder / "config.yaml", resolve=True)
    plots.save(plots.learning_curves(history, project.upper()), folder / "learning_curves.png")
    write_confusion(np.asarray(result["confusion_matrix"]), data.class_names, folder,
                    f"{project.upper()} test confusion matrix")
    mlflow.log_metrics({
        "test_accuracy": result["test_accuracy"], "test_loss": result["test_loss"],
        "epochs_run": metrics["epochs"], "train_seconds": metrics["train_seconds"],
        **{f"test_accuracy_{name}": acc for name, acc in result["per_class_accuracy"].items()},
    })
    for name in ("config.yaml", "metrics.json", "learning_curves.png", "confusion_matrix.png", "history.csv"):
        mlflow.log_artifact(str(folder / name))
    if cfg.tracking.log_model:
        tracking.log_keras_model(model, data.x_test[:2].astype("float32"),
                                 [f"keras=={keras.__version__}", f"mlflow=={mlflow.__version__}"])
    return metrics


@hydra.main(version_base="1.3", config_path="../../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point. In a sweep, a failed job is logged and recorded FAILED, and the sweep goes on."""
    try:
        metrics = train(cfg)
    except Exception as err:
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            raise
        log.exception("job %s failed; the sweep goes on", cfg.project.id)
        if not getattr(err, "mlflow_run_id", None):
            tracking.log_rejected_job(cfg, err)
        return None
    return metrics["test_accuracy"] if metrics else None


if __name__ == "__main__":
    main()
