"""The pieces of P12's recipe (after airbench94, KellerJordan/cifar10-airbench `legacy/airbench94.py`), each usable
by name in any project's config:

- `AlternatingFlip` (augmentation): each image flipped at random in epoch 0, then every image flipped every other
  epoch; the per-image bit comes from the image's pixels, the epoch from a counter of the images seen;
- `FitPatchWhitening` (last in the augmentation list) and `PatchWhitening` (first in the model's layers): a frozen
  2x2 patch-whitening convolution whose filters come from the eigenvectors of the training images' patch covariance;
- `TTAViews` (first in the model's layers) and `TTAMean` (last, before the linear head): test-time augmentation
  over 6 views (mirror x {0, -1, +1 px}), identity while training;
- `Dirac`: an identity initialisation for convolutions (`kernel_initializer: cnnlab>Dirac`);
- `LinearWarmupDecay`: a linear warm-up, then a linear decay, over a fixed number of steps;
- `RecipeSGD` (`training.optimizer.name: cnnlab>RecipeSGD`): SGD with a higher learning rate for the normalisation
  biases, the schedule above and lookahead (a slow copy of the weights, pulled towards them every k steps and
  copied back).

Written with keras.ops so they run inside the compiled step on every backend. A project reaches these definitions
only when its config names them (cnnlab.config.code)."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

from cnnlab.core.layers import custom_layer

_WHITENING: dict[str, Any] = {}  # the PatchWhitening built last under each name, for FitPatchWhitening to fit


def image_bits(pixels: Any, mask: Any) -> Any:
    """One bit per image from its pixels (values k/255): the parity of the sum of its 8-bit values at the
    positions where `mask` is 1."""
    values = ops.cast(ops.round(ops.cast(pixels, "float32") * 255.0), "int32")
    return ops.mod(ops.sum(values * mask, axis=(1, 2, 3)), 2)


@custom_layer
class AlternatingFlip(keras.layers.Layer):
    """airbench's "alternating flip": in epoch 0 an image is mirrored when its bit is 1, and from then on every
    image is mirrored in every other epoch (epoch e mirrors image i exactly when bit_i + e is odd), so each image is
    seen both ways in any two consecutive epochs. The bit is the parity of a seed-chosen subset of the image's
    8-bit pixel values (cnnlab's images in [0, 1] arrive here unaugmented: put it first); the epoch is the number of
    training images seen so far (a variable saved with the weights) divided by the size of an epoch, which `adapt`
    takes from the training images. Identity at inference."""

    def __init__(self, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.seed = seed

    def build(self, input_shape):
        rng = np.random.default_rng(0 if self.seed is None else self.seed)
        self.mask = rng.integers(0, 2, size=tuple(input_shape[1:])).astype("int32")
        self.seen = self.add_weight(shape=(), dtype="int32", initializer="zeros", trainable=False, name="seen")
        self.epoch_size = self.add_weight(shape=(), dtype="int32", initializer="zeros", trainable=False,
                                          name="epoch_size")

    def adapt(self, images) -> None:
        if not self.built:
            self.build(images.shape)
        self.epoch_size.assign(len(images))

    def flips(self, x):
        """Which images of the batch `x` are mirrored now (a bool per image)."""
        size = ops.convert_to_tensor(self.epoch_size)
        epoch = ops.where(size > 0, ops.floor_divide(ops.convert_to_tensor(self.seen), ops.maximum(size, 1)), 0)
        return ops.equal(ops.mod(image_bits(x, ops.convert_to_tensor(self.mask)) + epoch, 2), 1)

    def call(self, x, training=None):
        if not training:
            return x
        flips = self.flips(x)
        self.seen.assign(self.seen + ops.cast(ops.shape(x)[0], "int32"))
        return ops.where(flips[:, None, None, None], ops.flip(x, axis=2), x)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}


def whitening_filters(images: np.ndarray, patch_size: int, eps: float) -> np.ndarray:
    """The (p, p, c, 2 c p p) kernel of airbench's whitening convolution: the eigenvectors of the uncentred
    covariance of every p x p patch of `images` (n, h, w, c), largest eigenvalue first, each divided by
    sqrt(eigenvalue + eps), then the same negated."""
    n, h, w, c = images.shape
    p = patch_size
    patches = np.stack([images[:, i:h - p + 1 + i, j:w - p + 1 + j, :] for i in range(p) for j in range(p)], axis=3)
    flat = patches.reshape(-1, p * p * c).astype("float64")  # (row, column, channel) order: Keras' kernel layout
    eigenvalues, eigenvectors = np.linalg.eigh(flat.T @ flat / len(flat))
    eigenvalues, eigenvectors = eigenvalues[::-1], eigenvectors[:, ::-1]
    scaled = eigenvectors / np.sqrt(eigenvalues + eps)
    return np.concatenate([scaled, -scaled], axis=1).reshape(p, p, c, 2 * p * p * c).astype("float32")


@custom_layer
class PatchWhitening(keras.layers.Layer):
    """A `patch_size` x `patch_size` valid convolution to 2 c p^2 channels (24 for 2x2 RGB patches) whose frozen
    filters whiten the training images' patches (`whitening_filters`), with a trained bias. Its filters are set by
    `adapt(images)`, called by a `FitPatchWhitening` in the augmentation list (cnnlab.core.augment fits
    augmentation layers on the training images; this layer changes the image shape, so it must sit in the model)."""

    def __init__(self, patch_size: int = 2, eps: float = 5e-4, max_images: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.patch_size, self.eps, self.max_images = int(patch_size), float(eps), max_images
        _WHITENING[self.name] = self

    def build(self, input_shape):
        c, p = input_shape[-1], self.patch_size
        self.kernel = self.add_weight(shape=(p, p, c, 2 * p * p * c), initializer="zeros", trainable=False,
                                      name="kernel")
        self.bias = self.add_weight(shape=(2 * p * p * c,), initializer="zeros", name="bias")

    def adapt(self, images) -> None:
        images = np.asarray(images)[:self.max_images]
        if not self.built:
            self.build(images.shape)
        self.kernel.assign(whitening_filters(images, self.patch_size, self.eps))

    def call(self, x):
        return ops.conv(x, ops.cast(self.kernel, x.dtype), padding="valid") + ops.cast(self.bias, x.dtype)

    def compute_output_shape(self, input_shape):
        p = self.patch_size
        size = [None if d is None else d - p + 1 for d in input_shape[1:3]]
        return (input_shape[0], *size, 2 * p * p * input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "patch_size": self.patch_size, "eps": self.eps, "max_images": self.max_images}


@custom_layer
class FitPatchWhitening(keras.layers.Layer):
    """Identity; its `adapt` fits the model's `PatchWhitening` called `layer` on the images as they arrive here
    (the model is built before its augmentation, cnnlab.core.loop.build). Put it last in the augmentation list."""

    def __init__(self, layer: str = "whiten", **kwargs):
        super().__init__(**kwargs)
        self.layer = layer

    def adapt(self, images) -> None:
        target = _WHITENING.get(self.layer)
        if target is None:
            raise ValueError(f"FitPatchWhitening layer={self.layer!r}: no PatchWhitening layer of that name was built")
        target.adapt(images)

    def call(self, x):
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "layer": self.layer}


TTA_WEIGHTS = (0.25, 0.25, 0.125, 0.125, 0.125, 0.125)  # airbench94: half on the image and its mirror


@custom_layer
class TTAViews(keras.layers.Layer):
    """At inference, the batch becomes 6 batches of views, one after another: the images, their mirrors, the images
    shifted by `shift` pixels down and right (reflect-padded), their mirrors, shifted up and left, their mirrors.
    Identity while training. `TTAMean` averages them back."""

    def __init__(self, shift: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.shift = int(shift)

    def views(self, x):
        s, h, w = self.shift, x.shape[1], x.shape[2]
        padded = ops.pad(x, [[0, 0], [s, s], [s, s], [0, 0]], mode="reflect")
        shifted = [padded[:, :h, :w, :], padded[:, 2 * s:2 * s + h, 2 * s:2 * s + w, :]]
        return [v for image in [x, *shifted] for v in (image, ops.flip(image, axis=2))]

    def call(self, x, training=None):
        if training:
            return x
        return ops.concatenate(self.views(x), axis=0)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "shift": self.shift}


@custom_layer
class TTAMean(keras.layers.Layer):
    """At inference, the weighted mean of the views `TTAViews` made (the batch is `len(weights)` batches one after
    another); identity while training. Before a linear head the mean of the features is the mean of the logits."""

    def __init__(self, weights: list[float] | tuple[float, ...] = TTA_WEIGHTS, **kwargs):
        super().__init__(**kwargs)
        self.view_weights = [float(w) for w in weights]

    def call(self, x, training=None):
        if training:
            return x
        n = len(self.view_weights)
        views = ops.reshape(x, (n, -1, *x.shape[1:]))
        w = ops.cast(ops.convert_to_tensor(self.view_weights), x.dtype) / sum(self.view_weights)
        return ops.sum(views * ops.reshape(w, (n,) + (1,) * (len(x.shape))), axis=0)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "weights": self.view_weights}


@keras.saving.register_keras_serializable(package="cnnlab")
class Dirac(keras.initializers.Initializer):
    """PyTorch's default convolution initialisation (uniform in +-1/sqrt(fan_in)), with the first min(in, out)
    filters replaced by identities (a 1 at the centre tap of their own input channel), as airbench94's convs."""

    def __init__(self, seed: int | None = None):
        self.seed = seed

    def __call__(self, shape, dtype=None):
        base = keras.initializers.VarianceScaling(scale=1 / 3, mode="fan_in", distribution="uniform",
                                                  seed=self.seed)(shape, dtype=dtype)
        *taps, c_in, c_out = shape
        identity = np.zeros(shape, dtype="float32")
        keep = np.ones(shape, dtype=bool)
        for i in range(min(c_in, c_out)):
            identity[(*(t // 2 for t in taps), i, i)] = 1.0
            keep[..., i] = False
        return ops.where(keep, base, ops.cast(identity, base.dtype))

    def get_config(self):
        return {"seed": self.seed}


@keras.saving.register_keras_serializable(package="cnnlab")
class LinearWarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
    """`peak` times a factor that rises linearly from `start_factor` to 1 over the first `warmup_fraction` of
    `total_steps` (int(total * fraction) steps), then falls linearly to `end_factor` at `total_steps` and stays."""

    def __init__(self, peak: float, total_steps: int, warmup_fraction: float = 0.23, start_factor: float = 0.2,
                 end_factor: float = 0.07):
        self.peak, self.total_steps = float(peak), int(total_steps)
        self.warmup_fraction, self.start_factor, self.end_factor = warmup_fraction, start_factor, end_factor

    def __call__(self, step):
        step = ops.minimum(ops.cast(step, "float32"), float(self.total_steps))
        warmup = int(self.total_steps * self.warmup_fraction)
        rising = self.start_factor + (1 - self.start_factor) * step / max(warmup, 1)
        falling = 1 + (self.end_factor - 1) * (step - warmup) / max(self.total_steps - warmup, 1)
        return self.peak * ops.where(step < warmup, rising, falling)

    def get_config(self):
        return {"peak": self.peak, "total_steps": self.total_steps, "warmup_fraction": self.warmup_fraction,
                "start_factor": self.start_factor, "end_factor": self.end_factor}


def is_norm_bias(variable: Any) -> bool:
    """Whether `variable` is a normalisation layer's bias (Keras names it `beta`; the TensorFlow backend hands the
    optimizer its tf.Variable, named like `beta:0`)."""
    return str(getattr(variable, "name", "")).split(":")[0].rsplit("/", 1)[-1] == "beta"


@keras.saving.register_keras_serializable(package="cnnlab")
class RecipeSGD(keras.optimizers.SGD):
    """Keras' SGD (momentum, Nesterov, its decoupled weight decay: each step shrinks a weight by lr x
    weight_decay), plus, each when set:

    - `total_steps` with `warmup_fraction` (and `start_factor`, `end_factor`): the learning rate follows
      `LinearWarmupDecay` from `learning_rate` as its peak;
    - `bias_scaler`: the normalisation layers' biases (variables named `beta`) step with the learning rate times
      this (the weight decay stays the others');
    - `lookahead_every` k: a slow copy of the weights (starting at the initial weights); after every k-th step it
      moves towards the weights by 1 - decay and the weights are set to it, decay = 0.95^k x (step / total_steps)^3
      (0.95^k without `total_steps`); after step `total_steps` the weights are set to it too (airbench94's
      lookahead; Keras' own use_ema averages every step and overwrites on its own period);
    - `frozen_variables` (variable paths, e.g. `whiten/bias`) with `frozen_after_steps` n: those variables train
      for the first n steps only; after that no gradient step and no weight decay moves them, while lookahead
      still does (airbench94 trains the whitening bias for 3 epochs, then turns its gradient off; its lookahead
      averages every tensor of the model). Each is held in a copy taken at the end of every step, and put back
      after the steps that would move it."""

    def __init__(self, learning_rate: Any = 0.01, total_steps: int | None = None,
                 warmup_fraction: float | None = None, start_factor: float | None = None,
                 end_factor: float | None = None, bias_scaler: float | None = None, lookahead_every: int | None = None,
                 frozen_variables: list[str] | None = None, frozen_after_steps: int | None = None, **kwargs):
        if total_steps and warmup_fraction is not None and isinstance(learning_rate, int | float):
            learning_rate = LinearWarmupDecay(learning_rate, total_steps, warmup_fraction,
                                              1.0 if start_factor is None else start_factor,
                                              1.0 if end_factor is None else end_factor)
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.total_steps, self.warmup_fraction = total_steps, warmup_fraction
        self.start_factor, self.end_factor = start_factor, end_factor
        self.bias_scaler, self.lookahead_every = bias_scaler, lookahead_every
        self.frozen_variables = list(frozen_variables or [])
        self.frozen_after_steps = frozen_after_steps

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.slow = []
        if self.lookahead_every:
            self.slow = self.add_optimizer_variables(variables, "lookahead")
        self.held = {}  # index of a frozen variable -> its value at the end of the last step
        if self.frozen_variables and self.frozen_after_steps is not None:
            paths = [variable.path for variable in variables]
            missing = sorted(set(self.frozen_variables) - set(paths))
            if missing:
                raise ValueError(f"frozen_variables {missing} are not variables of the model (its: {', '.join(paths)})")
            for index, variable in enumerate(variables):
                if variable.path in self.frozen_variables:
                    self.held[index] = self.add_variable_from_reference(variable, "held")

    def _backend_apply_gradients(self, grads, trainable_variables):
        """The slow and held copies start as the weights the first step begins with, set here, before the weight
        decay, rather than by an assign in `build`: TensorFlow builds the optimizer while it traces the train step,
        where such an assign never ran (the copies stayed zero), and JAX refused the one buffer given twice."""
        first = ops.equal(ops.convert_to_tensor(self.iterations), 0)
        for variable in trainable_variables:
            index = self._get_variable_index(variable)
            for copy in (self.slow[index] if self.slow else None, self.held.get(index)):
                if copy is not None:
                    self.assign(copy, ops.where(first, ops.convert_to_tensor(variable), ops.convert_to_tensor(copy)))
        return super()._backend_apply_gradients(grads, trainable_variables)

    def update_step(self, gradient, variable, learning_rate):
        if self.bias_scaler and is_norm_bias(variable):
            learning_rate = ops.multiply(learning_rate, self.bias_scaler)
        super().update_step(gradient, variable, learning_rate)
        held = self.held.get(self._get_variable_index(variable)) if self.held else None
        if held is not None:  # past its steps: the decay and the step just taken are undone
            frozen = ops.greater_equal(ops.convert_to_tensor(self.iterations), self.frozen_after_steps)
            self.assign(variable, ops.where(frozen, ops.convert_to_tensor(held), ops.convert_to_tensor(variable)))
        if self.lookahead_every:
            self._lookahead(variable)
        if held is not None:
            self.assign(held, ops.convert_to_tensor(variable))

    def _lookahead(self, variable):
        k = int(self.lookahead_every)
        step = ops.convert_to_tensor(self.iterations) + 1  # the step just taken (iterations counts up after it)
        due = ops.equal(ops.mod(step, k), 0)
        decay = ops.convert_to_tensor(0.95 ** k, "float32")
        if self.total_steps:
            decay = decay * ops.minimum(ops.cast(step, "float32") / self.total_steps, 1.0) ** 3
            last = ops.equal(step, self.total_steps)
            decay = ops.where(due, decay, 1.0)
            due = ops.logical_or(due, last)
        slow = self.slow[self._get_variable_index(variable)]
        # tensors, not the variables: JAX refuses a variable where an array is expected (inside its traced step)
        slow_now, fast_now = ops.convert_to_tensor(slow), ops.convert_to_tensor(variable)
        moved = slow_now + ops.cast(1 - decay, slow.dtype) * (fast_now - slow_now)
        self.assign(slow, ops.where(due, moved, slow_now))
        self.assign(variable, ops.where(due, moved, fast_now))

    def get_config(self):
        return {**super().get_config(), "total_steps": self.total_steps, "warmup_fraction": self.warmup_fraction,
                "start_factor": self.start_factor, "end_factor": self.end_factor, "bias_scaler": self.bias_scaler,
                "lookahead_every": self.lookahead_every, "frozen_variables": self.frozen_variables,
                "frozen_after_steps": self.frozen_after_steps}
