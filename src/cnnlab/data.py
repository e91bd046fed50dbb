"""CIFAR-10 on disk: fetch the archive (download or copy a mirror, checksummed), prepare it once into a compact
.npz of uint8 arrays, load it. Safe for many processes at once: building happens under one file lock per data
set, every file is written under a unique temporary name and renamed into place, and the prepared data
records what it was made from, so data made with other settings is rebuilt, never silently reused. Nothing is
fetched when valid prepared data exists; a corrupt archive is never parsed, and the archive is read member by
member, never extracted onto the disk."""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import shutil
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock
from tqdm import tqdm

from cnnlab import synth
from cnnlab.files import atomic_write, remove_partials, temporary_beside

log = logging.getLogger(__name__)

TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
MIRROR_HINT = (
    "Offline? Use a mirror: export CNNLAB_DATA_SOURCE=/path/to/cifar-10-python.tar.gz (or another URL) and "
    "CNNLAB_DATA_MD5=<its md5>, or set `mirror.source`/`mirror.md5` in the git-ignored conf/local/default.yaml."
)


class DataError(RuntimeError):
    """The data cannot be fetched, verified or parsed; the message says which file or value and why."""


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

    @classmethod
    def from_config(cls, cfg: Any) -> DataSpec:
        """From the composed config: `data`, `paths.data`, and `mirror` (used for downloaded data only)."""
        data = cfg.data
        source = cfg.mirror.source if data.generate is None and cfg.mirror.source else data.source
        generate = dict(data.generate) if data.generate is not None else None
        return cls(data.name, str(source), data_md5(cfg), data.archive, Path(cfg.paths.data),
                   int(data.download_retries), generate)

    @property
    def archive_path(self) -> Path:
        return self.root / "raw" / self.name / self.archive

    @property
    def prepared_dir(self) -> Path:
        return self.root / "prepared" / self.name

    @property
    def identity(self) -> dict[str, Any]:
        """What prepared data must have been made from to be this data set."""
        return {"name": self.name, "md5": self.md5, "generate": self.generate}

    def lock(self) -> FileLock:
        """The inter-process lock under which this data set is fetched and prepared."""
        self.root.mkdir(parents=True, exist_ok=True)
        return FileLock(self.root / f".{self.name}.lock")


def data_md5(cfg: Any) -> str | None:
    """The md5 the archive must have: the mirror's when a mirror replaces a downloaded data set; None for
    generated data (its archive is checked against the md5 recorded when it was made)."""
    if cfg.data.generate is not None:
        return None
    return cfg.mirror.md5 if cfg.mirror.source else cfg.data.md5


@dataclass(frozen=True)
class Dataset:
    """uint8 images (n, 32, 32, 3), integer labels, class names and the prepared file's sha256."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: list[str]
    checksum: str


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


def _copy_local(source: Path, target: Path) -> None:
    if not source.is_file():
        raise DataError(f"data source {str(source)!r} is not a file (a local source must be an existing "
                        f"archive, or give an http(s) URL). {MIRROR_HINT}")
    shutil.copyfile(source, target)


def fetch(spec: DataSpec) -> Path:
    """The verified archive at `spec.archive_path`, fetched only when missing, corrupt or made otherwise."""
    with spec.lock():
        return _fetch(spec)


def _fetch(spec: DataSpec) -> Path:
    target = spec.archive_path
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_partials(target.parent, target.name)
    if spec.generate is not None:
        return _generate(spec)
    if target.exists():
        actual = file_digest(target)
        if actual == spec.md5:
            return target
        log.warning("%s has md5 %s, expected %s: fetching it again", target, actual, spec.md5)
        target.unlink()
    partial = temporary_beside(target)
    error = ""
    for attempt in range(1, spec.retries + 1):
        try:
            if _is_url(spec.source):
                _download(spec.source, partial)
            else:
                _copy_local(Path(spec.source).expanduser(), partial)
        except (urllib.error.URLError, OSError, TimeoutError) as err:
            partial.unlink(missing_ok=True)
            error = f"could not fetch {spec.source}: {err}"
        else:
            actual = file_digest(partial)
            if actual == spec.md5:
                partial.replace(target)
                log.info("fetched %s (md5 %s)", target, actual)
                return target
            partial.unlink()
            error = f"checksum mismatch for {spec.source}: expected md5 {spec.md5}, got {actual}"
        if attempt < spec.retries:
            delay = 2 ** (attempt - 1)
            log.warning("%s (attempt %d of %d); retrying in %ds", error, attempt, spec.retries, delay)
            time.sleep(delay)
    raise DataError(f"{error} (after {spec.retries} attempt(s)). {MIRROR_HINT}")


def _generate(spec: DataSpec) -> Path:
    """Write the synthetic archive once per settings; its sidecar (md5 and settings) detects corruption and
    changed settings."""
    target = spec.archive_path
    sidecar = target.with_name(target.name + ".json")
    made = _read_json(sidecar)
    if target.exists() and made == {"md5": file_digest(target), "generate": spec.generate}:
        return target
    partial = temporary_beside(target)
    synth.write_archive(partial, **spec.generate)
    atomic_write(sidecar, json.dumps({"md5": file_digest(partial), "generate": spec.generate}) + "\n")
    partial.replace(target)
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


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR batches' dicts, lists and numpy arrays, and nothing that could run code."""

    ALLOWED = {
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"), ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise DataError(f"refusing to unpickle {module}.{name} from the CIFAR-10 archive")
        return super().find_class(module, name)


def _check_members(tar: tarfile.TarFile) -> None:
    """Refuse archives with members that would land outside their folder if extracted (`../x`, `/x`)."""
    for member in tar.getmembers():
        parts = Path(member.name).parts
        if member.name.startswith(("/", "\\")) or ".." in parts or member.issym() or member.islnk():
            raise DataError(f"{tar.name}: refusing unsafe archive member {member.name!r} (absolute path, '..' or "
                            "link); a CIFAR-10 archive holds plain files under cifar-10-batches-py/")


def _read_member(tar: tarfile.TarFile, name: str) -> dict[str, Any]:
    member = next((m for m in tar.getmembers() if m.isfile() and Path(m.name).name == name), None)
    if member is None:
        raise DataError(f"{tar.name}: no member named {name!r} (not a CIFAR-10 python archive?)")
    raw = _ArrayUnpickler(tar.extractfile(member), encoding="bytes").load()
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in raw.items()}


def _images(batch: dict[str, Any], name: str) -> tuple[np.ndarray, np.ndarray]:
    data = np.asarray(batch["data"], dtype=np.uint8)
    labels = np.asarray(batch["labels"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data) or labels.max(initial=0) > 9:
        raise DataError(f"{name}: expected (n, 3072) uint8 rows and n labels in 0-9, got {data.shape} "
                        f"and {labels.shape}")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez's layout with fixed member dates, so the same arrays always give the same bytes (a rerun of
    DVC's prepare stage then changes nothing downstream)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, array in arrays.items():
            member = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with archive.open(member, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(array), allow_pickle=False)


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
    """Convert the archive once into `prepared/<name>/arrays.npz` plus `info.json` (counts, checksums and the
    settings it was made from)."""
    with spec.lock():
        if _prepared(spec) is None:
            _prepare(spec)
    return spec.prepared_dir / "arrays.npz"


def _prepare(spec: DataSpec) -> None:
    archive = _fetch(spec)
    with tarfile.open(archive, "r:gz") as tar:
        _check_members(tar)
        train = [_images(_read_member(tar, b), b) for b in TRAIN_BATCHES]
        x_test, y_test = _images(_read_member(tar, "test_batch"), "test_batch")
        meta = _read_member(tar, "batches.meta")
    class_names = [n.decode() if isinstance(n, bytes) else n for n in meta["label_names"]]
    x_train = np.concatenate([x for x, _ in train])
    y_train = np.concatenate([y for _, y in train])
    folder = spec.prepared_dir
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("arrays.npz", "info.json"):
        remove_partials(folder, name)
    arrays = folder / "arrays.npz"
    partial = temporary_beside(arrays)
    _write_npz(partial, {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test})
    info = {
        "name": spec.name, "train": len(x_train), "test": len(x_test), "class_names": class_names,
        "archive_md5": file_digest(archive), "sha256": file_digest(partial, "sha256"), "made_from": spec.identity,
    }
    (folder / "info.json").unlink(missing_ok=True)  # never an info.json beside arrays it does not describe
    partial.replace(arrays)
    atomic_write(folder / "info.json", json.dumps(info, indent=2) + "\n")
    log.info("prepared %s: %d train, %d test images", arrays, len(x_train), len(x_test))


def load(spec: DataSpec) -> Dataset:
    """Prepared arrays, fetched and prepared first when missing, damaged or made from other settings (by one
    process; the others wait for it)."""
    info = _prepared(spec)
    if info is None:
        prepare(spec)
        info = _prepared(spec)
    if info is None:
        raise DataError(f"{spec.prepared_dir} changed while it was being loaded (another process preparing "
                        f"{spec.name} with other settings?); try again")
    with np.load(spec.prepared_dir / "arrays.npz") as d:
        arrays = {k: d[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    return Dataset(**arrays, class_names=info["class_names"], checksum=info["sha256"])
