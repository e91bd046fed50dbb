"""Layers Keras 3 lacks but the seed's ImageDataGenerator had (channel shift, samplewise standardisation,
ZCA whitening). Written with keras.ops so they run on every backend and inside the compiled step; registered
so that saved models load again (also through MLflow)."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops


@keras.saving.register_keras_serializable(package="cnnlab")
class RandomChannelShift(keras.layers.Layer):
    """ImageDataGenerator's channel_shift_range: add one random offset in [-intensity, intensity] to every
    pixel of an image, then clip to the image's own value range. Identity at inference."""

    def __init__(self, intensity: float, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.intensity = float(intensity)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, x, training=None):
        if not training or self.intensity == 0:
            return x
        shift = keras.random.uniform(
            (ops.shape(x)[0], 1, 1, 1), -self.intensity, self.intensity, seed=self.seed_generator, dtype=x.dtype
        )
        low = ops.min(x, axis=(1, 2, 3), keepdims=True)
        high = ops.max(x, axis=(1, 2, 3), keepdims=True)
        return ops.clip(x + shift, low, high)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "intensity": self.intensity, "seed": self.seed}


@keras.saving.register_keras_serializable(package="cnnlab")
class SamplewiseStandardization(keras.layers.Layer):
    """ImageDataGenerator's samplewise_center / samplewise_std_normalization: each image to zero mean and
    unit standard deviation over all its pixels. Applied in training and inference alike."""

    def __init__(self, center: bool = True, scale: bool = True, epsilon: float = 1e-6, **kwargs):
        super().__init__(**kwargs)
        self.center, self.scale, self.epsilon = bool(center), bool(scale), float(epsilon)

    def call(self, x):
        axes = tuple(range(1, len(x.shape)))
        if self.center:
            x = x - ops.mean(x, axis=axes, keepdims=True)
        if self.scale:
            x = x / (ops.std(x, axis=axes, keepdims=True) + self.epsilon)
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "center": self.center, "scale": self.scale, "epsilon": self.epsilon}


@keras.saving.register_keras_serializable(package="cnnlab")
class ZCAWhitening(keras.layers.Layer):
    """ImageDataGenerator's zca_whitening: x -> (x - mean) @ W with W = U diag(1/sqrt(s + eps)) U^T from the
    eigendecomposition of the training images' covariance (what the generator's SVD computes, faster).
    Fitted once with `adapt`, like keras.layers.Normalization."""

    def __init__(self, epsilon: float = 1e-6, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = float(epsilon)

    def build(self, input_shape):
        features = int(np.prod(input_shape[1:]))
        self.mean = self.add_weight(name="mean", shape=(features,), initializer="zeros", trainable=False)
        self.components = self.add_weight(
            name="components", shape=(features, features), initializer="identity", trainable=False
        )

    def adapt(self, data: np.ndarray) -> None:
        """Fit mean and whitening matrix on images shaped (n, h, w, c)."""
        flat = np.asarray(data, dtype=np.float64).reshape(len(data), -1)
        if not self.built:
            self.build((None, *np.shape(data)[1:]))
        mean = flat.mean(axis=0)
        flat -= mean
        sigma = flat.T @ flat / len(flat)
        s, u = np.linalg.eigh(sigma)
        s = np.clip(s, 0, None)  # rounding can leave tiny negative eigenvalues
        components = (u * (1.0 / np.sqrt(s + self.epsilon))) @ u.T
        self.mean.assign(mean.astype("float32"))
        self.components.assign(components.astype("float32"))

    def call(self, x):
        shape = ops.shape(x)
        flat = ops.reshape(x, (shape[0], -1))
        white = ops.matmul(flat - ops.cast(self.mean, x.dtype), ops.cast(self.components, x.dtype))
        return ops.reshape(white, shape)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}


@keras.saving.register_keras_serializable(package="cnnlab")
class SymmetricRandomShear(keras.layers.RandomShear):
    """keras.layers.RandomShear (shear by up to +/- factor) whose saved config loads again: Keras 3.15 saves
    the factor as [-f, f], which its own constructor refuses."""

    def __init__(self, x_factor: float = 0.0, y_factor: float = 0.0, **kwargs):
        super().__init__(x_factor=x_factor, y_factor=y_factor, **kwargs)
        self.factors = (float(x_factor), float(y_factor))

    def get_config(self):
        return {**super().get_config(), "x_factor": self.factors[0], "y_factor": self.factors[1]}


@keras.saving.register_keras_serializable(package="cnnlab")
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


CUSTOM_LAYERS: dict[str, type[keras.layers.Layer]] = {
    cls.__name__: cls
    for cls in (RandomChannelShift, RandomPadShift, SamplewiseStandardization, SymmetricRandomShear, ZCAWhitening)
}
