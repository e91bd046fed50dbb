"""Failpoints: named instants at which a test makes a training job stop, so a test chooses the instant of a
kill instead of racing the job.

`CNNLAB_FAILPOINT=<point>[@<signal>]` in a job's environment sends the job itself the signal (SIGKILL unless
named) when it reaches `<point>`; SIGSTOP freezes it there (the test continues it with SIGCONT). Points:
`mid_epoch:<e>` (after the first batch of 0-based epoch e), `after_backup:<e>` (epoch e backed up, its metrics
not yet logged), `after_fit`, `model_logging` (the model's files uploaded, the model not yet finalised),
`before_publish` (everything logged, the run's folder not yet in place), `after_finish` (the MLflow run ended,
its state not yet cleared), `registered` (the run's model version created, the champion alias not yet
decided). In the search sweeper (hydra_plugins/cnnlab_optuna): `search_told:<n>` (Optuna trial n has been told
its outcome). Unset, every point is a no-op."""

from __future__ import annotations

import os
import signal

ENV = "CNNLAB_FAILPOINT"


def reach(point: str) -> None:
    """Stop here if the environment names this point."""
    wanted = os.environ.get(ENV)
    if not wanted:
        return
    name, _, sig = wanted.partition("@")
    if name == point:
        os.kill(os.getpid(), signal.Signals[sig or "SIGKILL"])
