"""The mutable state of one unfinished run, in a folder that only its own job writes.

`<paths.checkpoints>/<project>-<key>/`, where the key hashes everything that decides the trained model
(cnnlab.config.settings.result_key), holds while the run is unfinished:

- `run.json`: the MLflow store, experiment and run (and logged model) this state belongs to, with a sha256 of
  its contents;
- `history.csv`: each finished epoch's metrics, written by Keras' CSVLogger: the run's journal;
- `backup/`: the training's checkpoint after its last epochs (cnnlab.run.checkpoint.Checkpoint: weights, optimizer,
  random generators, early stopping, the best epoch and its weights, the journal's text, checksums), each file
  written whole, then renamed;
- `trained.keras`: the model once training has ended, so a job killed after training does not train again (its
  sha256 in run.json).

Every file is verified when it is read (`verify`, before the job uses the state): a damaged backup is named and
the run continues from the newest intact one, the journal put back as that backup recorded it; a damaged journal
is named and put back the same way; where no intact backup is left the job is refused (StateDamaged, one line
with the command that starts over). A damaged run.json is named, and the run is found again by its tags
(cnnlab.tracking.runs).

Per epoch the journal row is written first, then the backup, then the MLflow metrics, so MLflow's steps are
always a prefix of the backed-up epochs, which are a prefix of the journal: a resumed job cuts the journal
back to its backup and logs the epochs MLflow missed, and every step is logged exactly once however the job
was stopped. A job touches the folder only while it holds `<project>-<key>.lock` beside it (`claim`): the
same settings in a second process are refused (RunBusy), other settings never meet. The folder is removed
when the run has finished."""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from cnnlab.errors import UserError
from cnnlab.run.checkpoint import Backup, Checkpoint, Damaged, file_sha256, journal_epochs, sealed, unseal
from cnnlab.run.files import atomic_write, remove, remove_partials, temporary_beside, write_atomically

log = logging.getLogger(__name__)


class RunBusy(UserError):
    """Another process is working on a run with the same settings right now."""


class StateDamaged(UserError):
    """A run's state is damaged and nothing intact is left to continue from: the job is refused, saying how to
    start over."""

    def __init__(self, state: RunState, damage: Damaged, why: str) -> None:
        super().__init__(f"{damage}; {why}. To start over (losing its epochs): rm -r {state.folder} and run the "
                         "same command again")


class RunState:
    """The state folder of one (project, settings) pair; use it inside `RunState.claim`."""

    def __init__(self, folder: Path, key: str) -> None:
        self.folder, self.key = folder, key
        self.record_file = folder / "run.json"
        self.journal = folder / "history.csv"
        self.checkpoint = Checkpoint(folder / "backup", self.journal)
        self.trained_file = folder / "trained.keras"

    @staticmethod
    def lock_path(folder: Path) -> Path:
        return folder.with_name(folder.name + ".lock")

    @staticmethod
    def folder_for(checkpoints: str | Path, project: str, key: str) -> Path:
        """The state folder of a project's run of this key: `<paths.checkpoints>/<project>-<key>`."""
        return Path(checkpoints) / f"{project}-{key}"

    @classmethod
    def _busy(cls, folder: Path, project: str) -> RunBusy:
        return RunBusy(f"{project} with these settings is being trained by another process right now (it "
                       f"holds {cls.lock_path(folder)}); wait for it to finish (running the same command again "
                       "afterwards finds its result) or change a setting")

    @classmethod
    def refuse_if_busy(cls, folder: Path, project: str) -> None:
        """RunBusy now if another process holds the state `folder` (nothing is created to find out)."""
        if cls.is_claimed(folder):
            raise cls._busy(folder, project)

    @classmethod
    @contextmanager
    def claim(cls, folder: Path, project: str) -> Iterator[RunState]:
        """The state `folder` (`folder_for`) of the project's run, held by this process alone until the block
        ends; RunBusy if another process holds it."""
        key = folder.name.removeprefix(f"{project}-")
        made = not folder.parent.exists()
        folder.parent.mkdir(parents=True, exist_ok=True)
        lock = cls._acquire(cls.lock_path(folder))
        if lock is None:
            raise cls._busy(folder, project)
        try:
            remove_partials(folder.parent, folder.name)  # a state folder whose removal was cut short
            yield cls(folder, key)
        finally:
            if not folder.exists():  # nothing to hold (a finished run, a refused job): nothing is left behind
                cls.lock_path(folder).unlink(missing_ok=True)  # (unlinked held: every claim tries once, no waiter)
                if made:
                    with suppress(OSError):
                        folder.parent.rmdir()  # only when empty
            lock.release()

    @staticmethod
    def _acquire(path: Path) -> FileLock | None:
        """The lock on `path`, held, or None when another process holds it. A lock file is removed by the job that
        held it when nothing is left to hold (`claim`), so a lock taken on a file that was removed meanwhile is
        not the lock: it is taken again on the file that is there now."""
        for _ in range(3):
            lock = FileLock(path)
            try:
                lock.acquire(timeout=0)
            except Timeout:
                return None
            held = os.fstat(lock._context.lock_file_fd)  # noqa: SLF001 - filelock keeps its descriptor there
            try:
                there = os.stat(path)
            except FileNotFoundError:
                there = None
            if there is not None and (there.st_dev, there.st_ino) == (held.st_dev, held.st_ino):
                return lock
            lock.release()
        return None

    @classmethod
    def is_claimed(cls, folder: Path) -> bool:
        """Whether a live process holds `folder`'s lock (a process that died holds nothing)."""
        path = cls.lock_path(folder)
        if not path.exists():
            return False
        lock = FileLock(path)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return True
        lock.release()
        return False

    def record(self) -> dict[str, Any] | None:
        """What run.json says, verified, or None when there is none; Damaged when it is not what was written."""
        try:
            value = unseal(self.record_file)
        except FileNotFoundError:
            return None
        if not isinstance(value.get("run_id"), str):
            raise Damaged(self.record_file, "it names no MLflow run")
        return value

    def remember(self, **fields: Any) -> None:
        """Add `fields` to run.json (written whole with its sha256, then renamed); a damaged one is replaced."""
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            known = self.record() or {}
        except Damaged:
            known = {}
        atomic_write(self.record_file, sealed({**known, **fields}))

    def verify(self) -> Backup | None:
        """Check every file of the state before the job uses it, and leave only what is intact: damaged backups
        (and any newer) are removed, named in a warning, and the run continues from the newest intact one; the
        journal is put back as that backup recorded it (named in a warning where it was not just one epoch
        ahead); a trained model that is not the one kept is removed (made again from the backup). Returns the
        backup the run continues from (None: it starts at epoch 0). StateDamaged when there were backups and
        none is intact."""
        if not self.folder.exists():
            return None
        backup, damaged = self.checkpoint.newest_intact()
        for damage in damaged:
            log.warning("%s", damage)
        if damaged and backup is None:
            raise StateDamaged(self, damaged[-1], "no intact backup of its epochs is left to continue from")
        epochs = 0 if backup is None else backup.epochs
        if damaged:
            log.warning("%s: continuing from epoch %d, the newest intact backup (%s), because the newer "
                        "backup is damaged", self.folder, epochs, self.checkpoint._record(epochs).name)
            self._forget_trained("it was made from a damaged backup")
        self.checkpoint.keep_only(epochs)
        self._verify_journal(backup)
        self._verify_trained()
        return backup

    def _verify_journal(self, backup: Backup | None) -> None:
        expected = "" if backup is None else backup.journal
        try:
            text = self.journal.read_text()
        except FileNotFoundError:
            text = None
        except (OSError, UnicodeDecodeError) as err:
            text = f"unreadable: {err}"
        if text == expected:
            return
        epochs = 0 if backup is None else backup.epochs
        found = None if text is None else journal_epochs(text)
        if not (text is not None and text.startswith(expected) and found is not None
                and found[:epochs] == list(range(epochs))):  # more than a cut-back of epochs after the backup
            problem = ("missing" if text is None else "empty" if not text.strip() else
                       "not a journal CSVLogger wrote" if found is None else
                       f"its rows are epochs {found}, its backup's 0 to {epochs - 1}")
            if epochs or text:
                log.warning("%s is damaged (%s): put back as the backup of epoch %d recorded it", self.journal,
                            problem, epochs)
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write(self.journal, expected)

    def _verify_trained(self) -> None:
        if not self.trained_file.exists():
            return
        try:
            expected = (self.record() or {}).get("trained_sha256")
        except Damaged:
            expected = None
        if expected is None:
            self._forget_trained("its checksum was not recorded (the job stopped while keeping it)")
        elif file_sha256(self.trained_file) != expected:
            self._forget_trained(str(Damaged(self.trained_file, "it does not match the sha256 recorded for it")))

    def _forget_trained(self, why: str) -> None:
        if self.trained_file.exists():
            log.warning("%s is not used (%s): it is made again from the backup", self.trained_file, why)
            remove(self.trained_file)

    def epochs_done(self) -> int:
        """Epochs whose state is backed up (0 when there is none)."""
        return self.checkpoint.latest()

    def cut_journal_to(self, epochs: int) -> list[dict[str, float]]:
        """Cut the journal back to its first `epochs` epochs, so epochs trained after the last backup are
        forgotten, and return them (as CSVLogger wrote them, values Keras could not give left out)."""
        try:
            reader = csv.DictReader(io.StringIO(self.journal.read_text()))
            rows = [row for row in reader if row.get("epoch", "").isdigit() and int(row["epoch"]) < epochs]
            header = reader.fieldnames or []
        except OSError:
            rows, header = [], []
        rows = rows[:epochs]
        out = io.StringIO()
        if rows:
            writer = csv.DictWriter(out, fieldnames=header, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write(self.journal, out.getvalue())
        return [{k: float(v) for k, v in row.items() if k != "epoch" and _number(v)} for row in rows]

    def trained_model(self) -> Any | None:
        """The model kept when `fit` ended, or None when training has not ended yet."""
        if not self.trained_file.exists():
            return None
        # Keras (and cnnlab.core.models, which imports it) only here, once the job has applied its backend
        import keras

        import cnnlab.core.models  # noqa: F401  (registers cnnlab's layers for loading)

        log.info("training had ended before the job stopped: using %s", self.trained_file)
        return keras.saving.load_model(self.trained_file)

    def keep_trained(self, model: Any) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        remove_partials(self.folder, self.trained_file.name)  # what a killed keep_trained left
        write_atomically(self.trained_file, model.save, suffix=".keras")  # Keras wants that ending
        self.remember(trained_sha256=file_sha256(self.trained_file))

    def remove(self) -> None:
        """Remove the state folder, so the next job of this key starts from scratch (the run finished, or it is
        over without finishing: pruned, diverged, started afresh); renamed aside first, so a kill never leaves
        half of it."""
        if self.folder.exists():
            aside = temporary_beside(self.folder, "done")
            os.replace(self.folder, aside)
            remove(aside)


def _number(text: str | None) -> bool:
    """A value CSVLogger wrote for a metric (it writes "NA" for one the epoch did not have)."""
    try:
        float(text)
    except (TypeError, ValueError):
        return False
    return True
