"""Training progress as a user reads it: `epoch k/N` of the planned total, a bar over the epoch's batches and the
time left. cnnlab's loop (cnnlab.core.loop) calls `model.fit` once per epoch, so Keras' own display counts each call
as a whole training (`Epoch 3/3`); this callback is given the planned total and the epoch the job starts from (a
continued run starts after its last kept epoch) and counts across the calls.

On a terminal the line is redrawn as batches finish (at most ten times a second); elsewhere (a log file, DVC's
captured output) only each epoch's finished line is written. The time left is the epochs still planned times the
mean epoch time of this process: early stopping may end the run sooner, so it is an upper estimate.

It imports Keras: import it only once the backend is chosen (cnnlab.config.backend.use_backend), as cnnlab.job.steps
does."""

from __future__ import annotations

import sys
import time
from typing import TextIO

import keras

SHOWN = ("loss", "accuracy", "val_loss", "val_accuracy")
WIDTH = 20


def duration(seconds: float) -> str:
    """A span of time as a person says it: 41 s, 12 min, 1 h 20 min."""
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    hours, minutes = divmod(round(seconds / 60), 60)
    return f"{hours} h {minutes} min"


def bar(done: int, steps: int | None) -> str:
    filled = WIDTH if not steps else min(WIDTH, WIDTH * done // steps)
    return "━" * filled + "─" * (WIDTH - filled)


class EpochProgress(keras.callbacks.Callback):
    """`epoch k/N ━━━━━━──── b/B · ...`: one line per epoch of the planned `total`, the run continuing after `start`
    epochs already done; written to `stream` (standard output by default)."""

    def __init__(self, total: int, start: int = 0, stream: TextIO | None = None) -> None:
        super().__init__()
        self.total, self.start = total, start
        self.stream = stream or sys.stdout
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())
        self.spent: list[float] = []  # seconds of each epoch finished in this process
        self.epoch, self.began, self.drawn = start, 0.0, 0.0

    def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        self.epoch, self.began, self.drawn = epoch, time.monotonic(), 0.0
        if self.live:
            self._write(f"\r{self._head(0)}")

    def on_train_batch_end(self, batch: int, logs: dict[str, float] | None = None) -> None:
        if not self.live:
            return
        now = time.monotonic()
        if now - self.drawn < 0.1:
            return
        self.drawn = now
        steps = self.params.get("steps")
        done = batch + 1
        left = "" if not steps else f" · {duration((now - self.began) / done * (steps - done))} left in this epoch"
        self._write(f"\r{self._head(done)}{left}\033[K")

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        seconds = time.monotonic() - self.began
        self.spent.append(seconds)
        steps = self.params.get("steps")
        figures = " · ".join(f"{key} {logs[key]:.4f}" for key in SHOWN if logs and key in logs)
        remaining = self.total - (epoch + 1)
        if remaining > 0:
            mean = sum(self.spent) / len(self.spent)
            left = f"at most {remaining} epoch{'s' if remaining != 1 else ''} left, about {duration(mean * remaining)}"
        else:
            left = "the last planned epoch"
        line = f"{self._head(steps or 0)} · {duration(seconds)} · {figures}{' · ' if figures else ''}{left}"
        self._write(("\r" if self.live else "") + line + ("\033[K" if self.live else "") + "\n")

    def _head(self, done: int) -> str:
        steps = self.params.get("steps") if self.params else None
        count = f"{done}/{steps}" if steps else f"{done}"
        return f"epoch {self.epoch + 1}/{self.total} {bar(done, steps)} {count}"

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

