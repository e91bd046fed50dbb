"""The twelve seed models are built from YAML with the source's exact parameter counts."""

from __future__ import annotations

import dataclasses

import pytest

from cnnlab.config.schema import ModelConfig
from cnnlab.core.models import ModelConfigError, build_model
from tests.conftest import model_config

# The source write-up's parameter counts (P00-P11), checked with Keras.
EXPECTED_PARAMS = {
    "p00": 263_402, "p01": 136_954, "p02": 849_358, "p03": 939_458, "p04": 325_058, "p05": 171_458,
    "p06": 686_154, "p07": 688_330, "p08": 723_146, "p09": 723_146, "p10": 723_146, "p11": 719_402,
}


@pytest.mark.parametrize("project", sorted(EXPECTED_PARAMS))
def test_seed_model_parameter_count(project: str) -> None:
    model = build_model(model_config(project))
    assert model.count_params() == EXPECTED_PARAMS[project]
    assert model.output_shape == (None, 10)


def test_p09_and_p10_differ_from_p08_only_in_dropout() -> None:
    rates = {
        p: [spec["rate"] for spec in model_config(p).layers if spec["type"] == "Dropout"]
        for p in ("p08", "p09", "p10")
    }
    assert rates["p08"] == [0.3, 0.3, 0.3, 0.3, 0.2, 0.1]
    assert rates["p09"] == [0.3, 0.3, 0.4, 0.3, 0.2, 0.1]
    assert rates["p10"] == [0.2, 0.2, 0.2, 0.2, 0.2, 0.1]

    def without_rates(project: str) -> dict:
        """The whole model config but its name, each Dropout layer kept in its place without its rate."""
        config = dataclasses.asdict(model_config(project))
        layers = [{k: v for k, v in spec.items() if not (spec["type"] == "Dropout" and k == "rate")}
                  for spec in config.pop("layers")]
        return {**{k: v for k, v in config.items() if k != "name"}, "layers": layers}

    assert without_rates("p09") == without_rates("p08") == without_rates("p10")


def test_p12_resnet9_is_a_resnet9_with_a_scaled_head() -> None:
    model = build_model(model_config("p12_resnet9"))
    assert sum(layer.__class__.__name__ == "Add" for layer in model.layers) == 2
    assert model.get_layer("head_scale").scale == 0.125
    convs = [layer.filters for layer in model.layers if layer.__class__.__name__ == "Conv2D"]
    assert convs == [64, 128, 128, 128, 256, 512, 512, 512]
    conv = 9 * (3 * 64 + 64 * 128 + 2 * 128 * 128 + 128 * 256 + 256 * 512 + 2 * 512 * 512)  # no biases
    batch_norm = 4 * (64 + 128 * 3 + 256 + 512 * 3)
    assert model.count_params() == conv + batch_norm + 512 * 10 + 10 == 6_577_610


def test_unknown_layer_type_names_value_and_allowed() -> None:
    cfg = {"name": "bad", "input_shape": [32, 32, 3], "num_classes": 10, "layers": [{"type": "Conv3x3"}]}
    with pytest.raises(ModelConfigError, match=r"model\.layers\.0: unknown layer type 'Conv3x3'.*Conv2D"):
        build_model(ModelConfig(**cfg))


def test_bad_layer_argument_is_named() -> None:
    cfg = {"name": "bad", "input_shape": [32, 32, 3], "num_classes": 10,
           "layers": [{"type": "Dense", "unitz": 3}]}
    with pytest.raises(ModelConfigError, match=r"model\.layers\.0: cannot build Dense"):
        build_model(ModelConfig(**cfg))


def test_residual_block_adds_branch_to_input() -> None:
    conv = {"type": "Conv2D", "filters": 8, "kernel_size": 3, "padding": "same"}
    cfg = {"name": "res", "input_shape": [8, 8, 8], "num_classes": 10,
           "layers": [{"type": "Residual", "layers": [conv, conv]}, {"type": "GlobalMaxPooling2D"}]}
    model = build_model(ModelConfig(**cfg))
    assert any(layer.__class__.__name__ == "Add" for layer in model.layers)
    assert model.count_params() == 2 * (8 * 8 * 9 + 8) + 8 * 10 + 10


def test_p12_is_airbench94s_network() -> None:
    model = build_model(model_config("p12"))
    assert model.get_layer("head_scale").scale == pytest.approx(1 / 9)
    convs = [layer.filters for layer in model.layers if layer.__class__.__name__ == "Conv2D"]
    assert convs == [64, 64, 256, 256, 256, 256]
    norms = [layer for layer in model.layers if layer.__class__.__name__ == "BatchNormalization"]
    assert all([w.name for w in layer.trainable_weights] == ["beta"] for layer in norms), "frozen scale, trained bias"
    whitening = 2 * 2 * 3 * 24 + 24  # frozen kernel, trained bias
    conv = 9 * (24 * 64 + 64 * 64 + 64 * 256 + 3 * 256 * 256)  # no biases
    batch_norm = 3 * (2 * 64 + 4 * 256)  # beta, moving mean, moving variance
    assert model.count_params() == whitening + conv + batch_norm + 256 * 10 + 10 == 1_973_954
    assert model.output_shape == (None, 10)
