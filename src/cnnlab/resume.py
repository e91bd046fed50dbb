"""Resumable training: where a project's interrupted run left its Keras backup and MLflow run id.

`checkpoints/<project>/` holds `backup/` (keras.callbacks.BackupAndRestore, saved every epoch) and `run.json`
(the MLflow run id and a hash of the resolved config). Rerunning the same project with the same config
continues from the last finished epoch in the same MLflow run; a different config starts afresh."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


def result_settings(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config without what cannot change the trained model: where files go, how the run is
    tracked, where the data is fetched from, what to do with a finished run."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    for key in ("paths", "tracking", "on_finished", "mirror"):
        plain.pop(key, None)
    return plain


def config_hash(cfg: DictConfig) -> str:
    """Hash of what decides the training result."""
    return hashlib.sha256(json.dumps(result_settings(cfg), sort_keys=True, default=str).encode()).hexdigest()


class ResumeState:
    """The backup folder and run record of one project."""

    def __init__(self, folder: Path, cfg_hash: str) -> None:
        self.folder, self.cfg_hash = folder, cfg_hash
        self.backup_dir = folder / "backup"
        self.record = folder / "run.json"

    def run_to_resume(self) -> str | None:
        """The MLflow run id to continue, or None (clearing a backup left by another config)."""
        if not self.record.exists():
            shutil.rmtree(self.backup_dir, ignore_errors=True)
            return None
        saved = json.loads(self.record.read_text())
        if saved.get("config_hash") != self.cfg_hash:
            log.warning("%s belongs to a run with another config: starting afresh", self.folder)
            self.clear()
            return None
        if self.backup_dir.exists():
            log.info("resuming MLflow run %s from the backup in %s", saved["run_id"], self.backup_dir)
        return saved["run_id"]

    def remember(self, run_id: str) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.record.write_text(json.dumps({"run_id": run_id, "config_hash": self.cfg_hash}) + "\n")

    def clear(self) -> None:
        """Forget the run once it finished: the backup is no longer needed."""
        shutil.rmtree(self.backup_dir, ignore_errors=True)
        self.record.unlink(missing_ok=True)
