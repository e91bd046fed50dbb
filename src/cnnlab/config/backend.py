"""Starting the Keras backend: chosen before the first `import keras`, with the thread count and op determinism
that a run's key records (cnnlab.config.machine) fixed before its runtime starts, and started quietly on
machines without an NVIDIA GPU.

TensorFlow writes its start-up messages from C++ straight to file descriptor 2, before its own log settings
are read (TF_CPP_MIN_LOG_LEVEL hides none of them, and level 3 would hide real errors too). So while the backend
is imported and its devices listed, descriptor 2 goes to a temporary file; afterwards every line of it is
written to the real stderr except the few known not to matter on a machine without a GPU driver: the CUDA
probe failing (`failed call to cuInit`, `Could not find cuda drivers`), absl's note about logging before its
initialisation, and the oneDNN/CPU-instructions notices. On a machine with an NVIDIA driver nothing is dropped:
a failing cuInit is then a real problem."""

from __future__ import annotations

import importlib.util
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy  # noqa: F401  (loads numpy's BLAS, whose threads fix_numerics sets: threadpoolctl sets loaded ones)
from threadpoolctl import threadpool_limits

from cnnlab.config.errors import fail
from cnnlab.config.machine import has_nvidia_driver, usable_cpus
from cnnlab.config.schema import Backend

NOISE = re.compile(
    r"All log messages before absl::InitializeLog\(\) is called"
    r"|cudart_stub\.cc:\d+\] Could not find cuda drivers"
    r"|cuda_platform\.cc:\d+\] failed call to cuInit"
    r"|cuda_executor\.cc:\d+\] .*(?:kernel driver does not appear to be running|no NVIDIA GPU device)"
    r"|port\.cc:\d+\] oneDNN custom operations are on"
    r"|cpu_feature_guard\.cc:\d+\] This TensorFlow binary is optimized"
    r"|^To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags\.$"
)


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
        import keras  # heavy, and it reads KERAS_BACKEND when first imported: only once that is set

        keras.distribution.list_devices()


def fix_numerics(name: str, platform: dict[str, Any]) -> None:
    """Make the backend compute as `platform` says (threads per op, op determinism), before its runtime starts;
    one line naming the setting when this process already computes otherwise (a job run in-process after another).
    TensorFlow fixes its thread counts when its runtime starts; PyTorch takes them at
    any time; JAX's CPU client sizes its own pool (recorded as it is; the docs say so).

    numpy's BLAS computes with the same threads, whatever the backend: cnnlab.core fits P11's ZCA matrix and P12's
    patch whitening with it, and OpenBLAS sizes its pool from the machine, not from the job, while its thread count
    changes the fitted matrix (an SVD of 500 images of 3,072 features, 1 thread against 2: other bits)."""
    threads, determinism = platform["threads"], platform["op_determinism"]
    threadpool_limits(limits=threads, user_api="blas")
    if name == "tensorflow":
        import tensorflow as tf  # heavy: only the backend the job runs on is imported

        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        except RuntimeError:
            pass  # its runtime has started in this process, with the pools it had: checked below
        running = tf.config.threading.get_intra_op_parallelism_threads() or usable_cpus()
        if running != threads:
            fail("threads", threads, f"the {running} threads this process already computes with (TensorFlow "
                 "fixes them when it starts): run the job in a process of its own")
        from tensorflow.python.framework import config as tf_config  # its public API can set, not read, this

        if tf_config.is_op_determinism_enabled() and not determinism:
            fail("deterministic_ops", "disabled", "enabled: op determinism is already on in this process and "
                 "cannot be turned off; run the job in a process of its own")
        if determinism:
            tf.config.experimental.enable_op_determinism()
    elif name == "torch":
        import torch  # heavy: only the backend the job runs on is imported

        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(determinism)


def use_backend(backend: str, platform: dict[str, Any] | None = None) -> None:
    """Select the Keras backend and start it (quietly), computing as `platform` says (a run's
    cnnlab.config.settings.platform_of; None for inference, where the backend's defaults do); refuses a backend
    other than the one already imported."""
    name = backend.value if isinstance(backend, Backend) else str(backend)
    allowed = [b.value for b in Backend]
    if name not in allowed:
        fail("backend", name, f"one of {', '.join(allowed)}")
    if importlib.util.find_spec(name) is None:
        fail("backend", name, f"an installed backend; {name} is not installed here (pip install {name})")
    if "keras" in sys.modules:
        import keras  # already imported: this only names it

        if keras.backend.backend() != name:
            fail("backend", name, f"Keras is already running on {keras.backend.backend()!r} in this process "
                 "(set KERAS_BACKEND or backend= before starting)")
    os.environ["KERAS_BACKEND"] = name
    if platform is not None:
        with backend_noise_filtered():
            fix_numerics(name, platform)
    start_backend()
