"""CIFAR-10 on disk: fetch the archive (download or copy a mirror, checksummed, or generate the tiny set), prepare
it once into `prepared/<name>/<digest of what it was made from>/` (cnnlab.core.data does the reading and writing),
load it. Safe for many processes at once: building happens under one file lock per data set, every file is
written under a unique temporary name and renamed into place, and data made from other settings lives in another
folder, so nothing is rebuilt under a job that is reading it. Nothing is fetched when valid prepared data exists;
an archive already there is never deleted: one whose checksum is not the configured one stops the job, naming
both checksums, before anything is downloaded."""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import shutil
import tarfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential
from tqdm import tqdm

from cnnlab.config.schema import DataConfig, MirrorConfig
from cnnlab.config.settings import data_md5, plain, uses_mirror
from cnnlab.core import synth
from cnnlab.core.data import DataError, Dataset, read_archive, read_npz, write_npz
from cnnlab.run.files import atomic_write, remove_partials, write_atomically

log = logging.getLogger(__name__)

MIRROR_HINT = (
    "Offline? Use a mirror: export CNNLAB_DATA_SOURCE=/path/to/cifar-10-python.tar.gz (or another URL) and "
    "CNNLAB_DATA_MD5=<its md5>, or set `mirror.source`/`mirror.md5` in the git-ignored conf/local/default.yaml "
    "(it lasts beyond this shell)."
)


@dataclass(frozen=True)
class DataSpec:
    """Where one data set comes from and where it lives on disk."""

    name: str
    source: str
    md5: str | None
    archive: str
    root: Path
    retries: int = 3
    generate: dict[str, Any] | None = None
    mirrored: bool = False  # the source is the mirror's (mirror.source, CNNLAB_DATA_SOURCE)
    first_wait: float = 1.0  # seconds before the second attempt, doubling before each later one

    @classmethod
    def from_config(cls, data: DataConfig, mirror: MirrorConfig, root: str | Path) -> DataSpec:
        """From the `data` and `mirror` sections (the mirror is used for downloaded data only) and `paths.data`."""
        mirrored = uses_mirror(data, mirror)
        source = mirror.source if mirrored else data.source
        return cls(data.name, str(source), data_md5(data, mirror), data.archive, Path(root), data.download_retries,
                   plain(data.generate), mirrored)

    @property
    def source_setting(self) -> str:
        """The setting that gives the source, as the user set it."""
        return "mirror.source (CNNLAB_DATA_SOURCE)" if self.mirrored else "data.source"

    @property
    def hint(self) -> str:
        """What to do when the source cannot be fetched: fix the mirror given, or give one."""
        if self.mirrored:
            return (f"Check {self.source_setting}={self.source!r}: the path of an existing cifar-10-python.tar.gz "
                    "or a URL this machine can reach, with mirror.md5 (CNNLAB_DATA_MD5) its md5.")
        return MIRROR_HINT

    @property
    def archive_path(self) -> Path:
        return self.root / "raw" / self.name / self.archive

    @property
    def identity(self) -> dict[str, Any]:
        """What prepared data must have been made from to be this data set."""
        return {"name": self.name, "md5": self.md5, "generate": self.generate}

    @property
    def prepared_dir(self) -> Path:
        """`prepared/<name>/<12 hex digits of the identity>/`: one folder per thing it can be made from."""
        digest = hashlib.sha256(json.dumps(self.identity, sort_keys=True).encode()).hexdigest()[:12]
        return self.root / "prepared" / self.name / digest

    def lock(self) -> FileLock:
        """The inter-process lock under which this data set is fetched and prepared."""
        self.root.mkdir(parents=True, exist_ok=True)
        return FileLock(self.root / f".{self.name}.lock")


def file_digest(path: Path, algorithm: str = "md5") -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, algorithm).hexdigest()


def _is_url(source: str) -> bool:
    return source.split("://", 1)[0] in {"http", "https", "ftp", "file"} and "://" in source


def _download(url: str, target: Path) -> None:
    with urllib.request.urlopen(url, timeout=60) as response, open(target, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {Path(url).name}") as bar:
            for block in iter(lambda: response.read(1 << 20), b""):
                out.write(block)
                bar.update(len(block))


def _copy_local(spec: DataSpec, target: Path) -> None:
    source = Path(spec.source).expanduser()
    if not source.is_file():
        raise DataError(_not_a_file(spec))
    shutil.copyfile(source, target)


def _not_a_file(spec: DataSpec) -> str:
    return (f"{spec.source_setting}={spec.source!r} is not a file (a local source must be an existing archive, or "
            f"give an http(s) URL). {spec.hint}")


def _kept(spec: DataSpec, actual: str) -> str:
    return (f"{spec.archive_path} has md5 {actual}, but the configured archive has md5 {spec.md5}: it is kept as it "
            "is. Is a mirror's setting missing in this shell (CNNLAB_DATA_SOURCE, CNNLAB_DATA_MD5, or "
            "conf/local/default.yaml)? To fetch the configured archive instead, remove that file first.")


def check_source(spec: DataSpec) -> None:
    """Refuse now (DataError, before anything starts or is created) what is wrong with the data source without a
    download: an archive in place with another md5, a local source that is not a file. Nothing to check when the
    prepared data is there (nothing is fetched then) or the data is generated."""
    if spec.generate is not None:
        return
    info = _read_json(spec.prepared_dir / "info.json")
    if info is not None and info.get("made_from") == spec.identity and (spec.prepared_dir / "arrays.npz").exists():
        return
    if spec.archive_path.exists():
        actual = file_digest(spec.archive_path)
        if actual != spec.md5:
            raise DataError(_kept(spec, actual))
    elif not _is_url(spec.source) and not Path(spec.source).expanduser().is_file():
        raise DataError(_not_a_file(spec))


def fetch(spec: DataSpec) -> Path:
    """The verified archive at `spec.archive_path`, fetched only when missing."""
    with spec.lock():
        return _fetch(spec)


def _fetch(spec: DataSpec) -> Path:
    """The archive, fetched when missing; a failure leaves no empty folder behind."""
    made = [f for f in (spec.archive_path.parent, spec.archive_path.parent.parent) if not f.exists()]
    try:
        return _fetch_into(spec)
    except BaseException:
        for folder in made:  # the archive's folder, then raw/, each only when this call made it and it is empty
            with suppress(OSError):
                folder.rmdir()
        raise


def _fetch_into(spec: DataSpec) -> Path:
    target = spec.archive_path
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_partials(target.parent, target.name)
    if spec.generate is not None:
        return _generate(spec)
    if target.exists():
        actual = file_digest(target)
        if actual == spec.md5:
            return target
        raise DataError(_kept(spec, actual))
    fetching = Retrying(retry=retry_if_exception_type(_NotFetched), stop=stop_after_attempt(spec.retries),
                        wait=wait_exponential(multiplier=spec.first_wait, exp_base=2), before_sleep=_retrying(spec),
                        reraise=True)
    try:
        fetching(write_atomically, target, lambda partial: _fetch_once(spec, partial))
    except _NotFetched as err:
        raise DataError(f"{err} (after {spec.retries} attempt(s)). {spec.hint}") from None
    log.info("fetched %s (md5 %s)", target, spec.md5)
    return target


class _NotFetched(Exception):
    """One attempt at fetching the archive failed, as the message says; the next may not (data.download_retries
    attempts, DataSpec.first_wait apart, doubling: 1 s, 2 s, 4 s, ...)."""


def _fetch_once(spec: DataSpec, partial: Path) -> None:
    """Download or copy the source to `partial` and check its md5 (a DataError, a local source that is not a file,
    is not tried again)."""
    try:
        if _is_url(spec.source):
            _download(spec.source, partial)
        else:
            _copy_local(spec, partial)
    except (urllib.error.URLError, OSError, TimeoutError) as err:
        raise _NotFetched(f"could not fetch {spec.source}: {err}") from err
    actual = file_digest(partial)
    if actual != spec.md5:
        raise _NotFetched(f"checksum mismatch for {spec.source}: expected md5 {spec.md5}, got {actual}")


def _retrying(spec: DataSpec) -> Callable[[RetryCallState], None]:
    def say(state: RetryCallState) -> None:
        log.warning("%s (attempt %d of %d); retrying in %ds", state.outcome.exception(), state.attempt_number,
                    spec.retries, state.next_action.sleep)

    return say


def _generate(spec: DataSpec) -> Path:
    """Write the synthetic archive once per settings; its sidecar (md5 and settings) detects corruption and
    changed settings (generated data is cnnlab's own: made again, never fetched)."""
    target = spec.archive_path
    sidecar = target.with_name(target.name + ".json")
    made = _read_json(sidecar)
    if target.exists() and made == {"md5": file_digest(target), "generate": spec.generate}:
        return target

    def write(partial: Path) -> None:  # the sidecar first: it describes the archive about to be renamed into place
        synth.write_archive(partial, **spec.generate)
        atomic_write(sidecar, json.dumps({"md5": file_digest(partial), "generate": spec.generate}) + "\n")

    write_atomically(target, write)
    log.info("generated %s with %s", target, spec.generate)
    return target


def _read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from `path`, or None when it is missing or unreadable (then whatever it describes is
    rebuilt)."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _prepared(spec: DataSpec) -> dict[str, Any] | None:
    """The prepared data's info when it is complete, intact and made from this data set; otherwise None."""
    info = _read_json(spec.prepared_dir / "info.json")
    arrays = spec.prepared_dir / "arrays.npz"
    if info is None or info.get("made_from") != spec.identity or not arrays.exists():
        return None
    if file_digest(arrays, "sha256") != info.get("sha256"):
        log.warning("%s does not match the checksum in its info.json: preparing it again", arrays)
        return None
    return info


def prepare(spec: DataSpec) -> Path:
    """Convert the archive once into `<prepared_dir>/arrays.npz` plus `info.json` (counts, checksums and the
    settings it was made from)."""
    with spec.lock():
        if _prepared(spec) is None:
            _prepare(spec)
    return spec.prepared_dir / "arrays.npz"


def _prepare(spec: DataSpec) -> None:
    archive = _fetch(spec)
    try:
        arrays, class_names = read_archive(archive)
    except (tarfile.TarError, EOFError, zlib.error, pickle.UnpicklingError, OSError) as err:
        raise DataError(f"{archive} is not a readable CIFAR-10 python archive ({type(err).__name__}: {err}), though "
                        f"its md5 is the configured {spec.md5}: is {spec.source_setting.split()[0]}'s md5 that of a "
                        "damaged copy? Remove the file and give a good copy with its md5") from None
    folder = spec.prepared_dir
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("arrays.npz", "info.json"):
        remove_partials(folder, name)
    target = folder / "arrays.npz"
    info: dict[str, Any] = {}

    def write(partial: Path) -> None:
        write_npz(partial, arrays)
        info.update({"name": spec.name, "train": len(arrays["x_train"]), "test": len(arrays["x_test"]),
                     "class_names": class_names, "archive_md5": file_digest(archive),
                     "sha256": file_digest(partial, "sha256"), "made_from": spec.identity})
        (folder / "info.json").unlink(missing_ok=True)  # never an info.json beside arrays it does not describe

    write_atomically(target, write)
    atomic_write(folder / "info.json", json.dumps(info, indent=2) + "\n")
    log.info("prepared %s: %d train, %d test images", target, info["train"], info["test"])


def load(spec: DataSpec) -> Dataset:
    """Prepared arrays, fetched and prepared first when missing, damaged or made from other settings (by one
    process; the others wait for it). The checksum is that of the bytes loaded."""
    info = _prepared(spec)
    if info is None:
        prepare(spec)
        info = _prepared(spec)
    if info is None:
        raise DataError(f"{spec.prepared_dir} changed while it was being loaded; try again")
    data = read_npz(spec.prepared_dir / "arrays.npz", info["class_names"])
    if data.checksum != info["sha256"]:
        raise DataError(f"{spec.prepared_dir / 'arrays.npz'} changed while it was being loaded (sha256 "
                        f"{data.checksum}, its info.json says {info['sha256']}); try again")
    return data
