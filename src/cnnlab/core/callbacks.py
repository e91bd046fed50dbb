"""Keras callbacks of the training loop (imported once the backend is chosen)."""

from __future__ import annotations

import time
from typing import Any

import keras


class EpochStats(keras.callbacks.Callback):
    """Adds the learning rate and the epoch's wall time to the epoch's logs, for the callbacks after it."""

    def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        if logs is not None:
            logs.setdefault("learning_rate", float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))
            logs["epoch_seconds"] = time.perf_counter() - self.started


class ContinuedEarlyStopping(keras.callbacks.EarlyStopping):
    """Keras' EarlyStopping whose counters (`state()`) live on across one-epoch fit calls and across a resume;
    Keras' own resets them at every fit. It never restores weights: the loop keeps the selection's best epoch."""

    STATE = ("wait", "best", "best_epoch", "stopped_epoch")

    def __init__(self, state: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(restore_best_weights=False, **kwargs)
        super().on_train_begin()
        for key, value in state.items():
            setattr(self, key, value)

    def on_train_begin(self, logs: dict[str, float] | None = None) -> None:
        pass

    def state(self) -> dict[str, Any]:
        return {key: None if getattr(self, key) is None else float(getattr(self, key)) if key == "best"
                else int(getattr(self, key)) for key in self.STATE}
