"""The part of the machine that decides a run's numbers, so that it can be part of the run key and recorded with
the run.

Measured on one 2-core CPU (P07 on tiny data, three epochs, TensorFlow 2.21; `docs` and README's
reproducibility section give the figures): the same settings repeat to the last digit run after run, also two at
once, but capping oneDNN's instruction set (`ONEDNN_MAX_CPU_ISA=AVX2` on an AVX-512 machine), computing on one
thread instead of two, or TensorFlow's op determinism each change every epoch's numbers from the first. oneDNN
picks its kernels by the CPU's instruction set at run time, so two machines whose CPUs differ (with AMX units or
without, AVX-512 or AVX2) compute two different runs from the same settings; that is why the project's P07
trained twice gave 76.02 % and 77.29 %. So a run's key holds: the instruction-set level oneDNN will use and the
CPU model, the number of threads an op may use (fixed when the backend starts, not left to the machine), and
whether op determinism is on; on a GPU, the GPUs' names.

Read from /proc/cpuinfo and the environment, without importing a backend: the key is needed before the heavy
imports (to refuse a twin, to find a finished run)."""

from __future__ import annotations

import os
import platform
from functools import cache
from pathlib import Path
from typing import Any

# oneDNN's CPU instruction-set levels, lowest first, each with the /proc/cpuinfo flags it needs (oneDNN's
# dispatch: src/cpu/x64/cpu_isa_traits.hpp); ONEDNN_MAX_CPU_ISA names them in capitals.
AVX512_CORE = {"avx512f", "avx512bw", "avx512vl", "avx512dq"}
ISA_LEVELS: list[tuple[str, set[str]]] = [
    ("sse41", {"sse4_1"}),
    ("avx", {"avx"}),
    ("avx2", {"avx2", "fma"}),
    ("avx2_vnni", {"avx2", "fma", "avx_vnni"}),
    ("avx512_core", AVX512_CORE),
    ("avx512_core_vnni", AVX512_CORE | {"avx512_vnni"}),
    ("avx512_core_bf16", AVX512_CORE | {"avx512_vnni", "avx512_bf16"}),
    ("avx512_core_fp16", AVX512_CORE | {"avx512_vnni", "avx512_bf16", "avx512_fp16"}),
    ("avx512_core_amx", AVX512_CORE | {"avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8"}),
]


def cpu_info(text: str | None = None) -> tuple[str, set[str]]:
    """The CPU's model name and flags (from /proc/cpuinfo; the machine's processor name where there is none)."""
    if text is None:
        path = Path("/proc/cpuinfo")
        text = path.read_text(errors="replace") if path.exists() else ""
    model, flags = platform.processor() or platform.machine(), set()
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == "model name" and value.strip():
            model = value.strip()
        elif name.strip() in ("flags", "Features") and not flags:
            flags = set(value.split())
    return model, flags


def isa_level(flags: set[str], cap: str | None = None) -> str:
    """The highest oneDNN instruction-set level these flags allow, no higher than `cap` (ONEDNN_MAX_CPU_ISA:
    a level's name in any case; ALL or DEFAULT mean no cap)."""
    names = [name for name, _ in ISA_LEVELS]
    found = [name for name, needs in ISA_LEVELS if needs <= flags]
    level = found[-1] if found else "none"
    cap = (cap or "").strip().lower()
    if cap in names and (level == "none" or names.index(cap) < names.index(level)):
        level = cap
    return level


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity, which a cluster's scheduler sets), else the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def resolved_threads(threads: int) -> int:
    """`threads` as the run uses it: 0 means every CPU this process may use."""
    return threads if threads > 0 else usable_cpus()


def has_nvidia_driver() -> bool:
    """An NVIDIA kernel driver is loaded (so a GPU could be used and CUDA errors mean something)."""
    return Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidiactl").exists()


def gpu_names() -> list[str]:
    """The NVIDIA GPUs' names (through NVML, without starting a backend); [] on a machine without a driver."""
    if not has_nvidia_driver():
        return []
    try:
        import pynvml  # nvidia-ml-py: small, and only on machines with a driver

        pynvml.nvmlInit()
        try:
            return [str(pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i)))
                    for i in range(pynvml.nvmlDeviceGetCount())]
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - no usable driver: the run computes on the CPU
        return []


def op_determinism(setting: str, gpus: list[str]) -> bool:
    """Whether TensorFlow's op determinism is on for a run: `auto` turns it on only on a GPU, whose kernels do not
    repeat by themselves; on the CPU the kernels repeat for a fixed instruction set and thread count (measured),
    and op determinism would only change every number and cost time."""
    return setting == "enabled" or (setting == "auto" and bool(gpus))


@cache
def _machine() -> tuple[str, str, list[str]]:
    model, flags = cpu_info()
    return model, isa_level(flags, os.environ.get("ONEDNN_MAX_CPU_ISA")), gpu_names()


def bf16_is_fast(isa: str, gpus: list[str]) -> bool:
    """Whether mixed bfloat16 pays: on a GPU, or on a CPU whose oneDNN level (`isa_level`) has AMX units. Measured
    (issue #31, docs/benchmarks.md): on CPUs without AMX, mixed bfloat16 trains at half the speed of float32 or
    less; with AMX, 1.4-3.2x faster. `training.mixed_precision: auto` is this for the machine the job runs on,
    resolved when the job is made, so the run's key and params hold the choice (true or false), and the key's
    machine part says why."""
    return bool(gpus) or isa == "avx512_core_amx"


def bf16_is_fast_here() -> bool:
    _, isa, gpus = _machine()
    return bf16_is_fast(isa, gpus)


def compute_platform(threads: int, deterministic_ops: str) -> dict[str, Any]:
    """What of the machine decides a run's numbers: part of its key and recorded with it (tag `cnnlab.platform`)."""
    model, isa, gpus = _machine()
    onednn = os.environ.get("TF_ENABLE_ONEDNN_OPTS", "1").strip() not in ("0", "false", "False")
    found: dict[str, Any] = {"threads": resolved_threads(threads),
                             "op_determinism": op_determinism(deterministic_ops, gpus)}
    if gpus:
        found["gpus"] = gpus
    else:
        found.update(cpu=model, isa=isa if onednn else f"{isa} (oneDNN off)")
    return found


def describe(found: dict[str, Any]) -> str:
    """One line for people: where a run computed."""
    where = ", ".join(found["gpus"]) if "gpus" in found else f"{found['cpu']} ({found['isa']})"
    determinism = ", op determinism" if found["op_determinism"] else ""
    return f"{where}, {found['threads']} threads{determinism}"
