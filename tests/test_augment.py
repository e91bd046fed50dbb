"""cnnlab's own preprocessing layers and the augmentation pipelines built from conf/augmentation/."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from cnnlab.core.augment import assemble, build_augmentation
from cnnlab.core.layers import RandomPadShift
from cnnlab.core.models import build_model
from tests.conftest import augmentation_config, model_config

rng = np.random.default_rng(0)


@pytest.mark.parametrize("name", ["none", "flip_translate", "flip_shift", "p11", "p11_transforms"])
def test_augmentation_configs_build_fit_and_keep_shape(name: str) -> None:
    specs = augmentation_config(name).layers
    images = rng.uniform(0, 1, size=(40, 32, 32, 3)).astype("float32")
    layers = build_augmentation(specs, images, seed=0)
    assert [layer.__class__.__name__ for layer in layers] == [s["type"] for s in specs]
    assert all(layer.seed == i for i, layer in enumerate(layers) if hasattr(layer, "seed")), "seeded from the config"
    pipeline = keras.Sequential(layers) if layers else None
    if pipeline is not None:
        assert keras.ops.convert_to_numpy(pipeline(images, training=True)).shape == images.shape
    core = build_model(model_config("p00"))
    between = [layer.name for layer in assemble(core, layers).layers]
    assert between == ["pixels", "scale", *(["augmentation"] if specs else []), core.name], "inside the model"
    if name == "none":  # no layer at all: the scaled batch goes to the model exactly as it is
        assert specs == [] and layers == [] and between == ["pixels", "scale", core.name]


def test_p11_model_saves_and_loads_with_its_fitted_statistics(tmp_path) -> None:
    specs = augmentation_config("p11").layers
    pixels = rng.integers(0, 256, size=(40, 32, 32, 3)).astype("float32")
    model = assemble(build_model(model_config("p11")),
                     build_augmentation(specs, pixels / 255, seed=0))
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(loaded.predict(pixels, verbose=0), model.predict(pixels, verbose=0), atol=1e-5)


def _shift_of(original: np.ndarray, shifted: np.ndarray, pad: int) -> tuple[int, int]:
    """The (dy, dx) such that shifted == original moved by it (with zero fill); fails if there is none."""
    for dy in range(-pad, pad + 1):
        for dx in range(-pad, pad + 1):
            moved = np.zeros_like(original)
            src = original[max(0, dy):original.shape[0] + min(0, dy), max(0, dx):original.shape[1] + min(0, dx)]
            moved[max(0, -dy):max(0, -dy) + src.shape[0], max(0, -dx):max(0, -dx) + src.shape[1]] = src
            if np.array_equal(moved, shifted):
                return dy, dx
    raise AssertionError("the output is not a shift of the input")


def test_pad_shift_moves_every_image_by_at_most_pad_pixels() -> None:
    images = rng.uniform(0.1, 1, size=(32, 32, 32, 3)).astype("float32")
    out = keras.ops.convert_to_numpy(RandomPadShift(pad=4, mode="constant", seed=5)(images, training=True))
    assert out.shape == images.shape and out.dtype == images.dtype
    assert out.min() >= 0 and out.max() <= images.max()
    shifts = [_shift_of(images[i], out[i], pad=4) for i in range(len(images))]
    assert len(set(shifts)) > 5, "offsets are drawn per image"
    assert any(s != (0, 0) for s in shifts)


def test_pad_shift_reflect_keeps_values_from_the_image_and_is_identity_at_inference() -> None:
    images = rng.uniform(0, 1, size=(8, 32, 32, 3)).astype("float32")
    layer = RandomPadShift(pad=4, seed=1)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(images, training=False)), images)
    out = keras.ops.convert_to_numpy(layer(images, training=True))
    for i in range(len(images)):
        assert set(np.unique(out[i])) <= set(np.unique(images[i]))


def test_pad_shift_and_flip_are_deterministic_under_a_seed() -> None:
    images = rng.uniform(0, 1, size=(16, 32, 32, 3)).astype("float32")
    specs = augmentation_config("flip_shift").layers

    def run() -> np.ndarray:
        return keras.ops.convert_to_numpy(keras.Sequential(build_augmentation(specs, images, seed=7))(images,
                                                                                                   training=True))

    first, second = run(), run()
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, images)
    flipped = sum(np.array_equal(first[i], images[i, :, ::-1]) for i in range(16))
    assert flipped < 16, "not every image may be flipped"
