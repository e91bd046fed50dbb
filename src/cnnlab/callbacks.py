"""Keras callbacks of cnnlab's own (imported only after the backend is chosen)."""

from __future__ import annotations

import keras
import mlflow.keras


class EpochLogger(mlflow.keras.MlflowCallback):
    """MLflow's Keras callback (per-epoch metrics, optimizer params, model summary) plus the learning rate."""

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        logs = dict(logs or {})
        logs.setdefault("learning_rate", float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))
        super().on_epoch_end(epoch, logs)
