"""What every cnnlab command shares: a config error ends it with one line (exit status 2), the traceback only
with HYDRA_FULL_ERROR=1."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any

from cnnlab.config.errors import ConfigError


def one_line_errors(task: Callable[..., Any]) -> Callable[..., Any]:
    """A config error of a single run ends the command with its one-line message (exit status 2). Other errors,
    and sweeps (which record failed jobs), are unchanged."""

    @functools.wraps(task)  # Hydra finds conf/ from the task function's module
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return task(*args, **kwargs)
        except ConfigError as err:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None

    return run
