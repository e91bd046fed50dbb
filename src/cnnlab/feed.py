"""Training batches from arrays kept on the accelerator.

`model.fit` on NumPy arrays copies every batch from host memory, which dominates small-batch projects on a
GPU (P08-P11 at batch 32). DeviceBatches puts the uint8 images and one-hot labels on the device once and cuts
each batch there (`keras.ops.take` with a per-epoch permutation), as a keras.utils.PyDataset so that fit,
callbacks and steps_per_execution work as usual. JAX passes device arrays through untouched."""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops


class DeviceBatches(keras.utils.PyDataset):
    """Shuffled (x, y) batches sliced on the device from arrays transferred once."""

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, seed: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.x, self.y = ops.convert_to_tensor(x), ops.convert_to_tensor(y)
        self.size, self.batch_size = len(x), batch_size
        self.rng = np.random.default_rng(seed)
        self.on_epoch_end()

    @property
    def num_batches(self) -> int:
        return math.ceil(self.size / self.batch_size)

    def __len__(self) -> int:
        return self.num_batches

    def __getitem__(self, index: int):
        rows = self.order[index * self.batch_size:(index + 1) * self.batch_size]
        return ops.take(self.x, rows, axis=0), ops.take(self.y, rows, axis=0)

    def on_epoch_end(self) -> None:
        self.order = ops.convert_to_tensor(self.rng.permutation(self.size).astype("int32"))
