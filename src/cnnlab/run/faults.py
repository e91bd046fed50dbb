"""Failpoints: named instants at which a test makes a training job stop or fail, so a test chooses the instant
of a kill instead of racing the job.

`CNNLAB_FAILPOINT=<point>[@<what>][,<point>[@<what>]...]` in a job's environment makes the job, when it reaches
`<point>`, send itself the signal `<what>` (SIGKILL unless named; SIGSTOP freezes it there, the test continues
it with SIGCONT), or with `@ENOSPC` raise the OSError a full disk raises. Points: `mid_epoch:<e>` (after the first
batch of 0-based epoch e), `after_backup:<e>` (epoch e kept, its metrics not yet logged), `after_fit`,
`model_logging` (the model's files uploaded, the model not yet finalised), `before_publish` (everything logged,
the run's folder not yet in place), `after_finish` (the MLflow run ended, its state not yet cleared),
`registered` (the run's model version created, the champion alias not yet decided), `crowning` (the champion
chosen, the alias not yet written), `run_started` (the MLflow run created, not yet recorded in the state),
`recording_failure` (a stopped or failed run's error being recorded, before its traceback is uploaded). In the
search sweeper (hydra_plugins/cnnlab_optuna): `search_told:<n>` (Optuna trial n has been told its outcome).
Unset, every point is a no-op."""

from __future__ import annotations

import errno
import os
import signal

ENV = "CNNLAB_FAILPOINT"


def reach(point: str) -> None:
    """Stop or fail here if the environment names this point."""
    wanted = os.environ.get(ENV)
    if not wanted:
        return
    for entry in wanted.split(","):
        name, _, what = entry.partition("@")
        if name != point:
            continue
        if what == "ENOSPC":
            raise OSError(errno.ENOSPC, f"No space left on device (failpoint {point})")
        os.kill(os.getpid(), signal.Signals[what or "SIGKILL"])
