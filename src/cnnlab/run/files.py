"""Files that a kill at any instant never leaves half-written: everything is written under a unique temporary
name beside its target and renamed into place in one step (a rename within a folder is atomic)."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

PARTIAL = ".partial"  # suffix of everything on its way to a final name


def write_atomically(path: Path, write: Callable[[Path], object], suffix: str = "") -> None:
    """Have `write` make the file under a temporary name beside `path` (ending in `suffix`, for writers that want
    one), then rename it to `path`: readers see the old file or the whole new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=PARTIAL + suffix)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write `data` to `path` so that readers see the old file or the whole new one, never a part."""
    write_atomically(path, lambda tmp: tmp.write_bytes(data.encode() if isinstance(data, str) else data))


def temporary_beside(path: Path, tag: str = "") -> Path:
    """A fresh, unused name in `path`'s folder for something that will be renamed to `path`."""
    return path.with_name(f".{path.name}.{tag or uuid.uuid4().hex[:12]}{PARTIAL}")


def remove_partials(folder: Path, name: str) -> None:
    """Delete what earlier, killed writers of `folder/name` left behind (call it holding the lock that makes you
    the only writer of that name)."""
    for stale in folder.glob(f".{name}.*{PARTIAL}*"):  # (a writer's own ending may follow PARTIAL)
        remove(stale)


def remove(path: Path) -> None:
    """Remove a file or folder, if it exists."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def replace_dir(staged: Path, target: Path) -> None:
    """Put the complete folder `staged` at `target`. An existing `target` is renamed aside first and deleted after,
    so `target` is always either the old folder or the new one (absent only between two renames)."""
    aside = None
    if target.exists():
        aside = temporary_beside(target, "old")
        remove(aside)
        os.replace(target, aside)
    os.replace(staged, target)
    if aside is not None:
        remove(aside)


def publish_copy(source: Path, target: Path, names: list[str],
                 before_rename: Callable[[Path], None] | None = None) -> None:
    """Copy the files `names` of the folder `source` to the folder `target`, published in one rename;
    `before_rename` may rewrite the staged copy first."""
    staged = temporary_beside(target, "copy")
    remove(staged)
    staged.mkdir(parents=True)
    for name in names:
        shutil.copy2(source / name, staged / name)
    if before_rename is not None:
        before_rename(staged)
    replace_dir(staged, target)


def writable_dir(path: Path) -> str | None:
    """Why `path` cannot be used as a folder to write into, or None when it can. Nothing is created: the folder,
    or the nearest one above it that exists, is probed with a temporary file (tried for real, because a
    permission check says yes to root on a read-only file system)."""
    existing = path.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".cnnlab-probe-"):
            pass
    except OSError as err:
        return f"cannot write into {existing}: {err.strerror or err}"
    return None
