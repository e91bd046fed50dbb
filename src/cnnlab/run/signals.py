"""SIGINT (Ctrl-C) and SIGTERM as an exception that names the signal, so both end a run cleanly (SIGTERM would
otherwise kill Python without any cleanup)."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager


class Interrupted(KeyboardInterrupt):
    """Training was stopped by a signal (SIGINT or SIGTERM)."""


@contextmanager
def signals_interrupt() -> Iterator[None]:
    """Inside, SIGINT and SIGTERM raise Interrupted; the previous handlers come back after."""

    def stop(signum: int, frame: object) -> None:
        raise Interrupted(f"stopped by {signal.Signals(signum).name}")

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
