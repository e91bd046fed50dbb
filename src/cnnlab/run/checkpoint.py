"""A training's checkpoint: the state `cnnlab.core.loop.train` continues from after a kill, kept by the job that
owns the run (cnnlab.run.state). How it is stored does not decide the trained numbers, so it lives outside
cnnlab.core and changing it changes no run key.

Every file is verified when it is read: an epoch's record `epoch-<n>.json` holds the Progress, the sha256 of its
weights file and the journal's text as it was when the epoch was backed up, and a sha256 of itself; a record or
weights file that does not match is damaged (Damaged names it and says what is wrong)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cnnlab.core.loop import Progress, restore_seeds
from cnnlab.errors import UserError
from cnnlab.run.files import PARTIAL, atomic_write, remove, write_atomically

log = logging.getLogger(__name__)

BACKUP = re.compile(r"epoch-(\d+)\.(json|weights\.h5)")
FORMAT = 2  # the record's layout: Progress, weights sha256, journal text, its own sha256


class Damaged(UserError):
    """A file of a run's state is not what was written: `path` and `problem` say which and how."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path} is damaged: {problem}")
        self.path, self.problem = path, problem


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def sealed(fields: dict[str, Any]) -> str:
    """`fields` as JSON with a sha256 of their canonical form, so a reader can tell they are what was written."""
    body = json.dumps(fields, sort_keys=True)
    return json.dumps({**fields, "sha256": sha256(body.encode())}, indent=1, sort_keys=True) + "\n"


def unseal(path: Path) -> dict[str, Any]:
    """The fields `sealed` wrote to `path`; Damaged when the file cannot be read, is not such a JSON object, or
    does not match its sha256. FileNotFoundError when there is no file."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise
    except OSError as err:
        raise Damaged(path, f"cannot be read ({err.strerror or err})") from None
    if not data.strip():
        raise Damaged(path, f"empty ({len(data)} bytes)")
    try:
        value = json.loads(data)
    except ValueError as err:
        raise Damaged(path, f"not JSON ({err})") from None
    if not isinstance(value, dict) or "sha256" not in value:
        raise Damaged(path, "not a record cnnlab wrote (no sha256 of its contents)")
    written = value.pop("sha256")
    if sha256(json.dumps(value, sort_keys=True).encode()) != written:
        raise Damaged(path, "its contents do not match the sha256 written with them (edited or corrupted)")
    return value


@dataclass(frozen=True)
class Backup:
    """One verified epoch of the checkpoint."""

    epochs: int
    progress: Progress
    journal: str  # the journal's text (header and one row per epoch) when this epoch was backed up


class Checkpoint:
    """A training's state after its epochs, in a folder only its own job writes: per epoch n,
    `epoch-<n>.weights.h5` (weights and optimizer state) and then `epoch-<n>.json` (the record: Progress, the
    weights' sha256, the journal's text), each written under a temporary name and renamed, the record last: an
    epoch counts once its record is there. The two newest epochs and the best epoch of each are kept (so a
    damaged newest epoch leaves an intact one to continue from); older files are removed.

    `journal` is the run's journal (Keras' CSVLogger file), whose text each record keeps."""

    def __init__(self, folder: Path, journal: Path | None = None) -> None:
        self.folder, self.journal = folder, journal

    def _weights(self, epochs: int) -> Path:
        return self.folder / f"epoch-{epochs:04d}.weights.h5"

    def _record(self, epochs: int) -> Path:
        return self.folder / f"epoch-{epochs:04d}.json"

    def _numbers(self, kind: str) -> list[int]:
        found = (BACKUP.fullmatch(p.name) for p in self.folder.glob("epoch-*"))
        return sorted(int(m.group(1)) for m in found if m and m.group(2) == kind)

    def latest(self) -> int:
        """Epochs whose state is complete: the newest epoch with its record and weights (0 when there is none)."""
        weights = set(self._numbers("weights.h5"))
        return max((n for n in self._numbers("json") if n in weights), default=0)

    def read(self, epochs: int) -> Backup:
        """Epoch `epochs`' backup, verified: its record and weights, and the weights of its best epoch; Damaged
        naming the first file that is not what was written."""
        path = self._record(epochs)
        try:
            fields = unseal(path)
        except FileNotFoundError:
            raise Damaged(path, "missing") from None
        try:
            if fields.get("format") != FORMAT:
                raise Damaged(path, f"written in layout {fields.get('format')!r}, not {FORMAT}")
            progress = Progress(**fields["progress"])
            journal, weights_sha256 = str(fields["journal"]), str(fields["weights_sha256"])
        except (KeyError, TypeError) as err:
            raise Damaged(path, f"not a backup record ({err})") from None
        if progress.epochs != epochs:
            raise Damaged(path, f"says epoch {progress.epochs}")
        if journal_epochs(journal) != list(range(epochs)):
            raise Damaged(path, f"its journal has epochs {journal_epochs(journal)}, not 0 to {epochs - 1}")
        self._verify_weights(epochs, weights_sha256)
        if progress.best_epoch is not None and progress.best_epoch + 1 != epochs:
            best = progress.best_epoch + 1
            try:
                best_fields = unseal(self._record(best))
            except FileNotFoundError:
                raise Damaged(self._record(best), f"missing (epoch {epochs}'s best epoch)") from None
            self._verify_weights(best, str(best_fields.get("weights_sha256")))
        return Backup(epochs, progress, journal)

    def _verify_weights(self, epochs: int, expected: str) -> None:
        path = self._weights(epochs)
        if not path.exists():
            raise Damaged(path, "missing")
        actual = file_sha256(path)
        if actual != expected:
            raise Damaged(path, f"sha256 {actual[:12]}… ({path.stat().st_size} bytes), but {expected[:12]}… was "
                                "written (truncated or corrupted)")

    def newest_intact(self) -> tuple[Backup | None, list[Damaged]]:
        """The newest epoch whose backup is intact (None when none is), and what is damaged in the newer ones.
        Weights without a record are a save a kill cut short: not damage."""
        damaged: list[Damaged] = []
        weights = set(self._numbers("weights.h5"))
        for n in sorted(set(self._numbers("json")) | weights, reverse=True):
            if n in weights and not self._record(n).exists():
                continue  # killed between the weights and the record
            try:
                return self.read(n), damaged
            except Damaged as err:
                damaged.append(err)
        return None, damaged

    def _journal_of(self, epochs: int) -> str:
        """The journal's text after `epochs` epochs, checked: Damaged unless it has exactly those epochs."""
        if self.journal is None:
            return ""
        try:
            text = self.journal.read_text()
        except FileNotFoundError:
            text = ""
        found = journal_epochs(text)
        if found != list(range(epochs)):
            raise Damaged(self.journal, f"it has the rows of epochs {found} after epoch {epochs - 1} was trained "
                                        "(changed while the job ran)")
        return text

    def keep_only(self, epochs: int) -> None:
        """Forget every epoch after `epochs` (damaged, or newer than the epoch the run continues from), and the
        files a killed save left."""
        for path in self.folder.glob("epoch-*"):
            m = BACKUP.fullmatch(path.name)
            if m and int(m.group(1)) > epochs:
                remove(path)
        for partial in self.folder.glob(f".epoch-*{PARTIAL}*"):
            remove(partial)

    def progress(self) -> Progress:
        done = self.latest()
        return Progress() if not done else self.read(done).progress

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
        weights = self._weights(n)
        write_atomically(weights, model.save_weights, suffix=".weights.h5")  # Keras wants that ending
        journal = self._journal_of(n)
        atomic_write(self._record(n), sealed({"format": FORMAT, "progress": asdict(progress),
                                              "weights_sha256": file_sha256(weights), "journal": journal}))
        keep = {n, *_best(progress)}
        if n > 1:
            keep.add(n - 1)
            try:
                keep.update(_best(self.read(n - 1).progress))
            except Damaged:
                pass
        for path in self.folder.glob("epoch-*"):
            number = re.match(r"epoch-(\d+)\.", path.name)
            if number and int(number.group(1)) not in keep:
                path.unlink()


def journal_epochs(text: str) -> list[int] | None:
    """The 0-based epochs of a journal's rows in order (CSVLogger's `epoch` column), [] for an empty journal,
    None when it is not a journal (no `epoch` column, or a row whose epoch is not a number)."""
    if not text.strip():
        return []
    try:
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames or reader.fieldnames[0] != "epoch":
            return None
        rows = list(reader)
    except csv.Error:
        return None
    epochs = [row.get("epoch") or "" for row in rows]
    return [int(e) for e in epochs] if all(e.isdigit() for e in epochs) else None


def _best(progress: Progress) -> set[int]:
    return set() if progress.best_epoch is None else {progress.best_epoch + 1}
