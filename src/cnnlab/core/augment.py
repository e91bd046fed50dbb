"""The input side of a trained model: scale raw pixels to [0, 1], then the configured augmentation layers.

Augmentation lives inside the model, so it runs in the compiled training step on any backend; Keras'
random layers are identity at inference, while standardisation layers (fitted once with `adapt`) apply to
test images too."""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np

from cnnlab.core.models import build_layer, layer_class


def build_augmentation(specs: Sequence[Mapping[str, Any]], fit_images: np.ndarray, seed: int) -> list[keras.Layer]:
    """Augmentation layers from their specs; each layer that takes a `seed` and is given none gets one from
    `seed`, and each layer that has `adapt` is fitted on `fit_images` (in [0, 1]) as they look after the layers
    before it."""
    layers: list[keras.Layer] = []
    for i, spec in enumerate(specs):
        spec, where = dict(spec), f"augmentation.layers.{i}"
        if "seed" not in spec and "seed" in inspect.signature(layer_class(spec["type"], where)).parameters:
            spec["seed"] = seed + i
        layer = build_layer(spec, where)
        if hasattr(layer, "adapt"):
            seen = keras.Sequential(layers).predict(fit_images, batch_size=1024, verbose=0) if layers else fit_images
            layer.adapt(seen)
        layers.append(layer)
    return layers


def assemble(core: keras.Model, augmentation: Sequence[keras.Layer]) -> keras.Model:
    """Raw uint8-valued pixels in, class probabilities out: Rescaling(1/255) -> augmentation -> core."""
    inputs = keras.Input(shape=core.input_shape[1:], name="pixels")
    x = keras.layers.Rescaling(1.0 / 255, name="scale")(inputs)
    if augmentation:
        x = keras.Sequential(list(augmentation), name="augmentation")(x)
    return keras.Model(inputs, core(x), name=f"{core.name}_pipeline")
