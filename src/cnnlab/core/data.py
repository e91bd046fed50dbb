"""CIFAR-10's arrays: read out of the official archive layout, written as a compact .npz of uint8 arrays, read back,
and split into what a model is fitted on, validated on and tested on.

The archive is read member by member (never extracted onto the disk), and only plain files of numpy arrays are
unpickled. The .npz has fixed member dates, so the same arrays always give the same bytes. Loading hashes the bytes
it parses, so a run records the checksum of exactly the arrays it trained on."""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
ARRAYS = ("x_train", "y_train", "x_test", "y_test")


class DataError(RuntimeError):
    """The data cannot be fetched, verified or parsed; the message says which file or value and why."""


@dataclass(frozen=True)
class Dataset:
    """uint8 images (n, 32, 32, 3), integer labels, class names and the sha256 of the prepared file they came
    from."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: list[str]
    checksum: str


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


def read_archive(archive: Path) -> tuple[dict[str, np.ndarray], list[str]]:
    """The four arrays and the class names of a CIFAR-10 python archive."""
    with tarfile.open(archive, "r:gz") as tar:
        _check_members(tar)
        train = [_images(_read_member(tar, b), b) for b in TRAIN_BATCHES]
        x_test, y_test = _images(_read_member(tar, "test_batch"), "test_batch")
        meta = _read_member(tar, "batches.meta")
    class_names = [n.decode() if isinstance(n, bytes) else n for n in meta["label_names"]]
    arrays = {"x_train": np.concatenate([x for x, _ in train]), "y_train": np.concatenate([y for _, y in train]),
              "x_test": x_test, "y_test": y_test}
    return arrays, class_names


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez's layout with fixed member dates, so the same arrays always give the same bytes (a rerun of
    DVC's prepare stage then changes nothing downstream)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, array in arrays.items():
            member = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with archive.open(member, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(array), allow_pickle=False)


def read_npz(path: Path, class_names: list[str]) -> Dataset:
    """The prepared arrays, with the sha256 of the very bytes they were parsed from."""
    raw = path.read_bytes()
    with np.load(io.BytesIO(raw)) as d:
        arrays = {k: d[k] for k in ARRAYS}
    return Dataset(**arrays, class_names=class_names, checksum=hashlib.sha256(raw).hexdigest())


def fit_count(images: int, validation_split: float) -> int:
    """How many training images are fitted on: the last `validation_split` of them are held out."""
    return images - int(images * validation_split)


def splits(data: Dataset, validation_split: float) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The images and integer labels of each split a run uses: `training` (fitted on), `validation` (the last
    `validation_split` of the training set, absent when 0) and `test`."""
    n_fit = fit_count(len(data.x_train), validation_split)
    parts = {"training": (data.x_train[:n_fit], data.y_train[:n_fit])}
    if n_fit < len(data.x_train):
        parts["validation"] = (data.x_train[n_fit:], data.y_train[n_fit:])
    return {**parts, "test": (data.x_test, data.y_test)}


def one_hot(labels: np.ndarray, classes: int = 10) -> np.ndarray:
    return np.eye(classes, dtype="float32")[np.asarray(labels, dtype=np.int64)]
