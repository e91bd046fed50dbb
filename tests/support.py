"""What several test files share, beside conftest.py's fixtures: no test_*.py imports another one
(tests/test_layout.py checks it), and code that only tests use lives here rather than in src/."""

from __future__ import annotations

import csv
from pathlib import Path

from cnnlab.config.schema import JobConfig
from cnnlab.job.checks import check_buildable, check_job

# What a training logs at every epoch (one step each).
EPOCH_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "epoch_seconds")


def validate(job: JobConfig) -> None:
    """All of a job's checks, `check_job` then `check_buildable`."""
    check_job(job)
    check_buildable(job)


def read_history(path: Path) -> list[dict[str, float]]:
    """history.csv's rows back as per-epoch metrics."""
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items() if k != "epoch" and v != ""} for row in csv.DictReader(f)]
