"""Where a DVC stage runs: in the user's repository, or in a queued experiment's temporary copy of it.

`dvc exp run --queue` (and `--temp`) runs the pipeline in a copy under `.dvc/tmp/exps/`, made from git plus DVC's
cached outputs and deleted once DVC has collected the experiment. What is neither in git nor a DVC output does
not reach that copy: the relative store `sqlite:///mlflow.db` and its `mlruns/` (runs would be logged into a
throwaway store), `runs/` and `checkpoints/` (a finished run's folder, which `on_finished=skip` publishes from; an
interrupted run's state, which a rerun resumes from) and the git-ignored `conf/local/` (this machine's mirror and
paths). DVC names the repository the experiment was queued from in `DVC_ROOT` (its queue sets it to that
repository; in a plain `dvc repro` it is the working directory itself), so a stage in a copy resolves those
against it: its run lands in the user's store beside every other run and stays findable after the copy is gone.
What DVC collects as the experiment's results (data/, outputs/, metrics/, plots/, reports/) stays in the copy.

The copy's own code and configs must run, not the installed cnnlab's: `pip install -e .` points `import cnnlab`
(and so conf/) at the user's repository as it is now, which may have changed since the experiment was queued,
and DVC's queue workers set their own PYTHONPATH. So a stage in a copy runs itself again with the copy's src/
first on the path."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from omegaconf import DictConfig

log = logging.getLogger(__name__)
SHARED_PATHS = ("runs", "checkpoints")


def origin() -> Path | None:
    """The user's repository when this process is a DVC stage in a temporary copy of it; None otherwise."""
    root = os.environ.get("DVC_ROOT")
    if not root or Path(root).resolve() == Path.cwd().resolve():
        return None
    return Path(root).resolve()


def run_own_code(module: str, argv: list[str]) -> None:
    """In a copy whose src/cnnlab is not the one imported, replace this process by `python -m module argv` with
    the copy's src/ first on PYTHONPATH (once: that src/ is then on sys.path)."""
    import cnnlab

    own = Path.cwd() / "src"
    imported = Path(cnnlab.__file__).resolve().parent
    if origin() is None or not (own / "cnnlab").is_dir() or imported == (own / "cnnlab").resolve() \
            or str(own) in sys.path:
        return
    log.info("in DVC's temporary copy %s: running its own cnnlab instead of %s", Path.cwd(), imported)
    path = os.pathsep.join(filter(None, [str(own), os.environ.get("PYTHONPATH")]))
    os.execve(sys.executable, [sys.executable, "-m", module, *argv], {**os.environ, "PYTHONPATH": path})


def config_overrides() -> list[str]:
    """Hydra overrides that let a copy read the user's git-ignored conf/local/ (the copy's own conf/ comes first,
    so only what git does not carry is taken from the repository)."""
    root = origin()
    return [] if root is None else [f'hydra.searchpath=["file://{root / "conf"}"]']


def relocated(cfg: DictConfig) -> DictConfig:
    """`cfg` with a relative sqlite store, runs/ and checkpoints/ in the user's repository when running in a copy
    of it; unchanged otherwise (and so are absolute paths and remote stores)."""
    root = origin()
    if root is None:
        return cfg
    cfg = cfg.copy()
    from cnnlab.tracking import sqlite_file  # imports MLflow: only where a store is relocated

    store = sqlite_file(cfg.tracking.uri)
    if store is not None and not store.is_absolute():
        cfg.tracking.uri = f"sqlite:///{root / store}"
    for key in SHARED_PATHS:
        if not Path(cfg.paths[key]).is_absolute():
            cfg.paths[key] = str(root / cfg.paths[key])
    log.info("in DVC's temporary copy %s of %s: the run is tracked in %s, its folders are in %s", Path.cwd(), root,
             cfg.tracking.uri, ", ".join(cfg.paths[key] for key in SHARED_PATHS))
    return cfg
