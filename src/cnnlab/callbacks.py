"""Keras callbacks of cnnlab's own (imported only after the backend is chosen)."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager

import keras
import mlflow


class EpochLogger(keras.callbacks.Callback):
    """Each epoch's metrics and learning rate to the active MLflow run, synchronously: a run killed later still
    has every epoch that finished (MLflow's own Keras callback logs asynchronously)."""

    def on_train_begin(self, logs: dict[str, float] | None = None) -> None:
        lines: list[str] = []
        self.model.summary(print_fn=lambda line, *args, **kwargs: lines.append(line))
        mlflow.log_text("\n".join(lines), "model_summary.txt")

    def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        metrics = {key: float(value) for key, value in (logs or {}).items()}
        metrics.setdefault("learning_rate", float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))
        metrics["epoch_seconds"] = time.perf_counter() - self.started
        mlflow.log_metrics(metrics, step=epoch, synchronous=True)


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
