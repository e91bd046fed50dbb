"""What one job process costs before and around its training: the imports (numpy and ml_dtypes, TensorFlow, Keras,
MLflow, Hydra; and Keras without the optional jax and scikit-learn imports it makes), a new MLflow sqlite store's
tables, MLflow's schema check of an existing store, and a whole one-epoch P00 training on tiny data in a fresh
process (a new store, then again with the finished run reused). The test suite starts hundreds of such processes
(every CLI, kill, sweep and pipeline stage it tests), so these figures, not the trainings, set its length
(docs/testing.md).

    python bench/startup.py --repeats 3

Each figure is the median wall time of `--repeats` fresh processes, after one warm-up (the OS's file cache, and
the tiny data generated once). Run it on a quiet machine: every process competes with whatever else runs."""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

from cnnlab.config.machine import compute_platform, describe

IMPORTS = {
    "python alone": "pass",
    "import numpy": "import numpy",
    # TensorFlow's first import: its number types (bfloat16, float8s, int4s...) registered as numpy dtypes, each
    # with its ufunc loops; numpy's PyUFunc_AddLoop compares each new loop with every one the ufunc already has
    "import numpy, then ml_dtypes": "import numpy, ml_dtypes",
    "import tensorflow": "import tensorflow",
    "import keras (TensorFlow backend)": "import keras",
    # TensorFlow Lite tries `from jax import jit` and Keras' scikit-learn wrappers `import sklearn` at `import
    # keras`; neither is used by a job. Hidden (an import of them fails at once), the row shows what they cost.
    "import keras, jax hidden": "import sys; sys.modules['jax'] = None; import keras",
    "import keras, jax and scikit-learn hidden":
        "import sys; sys.modules['jax'] = sys.modules['sklearn'] = None; import keras",
    "import mlflow": "import mlflow",
    "import hydra + omegaconf": "import hydra, omegaconf",
    "import cnnlab.job.steps (all a training imports before its backend starts)": "import cnnlab.job.steps",
}
NEW_STORE = ("from mlflow.tracking import MlflowClient; import sys; "
             "MlflowClient('sqlite:///' + sys.argv[1]).search_experiments()")
# what opening any existing store costs over `import mlflow`: the latest schema revision, read from MLflow's alembic
# migration scripts, which a store compares with the database's before its first use
SCHEMA_CHECK = "import mlflow.store.db.utils as db; db._get_latest_schema_revision()"


def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return seconds


def median_of(repeats: int, run) -> float:
    run(-1)  # warm-up
    return statistics.median(run(i) for i in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description="What one job process costs: imports, a new MLflow store, a "
                                                 "one-epoch tiny training (median of fresh processes)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    root = Path(__file__).resolve().parents[1]  # the checkout: its conf/ and cnnlab are what runs
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2"}
    rows: list[tuple[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name, code in IMPORTS.items():
            rows.append((name, median_of(args.repeats, lambda i, c=code: timed([sys.executable, "-c", c], root,
                                                                               env))))
        rows.append(("a new MLflow sqlite store (import and tables)",
                     median_of(args.repeats, lambda i: timed([sys.executable, "-c", NEW_STORE,
                                                              str(work / f"store{i}.db")], work, env))))
        rows.append(("an existing store opened (import and schema check)",
                     median_of(args.repeats, lambda i: timed([sys.executable, "-c", NEW_STORE,
                                                              str(work / "store0.db")], work, env))))
        rows.append(("MLflow's schema check alone (import mlflow, then alembic and its migration scripts)",
                     median_of(args.repeats, lambda i: timed([sys.executable, "-c", SCHEMA_CHECK], work, env))))

        def train(i: int, reuse: bool) -> float:
            folder = work / ("train" if reuse else f"train{i}")
            overrides = ["project=p00", "data=tiny", "training.epochs=1", f"paths.data={work / 'data'}",
                         *(f"paths.{key}={folder / key}" for key in ("runs", "checkpoints", "outputs")),
                         f"tracking.uri=sqlite:///{folder / 'mlflow.db'}", f"hydra.run.dir={folder / 'hydra'}"]
            return timed([sys.executable, "-m", "cnnlab.train", *overrides], root, env)

        rows.append(("python -m cnnlab.train project=p00 data=tiny training.epochs=1, new folder and store",
                     median_of(args.repeats, lambda i: train(i, reuse=False))))
        rows.append(("the same command again: the finished run reused",
                     median_of(args.repeats, lambda i: train(i, reuse=True))))
    print(f"Job process start-up costs, median of {args.repeats} fresh processes after one warm-up")
    print(f"{describe(compute_platform(0, 'disabled'))}; Python {platform.python_version()}, "
          f"TensorFlow {version('tensorflow')}, Keras {version('keras')}, MLflow {version('mlflow')}, "
          f"Hydra {version('hydra-core')}")
    print()
    print("| process | seconds |")
    print("|---|---:|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.2f} |")


if __name__ == "__main__":
    main()
