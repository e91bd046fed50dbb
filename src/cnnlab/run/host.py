"""This host and its processes: which host a run or trial belongs to, and whether the process that holds it still
lives (psutil), asked by the tracking code (runs a dead job left RUNNING) and by the Optuna sweeper (trials a dead
sweep left RUNNING) alike, without importing MLflow."""

from __future__ import annotations

import socket

import psutil

HOST = socket.gethostname()


def process_alive(pid: str | None) -> bool:
    """Whether a process with this id runs on this host (a zombie, dead but not yet reaped, does not)."""
    try:
        number = int(pid or 0)
    except ValueError:
        return False
    if number <= 0:
        return False
    try:
        return psutil.Process(number).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # another user's process: it exists
        return True
