"""Keras callbacks of cnnlab's own (imported only after the backend is chosen). In `fit` they run in the order
of `epoch_callbacks`: journal row, backup, then MLflow, which is what makes a resumed run log every epoch once
(see cnnlab.runstate)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import keras
import mlflow
import numpy as np

from cnnlab import faults


class EpochStats(keras.callbacks.Callback):
    """Adds the learning rate and the epoch's wall time to the epoch's logs, for the callbacks after it."""

    def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        if logs is not None:
            logs.setdefault("learning_rate", float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))
            logs["epoch_seconds"] = time.perf_counter() - self.started


class EpochBackup(keras.callbacks.Callback):
    """After every epoch, model and optimizer state as `epoch-<n>.weights.h5`, saved under a temporary name and
    renamed, so a kill at any instant leaves the last complete epoch (Keras' BackupAndRestore overwrites its one
    file in place, which a kill can leave half-written). A diverged epoch is not worth resuming from: skipped."""

    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.folder = folder

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        if not np.isfinite((logs or {}).get("loss", 0.0)):
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        target = self.folder / f"epoch-{epoch + 1:04d}.weights.h5"
        partial = self.folder / f".epoch-{epoch + 1:04d}.partial.weights.h5"
        self.model.save_weights(partial)
        os.replace(partial, target)
        for old in self.folder.glob("epoch-*.weights.h5"):
            if old != target:
                old.unlink()


class Failpoints(keras.callbacks.Callback):
    """The `mid_epoch:<e>` and `after_backup:<e>` failpoints (cnnlab.faults)."""

    def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        self.epoch = epoch

    def on_train_batch_end(self, batch: int, logs: dict[str, float] | None = None) -> None:
        if batch == 0:
            faults.reach(f"mid_epoch:{self.epoch}")

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        faults.reach(f"after_backup:{epoch}")


class EpochLogger(keras.callbacks.Callback):
    """Each epoch's metrics to the active MLflow run, synchronously (MLflow's own Keras callback logs
    asynchronously, so a kill could lose epochs that the backup already holds)."""

    def on_train_begin(self, logs: dict[str, float] | None = None) -> None:
        lines: list[str] = []
        self.model.summary(print_fn=lambda line, *args, **kwargs: lines.append(line))
        mlflow.log_text("\n".join(lines), "model_summary.txt")

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        mlflow.log_metrics({key: float(value) for key, value in (logs or {}).items()}, step=epoch, synchronous=True)


def epoch_callbacks(journal: Path, backup: Path) -> list[Any]:
    """Per-epoch bookkeeping in its required order: stats, journal (Keras' CSVLogger), backup, MLflow."""
    return [EpochStats(), keras.callbacks.CSVLogger(str(journal), append=True), EpochBackup(backup), Failpoints(),
            EpochLogger()]


class Interrupted(KeyboardInterrupt):
    """Training was stopped by a signal (SIGINT or SIGTERM)."""


@contextmanager
def signals_interrupt() -> Iterator[None]:
    """Turn SIGINT (Ctrl-C) and SIGTERM into an exception that names the signal, so both end the run cleanly
    (SIGTERM would otherwise kill Python without any cleanup)."""

    def stop(signum: int, frame: object) -> None:
        raise Interrupted(f"stopped by {signal.Signals(signum).name}")

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
