"""Every project composes from the Hydra tree; bad values stop with an error naming key, value and allowed."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException

from cnnlab.config import ConfigError, use_backend, validate
from tests.conftest import compose_config
from tests.test_models import EXPECTED_PARAMS

REPORTED = {"p00": 62.10, "p01": 64.76, "p02": 67.33, "p03": 69.44, "p04": 71.54, "p05": None, "p06": None,
            "p07": 77.43, "p08": 80.96, "p09": 81.68, "p10": 81.95, "p11": 82.86}


@pytest.mark.parametrize("project", sorted(EXPECTED_PARAMS))
def test_every_project_composes_and_validates(project: str) -> None:
    cfg = compose_config(f"project={project}")
    assert cfg.project.id == project
    assert cfg.model.name == project
    assert cfg.project.reported_accuracy == REPORTED[project]
    assert cfg.augmentation.name == ("p11" if project == "p11" else "none")
    assert cfg.training.batch_size == (32 if project in {"p08", "p09", "p10", "p11"} else 512)
    assert cfg.training.early_stopping.enabled == (project != "p00")
    assert cfg.training.epochs == (20 if project == "p00" else 100)
    validate(cfg)


def test_command_line_overrides_win_over_the_project() -> None:
    cfg = compose_config("project=p08", "training.epochs=3", "augmentation=p11")
    chosen = (cfg.model.name, cfg.augmentation.name, cfg.training.epochs, cfg.training.batch_size)
    assert chosen == ("p08", "p11", 3, 32)


@pytest.mark.parametrize("override, option", [
    ("project=p99", "p00"), ("model=resnet1000", "p11"), ("augmentation=cutmix", "flip_translate"),
])
def test_unknown_group_option_lists_the_available_ones(override: str, option: str) -> None:
    with pytest.raises((MissingConfigException, ConfigCompositionException)) as info:
        compose_config(override)
    message = str(info.value)
    assert override.split("=")[1] in message and option in message


@pytest.mark.parametrize("override, key, allowed", [
    ("training.epochs=0", "training.epochs", "positive integer"),
    ("training.epochs=-3", "training.epochs", "positive integer"),
    ("training.batch_size=0", "training.batch_size", "positive integer"),
    ("training.validation_split=1.5", "training.validation_split", r"\[0, 1\)"),
    ("training.optimizer.name=adamz", "training.optimizer.name", "adam"),
    ("training.optimizer.learning_rate=-1", "training.optimizer.learning_rate", "positive"),
    ("training.mixed_precision=maybe", "training.mixed_precision", "true or false"),
    ("on_finished=overwrite", "on_finished", "new, skip"),
    ("training.device_data=gpu", "training.device_data", "auto, true or false"),
    ("training.optimizer.schedule=step", "training.optimizer.schedule", "none or warmup_cosine"),
    ("data.md5=abc", "data.md5", "32 lowercase hex"),
    ("model.layers.0.type=Conv9D", "model.layers.0", "Conv2D"),
])
def test_bad_values_are_named_with_what_is_allowed(override: str, key: str, allowed: str) -> None:
    with pytest.raises(ConfigError, match=rf"{key}.*{allowed}"):
        validate(compose_config(override))


def test_unknown_backend_is_refused_before_keras_starts() -> None:
    with pytest.raises(ConfigError, match=r"backend='theano'.*tensorflow, jax, torch"):
        use_backend("theano")


def test_mirror_from_environment_replaces_the_official_source(monkeypatch: pytest.MonkeyPatch) -> None:
    from cnnlab.data import DataSpec

    monkeypatch.setenv("CNNLAB_DATA_SOURCE", "/mirror/cifar-10-python.tar.gz")
    monkeypatch.setenv("CNNLAB_DATA_MD5", "0" * 32)
    spec = DataSpec.from_config(compose_config())
    assert (spec.source, spec.md5) == ("/mirror/cifar-10-python.tar.gz", "0" * 32)
    tiny = DataSpec.from_config(compose_config("data=tiny"))
    assert tiny.source == "generated" and tiny.generate


def test_a_backend_that_is_not_installed_is_named() -> None:
    import importlib.util

    missing = next((b for b in ("jax", "torch") if importlib.util.find_spec(b) is None), None)
    if missing is None:
        pytest.skip("every backend is installed here")
    with pytest.raises(ConfigError, match=rf"backend='{missing}'.*not installed"):
        use_backend(missing)
