"""Batches cut on the accelerator: Keras' own data adapters copy every batch from host memory, which dominates
small-batch projects on a GPU (P08-P11 at batch 32). DeviceBatches puts the uint8 images and one-hot labels on the
device once and cuts each batch there (`keras.ops.take` along the epoch's order), as a keras.utils.PyDataset so
that fit, callbacks and steps_per_execution work as usual. JAX passes device arrays through untouched."""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np
from keras import ops


class DeviceBatches(keras.utils.PyDataset):
    """(x, y) batches of one epoch, in the given order, sliced on the device from tensors transferred once."""

    def __init__(self, x: Any, y: Any, batch_size: int, order: np.ndarray, **kwargs) -> None:
        super().__init__(**kwargs)
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.order = ops.convert_to_tensor(order.astype("int32"))
        self.size = len(order)

    @staticmethod
    def transfer(x: np.ndarray, y: np.ndarray) -> tuple[Any, Any]:
        """The arrays as device tensors, once per training."""
        return ops.convert_to_tensor(x), ops.convert_to_tensor(y)

    @property
    def num_batches(self) -> int:
        return math.ceil(self.size / self.batch_size)

    def __len__(self) -> int:
        return self.num_batches

    def __getitem__(self, index: int):
        rows = self.order[index * self.batch_size:(index + 1) * self.batch_size]
        return ops.take(self.x, rows, axis=0), ops.take(self.y, rows, axis=0)
