"""What cnnlab's commands print: the Keras backend's start-up noise left out on machines without an NVIDIA GPU,
and a config error as one line.

TensorFlow writes its start-up messages from C++ straight to file descriptor 2, before its own log settings
are read (TF_CPP_MIN_LOG_LEVEL hides none of them, and level 3 would hide real errors too). So while the backend
is imported and its devices listed, descriptor 2 goes to a temporary file; afterwards every line of it is
written to the real stderr except the few known not to matter on a machine without a GPU driver: the CUDA
probe failing (`failed call to cuInit`, `Could not find cuda drivers`), absl's note about logging before its
initialisation, and the oneDNN/CPU-instructions notices. On a machine with an NVIDIA driver nothing is dropped:
a failing cuInit is then a real problem."""

from __future__ import annotations

import functools
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cnnlab.config import ConfigError

NOISE = re.compile(
    r"All log messages before absl::InitializeLog\(\) is called"
    r"|cudart_stub\.cc:\d+\] Could not find cuda drivers"
    r"|cuda_platform\.cc:\d+\] failed call to cuInit"
    r"|cuda_executor\.cc:\d+\] .*(?:kernel driver does not appear to be running|no NVIDIA GPU device)"
    r"|port\.cc:\d+\] oneDNN custom operations are on"
    r"|cpu_feature_guard\.cc:\d+\] This TensorFlow binary is optimized"
    r"|^To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags\.$"
)


def has_nvidia_driver() -> bool:
    """An NVIDIA kernel driver is loaded (so a GPU could be used and CUDA errors mean something)."""
    return Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidiactl").exists()


def without_noise(text: str) -> str:
    return "".join(line for line in text.splitlines(keepends=True) if not NOISE.search(line))


@contextmanager
def backend_noise_filtered() -> Iterator[None]:
    """Inside: descriptor 2 is kept aside; after: replayed without the backend's known CPU-only noise."""
    if has_nvidia_driver():
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as kept:
        os.dup2(kept.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            kept.seek(0)
            sys.stderr.write(without_noise(kept.read().decode(errors="replace")))
            sys.stderr.flush()


def start_backend() -> None:
    """Import Keras and list its devices (where TensorFlow probes CUDA) with the start-up noise filtered."""
    with backend_noise_filtered():
        import keras

        keras.distribution.list_devices()


def one_line_errors(task: Callable[..., Any]) -> Callable[..., Any]:
    """A config error of a single run ends the command with its one-line message (exit status 2); the traceback
    only with HYDRA_FULL_ERROR=1. Other errors, and sweeps (which record failed jobs), are unchanged."""

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
