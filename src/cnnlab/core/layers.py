"""Layers Keras 3 lacks (a fast pad-and-shift here; the seed's ImageDataGenerator in cnnlab.core.generator), and
the registry that makes each of cnnlab's layers usable by name in a layer spec. Written with keras.ops so they
run on every backend and inside the compiled step; registered with Keras too, so that saved models load again
(also through MLflow)."""

from __future__ import annotations

import keras
from keras import ops

CUSTOM_LAYERS: dict[str, type[keras.layers.Layer]] = {}


def custom_layer(cls: type[keras.layers.Layer]) -> type[keras.layers.Layer]:
    """Register one of cnnlab's layers: by its class name for layer specs (`type: RandomPadShift`) and with Keras
    for loading. A registry filled by this decorator, not a list of the classes: a project then reaches only the
    layers its specs name, so adding a layer changes no other project's run key (cnnlab.config.code)."""
    CUSTOM_LAYERS[cls.__name__] = keras.saving.register_keras_serializable(package="cnnlab")(cls)
    return cls


@custom_layer
class RandomPadShift(keras.layers.Layer):
    """Pad-and-random-shift (the standard CIFAR "random crop" with padding) as batched tensor ops that compile
    into the training step: each image is padded by `pad` pixels and a 32x32 window at a random offset in
    [0, 2*pad] is taken, by multiplying with one-hot row and column selectors (two small einsums instead of
    the per-image affine resampling of keras.layers.RandomTranslation). Identity at inference."""

    def __init__(self, pad: int = 4, mode: str = "reflect", seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if mode not in ("reflect", "constant", "symmetric"):
            raise ValueError(f"RandomPadShift mode={mode!r} is not allowed: reflect, constant or symmetric")
        self.pad, self.mode, self.seed = int(pad), mode, seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def _selectors(self, batch, size: int, dtype):
        offsets = keras.random.randint((batch, 1), 0, 2 * self.pad + 1, seed=self.seed_generator)
        positions = ops.arange(size)[None, :] + offsets  # (batch, size): padded index of each output index
        return ops.one_hot(positions, size + 2 * self.pad, dtype=dtype)  # (batch, size, size + 2 pad)

    def call(self, x, training=None):
        if not training or self.pad == 0:
            return x
        batch, height, width = ops.shape(x)[0], x.shape[1], x.shape[2]
        p = self.pad
        padded = ops.pad(x, [[0, 0], [p, p], [p, p], [0, 0]], mode=self.mode)
        rows = self._selectors(batch, height, x.dtype)
        cols = self._selectors(batch, width, x.dtype)
        shifted = ops.einsum("bih,bhwc->biwc", rows, padded)
        return ops.einsum("bjw,biwc->bijc", cols, shifted)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "pad": self.pad, "mode": self.mode, "seed": self.seed}

