"""tf-keras' ImageDataGenerator (which Keras 3 dropped) as two Keras 3 layers, so the seed's P11 augmentation
runs inside the compiled training step on every backend with the reference's exact semantics:

- `ImageDataGeneratorTransform`: `get_random_transform` + `apply_transform` (random, training only);
- `ImageDataGeneratorStandardize`: `standardize`, fitted by `adapt` as `fit` fits (always applied, so a saved
  model standardises test images with the training statistics).

The reference is tf_keras/src/preprocessing/image.py; every rule below follows its code, quirks included
(named where they surprise). Images are channels_last. Only keras, numpy and the standard library are used."""

from __future__ import annotations

import math
import warnings
from typing import Any

import keras
import numpy as np
from keras import ops

from cnnlab.core.layers import custom_layer

FILL_MODES = ("nearest", "reflect", "constant", "wrap")


def _matrices(rows: list[list[Any]]) -> Any:
    """(batch, 3, 3) matrices from per-image entries (tensors of shape (batch,) or numbers) of the first two
    rows; the third row is (0, 0, 1)."""
    like = next(v for row in rows for v in row if not isinstance(v, (int, float)))
    zeros, ones = ops.zeros_like(like), ops.ones_like(like)
    full = [[v if not isinstance(v, (int, float)) else zeros + v for v in row] for row in rows]
    full.append([zeros, zeros, ones])
    return ops.stack([ops.stack(row, axis=-1) for row in full], axis=-2)


@custom_layer
class ImageDataGeneratorTransform(keras.layers.Layer):
    """ImageDataGenerator's random transform, per image: one affine (rotation, shift, shear, zoom about the
    image centre) resampled once (bilinear, `fill_mode`), then the channel shift, then the horizontal flip,
    then the vertical flip. Identity at inference.

    Arguments mean what ImageDataGenerator's do: `rotation_range` and `shear_range` in degrees, shift ranges
    as fractions of the size (< 1) or pixels (a float >= 1: uniform; an int n: one of 0..n-1 with a random
    sign), `zoom_range` a float z (zx, zy drawn independently in [1-z, 1+z]) or a pair [lo, hi],
    `channel_shift_range` one offset for all channels, clipped to the image's own min/max.

    Kept from the reference on purpose (it is what the source trained with): `height_shift_range` moves the
    image horizontally (by a fraction of its height) and `width_shift_range` vertically (tf-keras#310), and the
    centre uses the height for the x coordinate; both are invisible for square images with equal ranges.
    `fill_mode="wrap"` wraps with period n (Keras' wrap, scipy's "grid-wrap"), not scipy's legacy "wrap"
    (period n - 1) that the reference gets: pixels sampled from outside the image differ there."""

    def __init__(
        self,
        rotation_range: float = 0.0,
        width_shift_range: float = 0.0,
        height_shift_range: float = 0.0,
        shear_range: float = 0.0,
        zoom_range: float | tuple[float, float] | list[float] = 0.0,
        channel_shift_range: float = 0.0,
        horizontal_flip: bool = False,
        vertical_flip: bool = False,
        fill_mode: str = "nearest",
        cval: float = 0.0,
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        # float32 even under a mixed policy: bilinear weights and clipping in bfloat16 would blur the values
        super().__init__(**{"dtype": "float32", **kwargs})
        if fill_mode not in FILL_MODES:
            raise ValueError(f"fill_mode={fill_mode!r}: ImageDataGenerator allows {FILL_MODES}")
        for name, value in (("width_shift_range", width_shift_range), ("height_shift_range", height_shift_range)):
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ValueError(f"{name}={value!r}: a float (fraction or pixels) or an int (pixels) is supported")
        if isinstance(zoom_range, (int, float)):
            self.zoom_bounds = (1.0 - zoom_range, 1.0 + zoom_range)
        elif len(zoom_range) == 2:
            self.zoom_bounds = (float(zoom_range[0]), float(zoom_range[1]))
        else:
            raise ValueError(f"zoom_range={zoom_range!r}: a float or a pair [lower, upper]")
        self.rotation_range, self.shear_range = float(rotation_range), float(shear_range)
        self.width_shift_range, self.height_shift_range = width_shift_range, height_shift_range
        self.zoom_range = zoom_range if isinstance(zoom_range, (int, float)) else list(self.zoom_bounds)
        self.channel_shift_range = float(channel_shift_range)
        self.horizontal_flip, self.vertical_flip = bool(horizontal_flip), bool(vertical_flip)
        self.fill_mode, self.cval, self.seed = fill_mode, float(cval), seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        # TensorFlow's XLA has no kernel for the resampling op, so jit_compile="auto" must leave XLA off there;
        # JAX jits it (and "auto" would otherwise run the whole step op by op)
        self.supports_jit = keras.backend.backend() != "tensorflow"

    def _uniform(self, batch: Any, low: float, high: float) -> Any:
        return keras.random.uniform((batch,), low, high, dtype="float32", seed=self.seed_generator)

    def _shift(self, batch: Any, spread: float, size: int) -> Any:
        """One shift per image in pixels, drawn as get_random_transform draws tx / ty."""
        if not spread:
            return ops.zeros((batch,), "float32")
        if isinstance(spread, int):  # np.random.choice(n) * np.random.choice([-1, 1])
            magnitude = keras.random.randint((batch,), 0, spread, seed=self.seed_generator)
            sign = 2 * keras.random.randint((batch,), 0, 2, seed=self.seed_generator) - 1
            return ops.cast(magnitude * sign, "float32")
        return self._uniform(batch, -spread, spread) * (size if spread < 1 else 1)

    def get_random_transform(self, batch: Any, image_shape: tuple[int, int]) -> dict[str, Any]:
        """Per-image parameters for `batch` images of (height, width), with get_random_transform's
        distributions and keys (each a tensor of shape (batch,); no channel shift is an offset of 0)."""
        height, width = image_shape
        zeros = ops.zeros((batch,), "float32")
        lower, upper = self.zoom_bounds
        zoom = (lower, upper) != (1, 1)
        return {
            "theta": self._uniform(batch, -self.rotation_range, self.rotation_range) if self.rotation_range
            else zeros,
            "tx": self._shift(batch, self.height_shift_range, height),
            "ty": self._shift(batch, self.width_shift_range, width),
            "shear": self._uniform(batch, -self.shear_range, self.shear_range) if self.shear_range else zeros,
            "zx": self._uniform(batch, lower, upper) if zoom else zeros + 1,
            "zy": self._uniform(batch, lower, upper) if zoom else zeros + 1,
            "flip_horizontal": ops.logical_and(self._uniform(batch, 0, 1) < 0.5, self.horizontal_flip),
            "flip_vertical": ops.logical_and(self._uniform(batch, 0, 1) < 0.5, self.vertical_flip),
            "channel_shift_intensity": self._uniform(batch, -self.channel_shift_range, self.channel_shift_range)
            if self.channel_shift_range else zeros,
        }

    @staticmethod
    def transform_matrices(params: dict[str, Any], image_shape: tuple[int, int]) -> Any:
        """(batch, 3, 3) output-to-input maps in (x=col, y=row) coordinates, composed as apply_affine_transform
        composes them: rotation @ shift @ shear @ zoom, about the centre (transform_matrix_offset_center).

        The reference builds this matrix in (x, y) order and swaps it into scipy's (row, col) index order
        (M' = P M P); keras.ops.image.affine_transform takes (x=col, y=row), so the unswapped matrix is the
        one it needs."""
        theta = params["theta"] * (math.pi / 180)
        shear = params["shear"] * (math.pi / 180)
        cos, sin = ops.cos(theta), ops.sin(theta)
        rotation = _matrices([[cos, -sin, 0], [sin, cos, 0]])
        shift = _matrices([[1, 0, params["tx"]], [0, 1, params["ty"]]])
        shearing = _matrices([[1, -ops.sin(shear), 0], [0, ops.cos(shear), 0]])
        zoom = _matrices([[params["zx"], 0, 0], [0, params["zy"], 0]])
        matrix = rotation @ shift @ shearing @ zoom
        height, width = image_shape
        o_x, o_y = height / 2 - 0.5, width / 2 - 0.5  # as the reference: the height for x
        offset = ops.convert_to_tensor([[1, 0, o_x], [0, 1, o_y], [0, 0, 1]], "float32")
        reset = ops.convert_to_tensor([[1, 0, -o_x], [0, 1, -o_y], [0, 0, 1]], "float32")
        return offset @ matrix @ reset

    def apply_transform(self, images: Any, params: dict[str, Any]) -> Any:
        """`images` (batch, height, width, channels) transformed by per-image `params` (as from
        get_random_transform), in apply_transform's order: affine, channel shift, horizontal flip, vertical flip."""
        height, width = images.shape[1], images.shape[2]
        matrices = self.transform_matrices(params, (height, width))
        flat = ops.reshape(matrices, (-1, 9))[:, :8]
        x = ops.image.affine_transform(images, flat, interpolation="bilinear", fill_mode=self.fill_mode,
                                       fill_value=self.cval, data_format="channels_last")
        if self.fill_mode == "constant":
            # scipy's "constant" fills every point outside [0, n - 1] with cval; Keras blends cval with the
            # edge pixel for points less than a pixel outside
            x = ops.where(self._outside(matrices, height, width)[..., None], ops.cast(self.cval, x.dtype), x)
        low = ops.min(x, axis=(1, 2, 3), keepdims=True)
        high = ops.max(x, axis=(1, 2, 3), keepdims=True)
        shift = ops.cast(ops.reshape(params["channel_shift_intensity"], (-1, 1, 1, 1)), x.dtype)
        x = ops.clip(x + shift, low, high)
        x = ops.where(ops.reshape(params["flip_horizontal"], (-1, 1, 1, 1)), ops.flip(x, axis=2), x)
        return ops.where(ops.reshape(params["flip_vertical"], (-1, 1, 1, 1)), ops.flip(x, axis=1), x)

    @staticmethod
    def _outside(matrices: Any, height: int, width: int) -> Any:
        """(batch, height, width): whether each output pixel samples a point outside the input image."""
        rows, cols = ops.meshgrid(ops.arange(height, dtype="float32"), ops.arange(width, dtype="float32"),
                                  indexing="ij")
        points = ops.stack([ops.reshape(cols, (-1,)), ops.reshape(rows, (-1,)), ops.ones((height * width,))])
        source = ops.reshape(ops.einsum("bij,jk->bik", matrices[:, :2], points), (-1, 2, height, width))
        x, y = source[:, 0], source[:, 1]
        return (x < 0) | (x > width - 1) | (y < 0) | (y > height - 1)

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        if not training:
            return inputs
        params = self.get_random_transform(ops.shape(inputs)[0], (inputs.shape[1], inputs.shape[2]))
        return self.apply_transform(inputs, params)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "rotation_range": self.rotation_range, "width_shift_range": self.width_shift_range,
            "height_shift_range": self.height_shift_range, "shear_range": self.shear_range,
            "zoom_range": self.zoom_range, "channel_shift_range": self.channel_shift_range,
            "horizontal_flip": self.horizontal_flip, "vertical_flip": self.vertical_flip,
            "fill_mode": self.fill_mode, "cval": self.cval, "seed": self.seed,
        }


@custom_layer
class ImageDataGeneratorStandardize(keras.layers.Layer):
    """ImageDataGenerator's `standardize` for each image, in its order: samplewise centre, samplewise std
    (+1e-6), featurewise (per-channel) centre, featurewise std (+1e-6), ZCA whitening. Applied in training and
    inference. `adapt` is ImageDataGenerator.fit: statistics of the images as given, in float32, kept as
    non-trainable weights so they save and load with the model; before `adapt` they are the identity.

    The constructor applies ImageDataGenerator.__init__'s rules, warning as it does: zca_whitening turns
    featurewise_center on and featurewise_std_normalization off; featurewise_std_normalization turns
    featurewise_center on; samplewise_std_normalization turns samplewise_center on. The config holds the
    resulting settings."""

    def __init__(
        self,
        samplewise_center: bool = False,
        samplewise_std_normalization: bool = False,
        featurewise_center: bool = False,
        featurewise_std_normalization: bool = False,
        zca_whitening: bool = False,
        zca_epsilon: float = 1e-6,
        **kwargs: Any,
    ) -> None:
        # float32 even under a mixed policy: a whitening matrix in bfloat16 would be noise
        super().__init__(**{"dtype": "float32", **kwargs})
        if zca_whitening and not featurewise_center:
            featurewise_center = True
            warnings.warn("zca_whitening overrides featurewise_center: turned on (as ImageDataGenerator does)",
                          stacklevel=2)
        if zca_whitening and featurewise_std_normalization:
            featurewise_std_normalization = False
            warnings.warn("zca_whitening overrides featurewise_std_normalization: turned off (as "
                          "ImageDataGenerator does)", stacklevel=2)
        if featurewise_std_normalization and not featurewise_center:
            featurewise_center = True
            warnings.warn("featurewise_std_normalization overrides featurewise_center: turned on (as "
                          "ImageDataGenerator does)", stacklevel=2)
        if samplewise_std_normalization and not samplewise_center:
            samplewise_center = True
            warnings.warn("samplewise_std_normalization overrides samplewise_center: turned on (as "
                          "ImageDataGenerator does)", stacklevel=2)
        self.samplewise_center, self.samplewise_std_normalization = bool(samplewise_center), bool(
            samplewise_std_normalization)
        self.featurewise_center = bool(featurewise_center)
        self.featurewise_std_normalization = bool(featurewise_std_normalization)
        self.zca_whitening, self.zca_epsilon = bool(zca_whitening), float(zca_epsilon)

    def build(self, input_shape: tuple) -> None:
        channels, features = int(input_shape[-1]), int(np.prod(input_shape[1:]))
        if self.featurewise_center:
            self.mean = self.add_weight(name="mean", shape=(channels,), initializer="zeros", trainable=False)
        if self.featurewise_std_normalization:
            self.std = self.add_weight(name="std", shape=(channels,), initializer="ones", trainable=False)
        if self.zca_whitening:
            self.zca_whitening_matrix = self.add_weight(name="zca_whitening_matrix", shape=(features, features),
                                                        initializer="identity", trainable=False)

    def adapt(self, images: Any) -> None:
        """ImageDataGenerator.fit(images): per-channel mean, then per-channel std of the centred images, then
        the ZCA matrix from the SVD of the standardised images, W = U diag(sqrt(n) / (s + eps)) U^T, whose rank
        is at most the number of images (directions the images do not span are set to 0, not amplified)."""
        x = np.array(images, dtype="float32")  # a copy, as fit makes
        if x.ndim != 4:
            raise ValueError(f"adapt wants images shaped (n, height, width, channels), got {x.shape}")
        if not self.built:
            self.build((None, *x.shape[1:]))
        if self.featurewise_center:
            mean = np.mean(x, axis=(0, 1, 2))
            self.mean.assign(mean)
            x -= mean
        if self.featurewise_std_normalization:
            std = np.std(x, axis=(0, 1, 2))
            self.std.assign(std)
            x /= std + 1e-6
        if self.zca_whitening:
            n = len(x)
            u, s, _ = np.linalg.svd(np.reshape(x, (n, -1)).T, full_matrices=False)
            self.zca_whitening_matrix.assign((u * (np.sqrt(n) / (s + self.zca_epsilon))).dot(u.T))

    def call(self, inputs: Any) -> Any:
        x = inputs
        axes = tuple(range(1, len(x.shape)))
        if self.samplewise_center:
            x = x - ops.mean(x, axis=axes, keepdims=True)
        if self.samplewise_std_normalization:
            x = x / (ops.std(x, axis=axes, keepdims=True) + 1e-6)
        if self.featurewise_center:
            x = x - self.mean
        if self.featurewise_std_normalization:
            x = x / (self.std + 1e-6)
        if self.zca_whitening:
            shape = ops.shape(x)
            x = ops.reshape(ops.matmul(ops.reshape(x, (shape[0], -1)), self.zca_whitening_matrix), shape)
        return x

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "samplewise_center": self.samplewise_center,
            "samplewise_std_normalization": self.samplewise_std_normalization,
            "featurewise_center": self.featurewise_center,
            "featurewise_std_normalization": self.featurewise_std_normalization,
            "zca_whitening": self.zca_whitening, "zca_epsilon": self.zca_epsilon,
        }
