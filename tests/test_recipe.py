"""P12's recipe pieces (cnnlab.core.recipe), each against an independent computation: the whitening filters against
numpy's eigen-decomposition of the patch covariance, the alternating flip against the rule per epoch, test-time
augmentation against the weighted mean of the views made by hand, the lookahead and the parameter groups against
a hand computation of the steps, the schedule against its formula."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from keras import ops

from cnnlab.core.augment import assemble, build_augmentation
from cnnlab.core.models import build_model
from cnnlab.core.recipe import (
    TTA_WEIGHTS,
    AlternatingFlip,
    Dirac,
    LinearWarmupDecay,
    PatchWhitening,
    RecipeSGD,
    TTAMean,
    TTAViews,
)
from tests.conftest import ROOT, augmentation_config, job_env, model_config

rng = np.random.default_rng(0)


def test_whitening_filters_are_the_eigenvectors_of_the_patch_covariance() -> None:
    images = rng.normal(size=(30, 8, 8, 3)) * [1.0, 0.5, 2.0] + rng.normal(size=(30, 8, 8, 1))  # correlated channels
    layer = PatchWhitening(patch_size=2, eps=5e-4)
    layer.adapt(images.astype("float32"))
    kernel = ops.convert_to_numpy(layer.kernel)
    assert kernel.shape == (2, 2, 3, 24)
    # numpy, independently: every 2x2 patch as (row, column, channel), its uncentred covariance, eigh
    windows = np.lib.stride_tricks.sliding_window_view(images, (2, 2), axis=(1, 2))  # (n, 7, 7, c, 2, 2)
    patches = windows.transpose(0, 1, 2, 4, 5, 3).reshape(-1, 12)
    values, vectors = np.linalg.eigh(patches.T @ patches / len(patches))
    order = np.argsort(values)[::-1]
    expected = vectors[:, order] / np.sqrt(values[order] + 5e-4)
    got = kernel.reshape(12, 24)
    signs = np.sign(np.sum(got[:, :12] * expected, axis=0))  # an eigenvector's sign is arbitrary
    np.testing.assert_allclose(got[:, :12] * signs, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got[:, 12:], -got[:, :12])
    # and so the first 12 output channels of the patches are white: covariance ~ diag(l / (l + eps))
    out = patches @ got[:, :12]
    np.testing.assert_allclose(out.T @ out / len(out), np.diag(values[order] / (values[order] + 5e-4)), atol=1e-4)


def test_the_models_whitening_is_fitted_on_the_normalised_training_images() -> None:
    pixels = rng.integers(0, 256, size=(40, 32, 32, 3)).astype("float32")
    core = build_model(model_config("p12"))
    layers = build_augmentation(augmentation_config("airbench").layers, pixels / 255, seed=0)
    normalised = keras.Sequential(layers[2:3]).predict(pixels / 255, verbose=0)
    reference = PatchWhitening(name="reference", patch_size=2, eps=5e-4)
    reference.adapt(normalised)
    np.testing.assert_allclose(ops.convert_to_numpy(core.get_layer("whiten").kernel),
                               ops.convert_to_numpy(reference.kernel), rtol=1e-5, atol=1e-5)
    assert not core.get_layer("whiten").kernel.trainable


def flip_bits(images: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return np.sum(np.round(images * 255).astype(np.int64) * mask, axis=(1, 2, 3)) % 2


def test_alternating_flip_flips_exactly_the_images_it_should_in_each_epoch() -> None:
    images = rng.integers(0, 256, size=(10, 6, 6, 3)).astype("float32") / 255
    layer = AlternatingFlip(seed=3)
    layer.adapt(images)  # one epoch is these 10 images
    bits = flip_bits(images, layer.mask)
    assert 0 < bits.sum() < len(bits), "epoch 0 flips some images and not others"
    for epoch in range(4):
        out = np.concatenate([ops.convert_to_numpy(layer(images[i:i + 4], training=True)) for i in (0, 4, 8)])
        pairs = list(zip(out, images, strict=True))
        flipped = np.array([np.array_equal(o, x[:, ::-1]) and not np.array_equal(o, x) for o, x in pairs])
        kept = np.array([np.array_equal(o, x) for o, x in pairs])
        assert np.all(flipped | kept)
        np.testing.assert_array_equal(flipped, (bits + epoch) % 2 == 1, err_msg=f"epoch {epoch}")
    np.testing.assert_array_equal(ops.convert_to_numpy(layer(images, training=False)), images)


def hand_views(x: np.ndarray) -> list[np.ndarray]:
    padded = np.pad(x, [(0, 0), (1, 1), (1, 1), (0, 0)], mode="reflect")
    views = [x, padded[:, :-2, :-2], padded[:, 2:, 2:]]
    return [v for image in views for v in (image, image[:, :, ::-1])]


def test_test_time_augmentation_is_the_weighted_mean_of_the_six_views() -> None:
    images = rng.uniform(size=(5, 8, 8, 3)).astype("float32")
    head = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, activation="relu"),
                             keras.layers.Flatten(), keras.layers.Dense(7)])
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, TTAMean()(head(TTAViews(shift=1)(inputs))))
    by_hand = sum(w * head.predict(v, verbose=0) for w, v in zip(TTA_WEIGHTS, hand_views(images), strict=True))
    np.testing.assert_allclose(model.predict(images, verbose=0), by_hand, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ops.convert_to_numpy(model(images, training=True)),
                               ops.convert_to_numpy(head(images)), rtol=1e-6, atol=1e-6)


def test_the_lookahead_equals_the_hand_computation() -> None:
    steps, every, lr = 7, 2, 0.1
    gradients = rng.normal(size=(steps, 3)).astype("float32")
    variable = keras.Variable(np.array([1.0, -2.0, 0.5], "float32"))
    optimizer = RecipeSGD(learning_rate=lr, total_steps=steps, lookahead_every=every)
    w = slow = ops.convert_to_numpy(variable).astype("float64")
    for t, g in enumerate(gradients, start=1):
        optimizer.apply([ops.convert_to_tensor(g)], [variable])
        w = w - lr * g
        if t % every == 0:
            decay = 0.95 ** every * (t / steps) ** 3
            slow = slow + (1 - decay) * (w - slow)
            w = slow
        elif t == steps:  # the last step ends on the slow weights (airbench: an update with decay 1)
            w = slow
        np.testing.assert_allclose(ops.convert_to_numpy(variable), w, rtol=1e-5, err_msg=f"step {t}")


def test_the_slow_weights_start_at_the_weights_fit_starts_from() -> None:
    """Keras builds the optimizer while it traces the train step of `fit`: the slow copy must still start at the
    weights (it stayed zero when an assign in `build` set it). A lookahead never due before the last step sets
    the weights to that copy, so `fit` ends on the weights it began with."""
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(2)])
    before = [ops.convert_to_numpy(w) for w in model.weights]
    x = rng.normal(size=(16, 4)).astype("float32")
    model.compile(optimizer=RecipeSGD(learning_rate=0.1, total_steps=4, lookahead_every=100, weight_decay=0.1,
                                      frozen_variables=[model.weights[1].path], frozen_after_steps=2), loss="mse")
    model.fit(x, x[:, :2], batch_size=4, epochs=1, shuffle=False, verbose=0)
    for start, end in zip(before, model.get_weights(), strict=True):
        np.testing.assert_allclose(end, start, rtol=1e-6)


def test_a_frozen_variable_trains_its_first_steps_then_moves_only_by_the_lookahead() -> None:
    """airbench94's whitening bias: gradient steps and weight decay for the first n steps, none after; the lookahead
    still averages it. The other variables compute what they compute without the freeze."""
    steps, frozen_after, every, lr, wd, momentum = 7, 2, 3, 0.1, 0.5, 0.9
    gradients = rng.normal(size=(steps, 2, 3)).astype("float32")

    def run(**freeze):
        bias = keras.Variable(np.array([1.0, -2.0, 0.5], "float32"), name="bias")
        kernel = keras.Variable(np.array([0.3, 0.2, -0.1], "float32"), name="kernel")
        optimizer = RecipeSGD(learning_rate=lr, momentum=momentum, weight_decay=wd, total_steps=steps,
                              lookahead_every=every, **freeze)
        trace = []
        for g in gradients:
            optimizer.apply([ops.convert_to_tensor(g[0]), ops.convert_to_tensor(g[1])], [bias, kernel])
            trace.append((ops.convert_to_numpy(bias), ops.convert_to_numpy(kernel)))
        return trace

    free, frozen = run(), run(frozen_variables=["bias"], frozen_after_steps=frozen_after)
    w, m = np.array([1.0, -2.0, 0.5]), np.zeros(3)
    slow = w.copy()
    for t in range(1, steps + 1):
        np.testing.assert_allclose(frozen[t - 1][1], free[t - 1][1], rtol=1e-6, err_msg=f"kernel, step {t}")
        if t <= frozen_after:  # Keras' SGD: decoupled decay, then momentum
            w = w - w * wd * lr
            m = momentum * m - lr * gradients[t - 1][0]
            w = w + m
        if t % every == 0 or t == steps:
            decay = 0.95 ** every * (t / steps) ** 3 if t % every == 0 else 1.0
            slow = slow + (1 - decay) * (w - slow)
            w = slow
        np.testing.assert_allclose(frozen[t - 1][0], w, rtol=1e-5, atol=1e-6, err_msg=f"bias, step {t}")
        if t <= frozen_after:
            np.testing.assert_allclose(frozen[t - 1][0], free[t - 1][0], rtol=1e-6)
    assert not np.allclose(frozen[-1][0], free[-1][0]), "without the freeze the bias goes on moving"
    with pytest.raises(ValueError, match=r"frozen_variables \['whiten/bias'\] are not variables of the model"):
        RecipeSGD(frozen_variables=["whiten/bias"], frozen_after_steps=1).build([keras.Variable(np.zeros(2))])


def test_the_norm_biases_step_with_the_scaled_learning_rate_and_the_others_decay_as_keras() -> None:
    beta = keras.Variable(np.ones(2, "float32"), name="beta")
    kernel = keras.Variable(np.ones(2, "float32"), name="kernel")
    optimizer = RecipeSGD(learning_rate=0.01, bias_scaler=64.0, weight_decay=0.5)
    optimizer.apply([ops.ones(2), ops.ones(2)], [beta, kernel])
    decayed = 1 - 0.01 * 0.5  # the weight decay is not scaled
    np.testing.assert_allclose(ops.convert_to_numpy(beta), decayed - 0.64, rtol=1e-6)
    np.testing.assert_allclose(ops.convert_to_numpy(kernel), decayed - 0.01, rtol=1e-6)


def test_the_schedule_warms_up_then_decays_linearly() -> None:
    schedule = LinearWarmupDecay(1.5, total_steps=100, warmup_fraction=0.23, start_factor=0.2, end_factor=0.07)
    got = [float(schedule(s)) for s in (0, 11.5, 23, 61.5, 100, 150)]
    np.testing.assert_allclose(got, [0.3, 0.9, 1.5, 1.5 * (1 + 0.5 * (0.07 - 1)), 0.105, 0.105], rtol=1e-6)
    optimizer = keras.optimizers.get({"class_name": "cnnlab>RecipeSGD", "config": {
        "learning_rate": 1.5, "total_steps": 100, "warmup_fraction": 0.23, "start_factor": 0.2, "end_factor": 0.07}})
    assert isinstance(optimizer.learning_rate_schedule if hasattr(optimizer, "learning_rate_schedule")
                      else optimizer._learning_rate, LinearWarmupDecay)
    again = RecipeSGD.from_config(optimizer.get_config())
    assert float(again.learning_rate) == pytest.approx(0.3)


def test_dirac_initialises_the_first_filters_as_identities() -> None:
    kernel = ops.convert_to_numpy(Dirac(seed=1)((3, 3, 4, 6)))
    images = rng.normal(size=(2, 5, 5, 4)).astype("float32")
    out = ops.convert_to_numpy(ops.conv(images, kernel, padding="same"))
    np.testing.assert_allclose(out[..., :4], images, atol=1e-6)
    assert np.abs(kernel[..., 4:]).max() <= 1 / np.sqrt(9 * 4) and np.abs(kernel[..., 4:]).max() > 0


@pytest.mark.integration  # it trains (model.fit): the slow tier, as the marker says
def test_p12_trains_and_saves_with_its_recipe(tmp_path) -> None:
    pixels = rng.integers(0, 256, size=(48, 32, 32, 3)).astype("uint8")
    labels = keras.utils.to_categorical(np.arange(48) % 10, 10)
    model = assemble(build_model(model_config("p12")),
                     build_augmentation(augmentation_config("airbench").layers, pixels / np.float32(255), seed=0))
    model.compile(optimizer=RecipeSGD(learning_rate=0.1, momentum=0.85, nesterov=True, lookahead_every=5,
                                      bias_scaler=64.0, total_steps=6, warmup_fraction=0.23,
                                      frozen_variables=["whiten/bias"], frozen_after_steps=3),
                  loss="categorical_crossentropy")
    model.fit(pixels, labels, batch_size=16, epochs=2, verbose=0)
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(loaded.predict(pixels, verbose=0), model.predict(pixels, verbose=0), atol=1e-5)
    flip = model.get_layer("augmentation").layers[0]
    assert int(ops.convert_to_numpy(flip.seen)) == 2 * 48 and int(ops.convert_to_numpy(flip.epoch_size)) == 48


RECIPE_FIT_SCRIPT = """
import json, sys
import keras, numpy as np
from cnnlab.core.recipe import RecipeSGD
data = np.load(sys.argv[1])
keras.utils.set_random_seed(0)
inputs = keras.Input((4,))
hidden = keras.layers.Dense(3, name="hidden")(inputs)
model = keras.Model(inputs, keras.layers.Dense(2, name="out")(keras.layers.BatchNormalization(name="bn")(hidden)))
model.set_weights([data[f"w{i}"] for i in range(len(model.weights))])
optimizer = RecipeSGD(learning_rate=0.05, momentum=0.85, nesterov=True, weight_decay=0.01, total_steps=9,
                      warmup_fraction=0.3, start_factor=0.2, end_factor=0.1, bias_scaler=8.0, lookahead_every=2,
                      frozen_variables=["hidden/bias"], frozen_after_steps=4)
model.compile(optimizer=optimizer, loss="mse", jit_compile=True, steps_per_execution=3)
model.fit(data["x"], data["y"], batch_size=8, epochs=3, shuffle=False, verbose=0)
print(json.dumps({"backend": keras.backend.backend(),
                  "weights": [np.asarray(w).tolist() for w in model.get_weights()]}))
"""


@pytest.mark.system
def test_the_recipe_optimizer_trains_the_same_in_jaxs_compiled_step(tmp_path: Path) -> None:
    """P12's optimizer (schedule, bias groups, lookahead, a frozen variable) through `model.fit` in a compiled step
    on JAX equals the same on TensorFlow (the backend is chosen per process: each in its own). JAX keeps the
    variables' buffers in the step: one given twice, or a variable where an array belongs, failed there only."""
    x = rng.normal(size=(24, 4)).astype("float32")
    weights = [rng.normal(size=shape).astype("float32") * 0.5
               for shape in [(4, 3), (3,), (3,), (3,), (3,), (3,), (3, 2), (2,)]]
    weights[5] = np.abs(weights[5]) + 0.5  # the batch norm's moving variance
    data = tmp_path / "data.npz"
    np.savez(data, x=x, y=np.tanh(x[:, :2] * 2).astype("float32"), **{f"w{i}": w for i, w in enumerate(weights)})
    results = {}
    for backend in ("tensorflow", "jax"):
        done = subprocess.run([sys.executable, "-c", RECIPE_FIT_SCRIPT, str(data)], cwd=ROOT,
                              env=job_env(KERAS_BACKEND=backend), capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        results[backend] = json.loads(done.stdout.strip().splitlines()[-1])
        assert results[backend]["backend"] == backend
    for index, (ours, theirs) in enumerate(zip(results["jax"]["weights"], results["tensorflow"]["weights"],
                                               strict=True)):
        assert not np.allclose(ours, weights[index]), f"weight {index} did not train"
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5, err_msg=f"weight {index}")
