"""A tiny synthetic CIFAR-10 in the official archive layout, so tests and CPU smoke runs exercise the real
extraction and parsing code. Classes differ by colour and stripe direction/frequency plus noise, so a small
CNN learns them within a few epochs."""

from __future__ import annotations

import gzip
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np

CLASS_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
BATCH_DIR = "cifar-10-batches-py"


def make_images(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n images (n, 32, 32, 3) uint8 and labels, cycling through the ten classes."""
    labels = np.arange(n) % 10
    rng.shuffle(labels)
    yy, xx = np.mgrid[0:32, 0:32]
    palette = np.random.default_rng(1234).uniform(40, 215, size=(10, 3))
    images = np.empty((n, 32, 32, 3), dtype=np.float32)
    for i, c in enumerate(labels):
        angle = np.pi * c / 10
        freq = 0.25 + 0.08 * (c % 5)
        stripes = np.sin(freq * (np.cos(angle) * xx + np.sin(angle) * yy) + rng.uniform(0, 2 * np.pi))
        images[i] = palette[c] + 35 * stripes[..., None] + rng.normal(0, 20, size=(32, 32, 3))
    return np.clip(images, 0, 255).astype(np.uint8), labels.astype(np.int64)


def _batch(images: np.ndarray, labels: np.ndarray, name: str) -> bytes:
    """One pickled batch as the official files have it: bytes keys, rows of R, G then B planes."""
    rows = images.transpose(0, 3, 1, 2).reshape(len(images), 3072)
    batch = {
        b"batch_label": name.encode(),
        b"labels": [int(v) for v in labels],
        b"data": rows,
        b"filenames": [f"synthetic_{name}_{i:05d}.png".encode() for i in range(len(images))],
    }
    return pickle.dumps(batch, protocol=2)


def write_archive(path: Path, train_per_batch: int = 100, test: int = 200, seed: int = 0) -> None:
    """Write a cifar-10-python.tar.gz look-alike to `path` (deterministic for a given seed)."""
    rng = np.random.default_rng(seed)
    members = {}
    for b in range(1, 6):
        members[f"data_batch_{b}"] = _batch(*make_images(train_per_batch, rng), f"training batch {b} of 5")
    members["test_batch"] = _batch(*make_images(test, rng), "testing batch 1 of 1")
    members["batches.meta"] = pickle.dumps(
        {b"label_names": [c.encode() for c in CLASS_NAMES], b"num_cases_per_batch": train_per_batch,
         b"num_vis": 3072},
        protocol=2,
    )
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(f"{BATCH_DIR}/{name}")
            info.size, info.mtime = len(payload), 0
            tar.addfile(info, io.BytesIO(payload))
    with open(path, "wb") as f, gzip.GzipFile(fileobj=f, mode="wb", mtime=0) as gz:
        gz.write(raw.getvalue())
