"""A training's checkpoint: the state `cnnlab.core.loop.train` continues from after a kill, kept by the job that
owns the run (cnnlab.run.state). How it is stored does not decide the trained numbers, so it lives outside
cnnlab.core and changing it changes no run key."""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

from cnnlab.core.loop import Progress, restore_seeds
from cnnlab.run.files import PARTIAL, atomic_write, remove, write_atomically

BACKUP = re.compile(r"epoch-(\d+)\.weights\.h5")


class Checkpoint:
    """A training's state after its epochs, in a folder only its own job writes: per epoch n,
    `epoch-<n>.json` (the Progress) and `epoch-<n>.weights.h5` (weights and optimizer state), each written under a
    temporary name and renamed, the weights last: an epoch counts once its weights file is there. The newest epoch
    and the best epoch by the selection metric are kept; older files are removed."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _weights(self, epochs: int) -> Path:
        return self.folder / f"epoch-{epochs:04d}.weights.h5"

    def _progress(self, epochs: int) -> Path:
        return self.folder / f"epoch-{epochs:04d}.json"

    def latest(self) -> int:
        """Epochs whose state is complete: the newest epoch with both files (0 when there is none)."""
        found = [int(m.group(1)) for p in self.folder.glob("epoch-*.weights.h5") if (m := BACKUP.fullmatch(p.name))]
        return max((n for n in found if self._progress(n).exists()), default=0)

    def progress(self) -> Progress:
        done = self.latest()
        return Progress() if not done else Progress(**json.loads(self._progress(done).read_text()))

    def restore(self, model: Any) -> Progress:
        """Load the newest epoch's state into the compiled `model`; returns its progress (epoch 0: a fresh one)."""
        for partial in self.folder.glob(f".epoch-*{PARTIAL}*"):
            remove(partial)  # what a killed save left
        progress = self.progress()
        if progress.epochs:
            self.load(model, progress.epochs)
            restore_seeds(model, progress.seeds)
        return progress

    def load(self, model: Any, epochs: int) -> None:
        """The weights (and optimizer state) saved after `epochs` epochs."""
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        model.load_weights(self._weights(epochs))

    def save(self, model: Any, progress: Progress) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        n = progress.epochs
        atomic_write(self._progress(n), json.dumps(asdict(progress)) + "\n")
        write_atomically(self._weights(n), model.save_weights, suffix=".weights.h5")  # Keras wants that ending
        keep = {n} | ({progress.best_epoch + 1} if progress.best_epoch is not None else set())
        for path in self.folder.glob("epoch-*"):
            number = re.match(r"epoch-(\d+)\.", path.name)
            if number and int(number.group(1)) not in keep:
                path.unlink()

