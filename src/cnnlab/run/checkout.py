"""Which checkout runs: the code and configs of the checkout a command is started in, whatever environment starts it.

cnnlab is installed editable, so `import cnnlab` finds the checkout the environment was made from, and conf/ is
found beside the code. A second clone or a `git worktree` used with that environment would silently train the first
checkout's code and configs. So every entry point (`python -m cnnlab.train|evaluate|pipeline|report|predict`, and
through them the DVC stages and MLproject entry points) first finds the project it runs in (the folder holding the
working directory with a dvc.yaml and a pyproject.toml naming cnnlab) and, when the imported cnnlab is not that
project's `src/cnnlab`, runs itself again with that `src/` first on PYTHONPATH. Outside any cnnlab project the
installed one runs. Every run records the checkout it ran (path, commit, dirty) in its tags and run.json.

The same covers DVC's queued experiments: `dvc exp run --queue` (and `--temp`) runs the pipeline in a copy under
`.dvc/tmp/exps/`, made from git plus DVC's cached outputs, deleted once DVC has collected the experiment. What is
neither in git nor a DVC output does not reach that copy: the relative store `sqlite:///mlflow.db` and its
`mlruns/`, `runs/` and `checkpoints/` (finished runs' folders, interrupted runs' states) and the git-ignored
`conf/local/`. DVC names the repository the experiment was queued from in `DVC_ROOT`, so a stage in a copy resolves
those against it: its run lands in the user's store beside every other run and stays findable after the copy is
gone. What DVC collects as the experiment's results (data/, outputs/, metrics/, plots/, reports/) stays in the copy."""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import cnnlab
from cnnlab.config.schema import JobConfig, sqlite_file

log = logging.getLogger(__name__)
SHARED_PATHS = ("runs", "checkpoints")
REEXEC_ENV = "CNNLAB_CHECKOUT"


@dataclass(frozen=True)
class Checkout:
    """The checkout a job's code and configs come from: its folder and git commit (dirty: uncommitted changes)."""

    path: str
    commit: str
    dirty: bool

    def describe(self) -> str:
        return self.commit + ("-dirty" if self.dirty else "")


def is_project(folder: Path) -> bool:
    """A cnnlab checkout: dvc.yaml beside a pyproject.toml that names the cnnlab package, and its src/cnnlab."""
    pyproject = folder / "pyproject.toml"
    return ((folder / "dvc.yaml").is_file() and pyproject.is_file() and (folder / "src" / "cnnlab").is_dir()
            and 'name = "cnnlab"' in pyproject.read_text())


def project_of(start: Path) -> Path | None:
    """The cnnlab checkout holding `start` (it or a folder above it), or None."""
    for folder in (start.resolve(), *start.resolve().parents):
        if is_project(folder):
            return folder
    return None


def imported_checkout() -> Path:
    """The checkout the running cnnlab package belongs to (`<checkout>/src/cnnlab`)."""
    return Path(cnnlab.__file__).resolve().parents[2]


def run_own_code(module: str, argv: list[str]) -> None:
    """When the working directory is in a cnnlab checkout other than the imported one, replace this process by
    `python -m module argv` with that checkout's src/ first on PYTHONPATH (once: a second mismatch is an error)."""
    here = project_of(Path.cwd())
    running = imported_checkout()
    if here is None or here == running:
        return
    if os.environ.get(REEXEC_ENV) == str(here):
        raise SystemExit(f"cnnlab: {here} is a cnnlab checkout, but {running}/src/cnnlab is imported even with "
                         f"{here}/src first on PYTHONPATH; run `pip install -e .` in {here}")
    print(f"cnnlab: running the code and configs of {here} (this environment's cnnlab is {running})",
          file=sys.stderr)
    path = os.pathsep.join(filter(None, [str(here / "src"), os.environ.get("PYTHONPATH")]))
    os.execve(sys.executable, [sys.executable, "-m", module, *argv],
              {**os.environ, "PYTHONPATH": path, REEXEC_ENV: str(here)})


@cache
def current_checkout() -> Checkout:
    """The running code's checkout: its folder, HEAD commit and whether it has uncommitted changes."""
    root = imported_checkout()
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return Checkout(str(root), "unknown", False)
    return Checkout(str(root), head, bool(dirty))


def origin() -> Path | None:
    """The user's repository when this process is a DVC stage in a temporary copy of it; None otherwise."""
    root = os.environ.get("DVC_ROOT")
    if not root or Path(root).resolve() == Path.cwd().resolve():
        return None
    return Path(root).resolve()


def config_overrides() -> list[str]:
    """Hydra overrides that let a copy read the user's git-ignored conf/local/ (the copy's own conf/ comes first,
    so only what git does not carry is taken from the repository)."""
    root = origin()
    return [] if root is None else [f'hydra.searchpath=["file://{root / "conf"}"]']


def relocated(job: JobConfig) -> JobConfig:
    """`job` with a relative sqlite store, runs/ and checkpoints/ in the user's repository when running in a copy
    of it; unchanged otherwise (and so are absolute paths and remote stores)."""
    root = origin()
    if root is None:
        return job
    tracking, paths = job.tracking, job.paths
    store = sqlite_file(tracking.uri)
    if store is not None and not store.is_absolute():
        tracking = dataclasses.replace(tracking, uri=f"sqlite:///{root / store}")
    paths = dataclasses.replace(paths, **{key: str(root / getattr(paths, key)) for key in SHARED_PATHS
                                          if not Path(getattr(paths, key)).is_absolute()})
    log.info("in DVC's temporary copy %s of %s: the run is tracked in %s, its folders are in %s", Path.cwd(), root,
             tracking.uri, ", ".join(getattr(paths, key) for key in SHARED_PATHS))
    return dataclasses.replace(job, tracking=tracking, paths=paths)
