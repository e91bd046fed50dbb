"""Build Keras models from data: a model config is an ordered list of layer specs (`type` plus arguments).

`type` is any keras.layers class, one of cnnlab's own layers (cnnlab.core.layers), or `Residual`, whose `layers`
are applied to a branch that is added back to its input (for ResNet-style projects)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import keras

import cnnlab.core.generator  # noqa: F401  (registers the generator's layers)
from cnnlab.config.schema import ModelConfig
from cnnlab.core.layers import CUSTOM_LAYERS

RESIDUAL = "Residual"


class ModelConfigError(ValueError):
    """A layer spec names an unknown layer type or arguments the layer does not take."""


def layer_class(name: str, where: str = "layer") -> type[keras.layers.Layer]:
    """The layer class called `name`, or an error that says what is allowed."""
    cls = CUSTOM_LAYERS.get(name) or getattr(keras.layers, str(name), None)
    if isinstance(cls, type) and issubclass(cls, keras.layers.Layer):
        return cls
    raise ModelConfigError(
        f"{where}: unknown layer type {name!r}; allowed: a keras.layers class (e.g. Conv2D, Dense, Dropout, "
        f"MaxPooling2D, BatchNormalization, Flatten), {RESIDUAL!r}, or one of cnnlab's {sorted(CUSTOM_LAYERS)}"
    )


def check_layer_specs(specs: Sequence[Mapping[str, Any]], where: str) -> None:
    """Check every spec names a known type (recursively), without building anything."""
    for i, spec in enumerate(specs):
        if not isinstance(spec, Mapping) or "type" not in spec:
            raise ModelConfigError(f"{where}.{i}: a layer spec must be a mapping with a 'type', got {spec!r}")
        if spec["type"] == RESIDUAL:
            check_layer_specs(spec.get("layers") or [], f"{where}.{i}.layers")
        else:
            layer_class(spec["type"], f"{where}.{i}")


def build_layer(spec: Mapping[str, Any], where: str = "layer") -> keras.layers.Layer:
    """One Keras layer from its spec; an argument the layer refuses is a ModelConfigError naming
    `<where>.<argument>`. (Called directly, not through keras.layers.deserialize, which hides the layer's own
    message behind a generic one.)"""
    kwargs = dict(spec)
    cls = layer_class(kwargs.pop("type"), where)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        named = [k for k in kwargs if f"'{k}'" in str(err) or f"`{k}`" in str(err)]
        if named:
            raise ModelConfigError(f"{where}.{named[0]}={kwargs[named[0]]!r} is not allowed: "
                                   f"{cls.__name__} says: {err}") from err
        raise ModelConfigError(f"{where}: cannot build {cls.__name__}({kwargs}): {err}") from err


def apply_layers(x: keras.KerasTensor, specs: Sequence[Mapping[str, Any]], where: str) -> keras.KerasTensor:
    """Apply layer specs to a symbolic tensor, expanding `Residual` blocks into a branch plus an Add."""
    for i, spec in enumerate(specs):
        if spec.get("type") == RESIDUAL:
            x = keras.layers.Add()([x, apply_layers(x, spec.get("layers") or [], f"{where}.{i}.layers")])
        else:
            x = build_layer(spec, f"{where}.{i}")(x)
    return x


def build_model(model: ModelConfig) -> keras.Model:
    """The `model` section in, a Keras model out: the listed layers, then Dense(num_classes) and softmax, with the
    logits multiplied by `head_scale` when the config sets one (ResNet-style heads).

    The head computes in float32 so mixed precision keeps a stable softmax."""
    inputs = keras.Input(shape=tuple(model.input_shape), name="images")
    try:
        x = apply_layers(inputs, model.layers, "model.layers")
    except (TypeError, ValueError) as err:
        if isinstance(err, ModelConfigError):
            raise
        raise ModelConfigError(f"model.layers: the layers do not fit together: {err}") from err
    x = keras.layers.Dense(model.num_classes, dtype="float32", name="logits")(x)
    if model.head_scale != 1.0:
        x = keras.layers.Rescaling(model.head_scale, dtype="float32", name="head_scale")(x)
    outputs = keras.layers.Activation("softmax", dtype="float32", name="softmax")(x)
    return keras.Model(inputs, outputs, name=model.name)
