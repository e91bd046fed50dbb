"""CIFAR-10 on disk: fetch the archive (download or copy a mirror, checksummed, atomic), prepare it once into
a compact .npz of uint8 arrays, load it. Nothing is fetched when prepared data exists; a corrupt archive is
never parsed, and the archive is read member by member, never extracted onto the disk."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import shutil
import tarfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from cnnlab import synth

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
        source, md5 = data.source, data.md5
        if data.generate is None and cfg.mirror.source:
            source, md5 = cfg.mirror.source, cfg.mirror.md5
        generate = dict(data.generate) if data.generate is not None else None
        return cls(data.name, str(source), md5, data.archive, Path(cfg.paths.data),
                   int(data.download_retries), generate)

    @property
    def archive_path(self) -> Path:
        return self.root / "raw" / self.name / self.archive

    @property
    def prepared_dir(self) -> Path:
        return self.root / "prepared" / self.name


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
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
    """The verified archive at `spec.archive_path`, fetched only when missing or corrupt."""
    target = spec.archive_path
    target.parent.mkdir(parents=True, exist_ok=True)
    if spec.generate is not None:
        return _generate(spec)
    if target.exists():
        actual = file_digest(target)
        if actual == spec.md5:
            return target
        log.warning("%s has md5 %s, expected %s: fetching it again", target, actual, spec.md5)
        target.unlink()
    partial = target.with_name(target.name + ".part")
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
                os.replace(partial, target)
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
    """Write the synthetic archive once; its md5 sidecar detects later corruption."""
    target, sidecar = spec.archive_path, spec.archive_path.with_suffix(".md5")
    if target.exists() and sidecar.exists() and file_digest(target) == sidecar.read_text().strip():
        return target
    partial = target.with_name(target.name + ".part")
    synth.write_archive(partial, **spec.generate)
    sidecar.write_text(file_digest(partial) + "\n")
    os.replace(partial, target)
    return target


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


def prepare(spec: DataSpec) -> Path:
    """Convert the archive once into `prepared/<name>/arrays.npz` plus `info.json` (counts, checksums)."""
    arrays, info_path = spec.prepared_dir / "arrays.npz", spec.prepared_dir / "info.json"
    if arrays.exists() and info_path.exists():
        info = json.loads(info_path.read_text())
        if file_digest(arrays, "sha256") == info.get("sha256"):
            return arrays
        log.warning("%s does not match the checksum in %s: preparing it again", arrays, info_path)
    archive = fetch(spec)
    with tarfile.open(archive, "r:gz") as tar:
        _check_members(tar)
        train = [_images(_read_member(tar, b), b) for b in TRAIN_BATCHES]
        x_test, y_test = _images(_read_member(tar, "test_batch"), "test_batch")
        meta = _read_member(tar, "batches.meta")
    class_names = [n.decode() if isinstance(n, bytes) else n for n in meta["label_names"]]
    x_train = np.concatenate([x for x, _ in train])
    y_train = np.concatenate([y for _, y in train])
    spec.prepared_dir.mkdir(parents=True, exist_ok=True)
    partial = arrays.with_name("arrays.part.npz")
    np.savez(partial, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    info = {
        "name": spec.name, "train": len(x_train), "test": len(x_test), "class_names": class_names,
        "archive_md5": file_digest(archive), "sha256": file_digest(partial, "sha256"),
    }
    os.replace(partial, arrays)
    info_path.write_text(json.dumps(info, indent=2) + "\n")
    log.info("prepared %s: %d train, %d test images", arrays, len(x_train), len(x_test))
    return arrays


def load(spec: DataSpec) -> Dataset:
    """Prepared arrays (fetching and preparing first when needed)."""
    arrays = prepare(spec)
    info = json.loads((spec.prepared_dir / "info.json").read_text())
    with np.load(arrays) as d:
        return Dataset(d["x_train"], d["y_train"], d["x_test"], d["y_test"], info["class_names"], info["sha256"])
