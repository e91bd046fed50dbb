"""Every project composes from the Hydra tree; conf/local wins; bad values stop with an error naming key, value
and allowed; `settings` holds exactly what decides a trained model."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException

from cnnlab.config.backend import use_backend
from cnnlab.config.compose import compose
from cnnlab.config.errors import ConfigError
from cnnlab.config.settings import capped, result_key, settings
from cnnlab.job.steps import data_source
from cnnlab.run.context import JobContext
from cnnlab.run.describe import run_name
from tests.conftest import CONF, compose_config
from tests.support import chosen, conf_projects, project_file, validate

# The source's table (P00-P11) and its figures; a project it does not have (P11's variant, P12, a new one) is
# checked against what its own file picks.
REPORTED = {"p00": 62.10, "p01": 64.76, "p02": 67.33, "p03": 69.44, "p04": 71.54, "p05": None, "p06": None,
            "p07": 77.43, "p08": 80.96, "p09": 81.68, "p10": 81.95, "p11": 82.86}


@pytest.mark.parametrize("project", conf_projects())
def test_every_project_composes_and_validates(project: str) -> None:
    cfg = compose_config(f"project={project}")
    assert cfg.project.id == project
    assert (cfg.model.name, cfg.augmentation.name) == (chosen(project, "model"), chosen(project, "augmentation"))
    reported = project_file(project)["project"].get("reported_accuracy")
    assert cfg.project.reported_accuracy == REPORTED.get(project, reported)
    if project in REPORTED:  # the source's projects, as its table has them
        assert cfg.model.name == project
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
    ("selection.metric=test_accuracy", "selection.metric", "validation metric.*never used for choosing"),
    ("selection.direction=up", "selection.direction", "maximize or minimize"),
    ("tracking.system_metrics_interval=0", "tracking.system_metrics_interval", "positive number of seconds"),
    ("tracking.system_metrics=sometimes", "tracking.system_metrics", "true or false"),
    ("training.optimizer.name=adamz", "training.optimizer.name", "adam"),
    ("training.optimizer.learning_rate=-1", "training.optimizer.learning_rate", "positive"),
    ("training.mixed_precision=maybe", "training.mixed_precision", "true or false"),
    ("on_finished=overwrite", "on_finished", "skip, new"),
    ("training.device_data=gpu", "training.device_data", "auto, true or false"),
    ("training.optimizer.schedule=step", "training.optimizer.schedule", "none or warmup_cosine"),
    ("data.md5=abc", "data.md5", "32 lowercase hex"),
    ("model.layers.0.type=Conv9D", "model.layers.0", "Conv2D"),
    ("project.id=.", "project.id", "letters, digits"),
    ("project.id=..", "project.id", "letters, digits"),
    ("project.id=../../x", "project.id", "letters, digits"),
    ("project.id=.hidden", "project.id", "letters, digits"),
    ("model.layers.0.filters=-3", r"model\.layers\.0\.filters=-3", "strictly positive"),
    ("model.layers.0.padding=sideways", r"model\.layers\.0\.padding='sideways'", "valid"),
    ("+model.layers.0.filterz=3", r"model\.layers\.0\.filterz=3", "Unrecognized keyword"),
    ("model.layers.1=Flatten", "model.layers", "a mapping with a 'type'"),
    ("training.optimizer.momentum=0.9", r"training\.optimizer\.momentum=0\.9", "adam says"),
    ("training.optimizer.learning_rate=nan", r"training\.optimizer\.learning_rate=nan", "a finite number"),
    ("training.optimizer.learning_rate=inf", r"training\.optimizer\.learning_rate=inf", "a finite number"),
    ("augmentation.layers=[{type:RandomRotation}]", r"augmentation\.layers\.0", "factor"),
    ("data=tiny data.generate.test=0", r"data\.generate\.test", "positive integer"),
    ("project=p12 training.optimizer.frozen_variables=[whiten/biass]", r"frozen_variables=\['whiten/biass'\]",
     "paths of the model's trained variables \\(whiten/bias,"),
    ("project=p12 training.optimizer.frozen_after_steps=-1", "frozen_after_steps=-1", "a number of steps >= 0"),
])
def test_bad_values_are_named_with_what_is_allowed(override: str, key: str, allowed: str) -> None:
    with pytest.raises(ConfigError, match=rf"{key}.*{allowed}"):
        validate(compose_config(*override.split()))


def test_an_output_path_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("a file")
    with pytest.raises(ConfigError, match=r"paths\.outputs=.*taken.*a folder cnnlab can write into.*is a file"):
        validate(compose_config(f"paths.outputs={tmp_path / 'taken' / 'sub'}"))


def test_conf_local_wins_over_the_main_config(tmp_path: Path) -> None:
    conf = shutil.copytree(CONF, tmp_path / "conf")
    (conf / "local" / "default.yaml").write_text(
        "# @package _global_\nmirror:\n  source: /mirror/cifar-10-python.tar.gz\n"
        "  md5: 65ee3a01660a2d2a900036a9439a508e"
        "\npaths:\n  data: /big/disk/data\n  runs: /big/disk/runs\n")
    cfg = compose([], config_dir=conf)
    assert (cfg.mirror.source, cfg.mirror.md5) == ("/mirror/cifar-10-python.tar.gz", "65ee3a01660a2d2a900036a9439a508e")
    assert (cfg.paths.data, cfg.paths.runs, cfg.paths.outputs) == ("/big/disk/data", "/big/disk/runs", "outputs")
    assert compose(["paths.data=elsewhere"], config_dir=conf).paths.data == "elsewhere", "the command line wins"
    assert compose([]).mirror.source is None, "without conf/local/default.yaml nothing changes"


def test_settings_hold_what_decides_the_model_and_nothing_else() -> None:
    base = compose_config("project=p05")
    key = result_key(base)
    for override in ("project.description=other", "project.reported_accuracy=1.0", "paths.runs=elsewhere",
                     "tracking.log_model=false", "tracking.uri=sqlite:///x.db", "on_finished=new", "publish=true",
                     "data.download_retries=7", "data.source=https://example.invalid/c.tar.gz"):
        assert result_key(compose_config("project=p05", override)) == key, override
    for override in ("model.layers.0.filters=64", "training.seed=1", "augmentation=p11", "data=tiny", "backend=jax",
                     "training.optimizer.learning_rate=0.002", "selection.metric=val_loss"):
        assert result_key(compose_config("project=p05", override)) != key, override
    # the selection decides which epoch's weights are kept
    assert set(settings(base)) == {"project", "backend", "data", "model", "augmentation", "training", "selection"}


@pytest.mark.parametrize("project", conf_projects())
def test_an_epoch_cap_keeps_every_project_valid(project: str) -> None:
    cfg = capped(compose_config(f"project={project}", "max_epochs=1"))
    assert cfg.training.epochs == 1
    validate(cfg)


def test_run_names_tell_apart_data_epochs_caps_and_settings() -> None:
    tiny = compose_config("project=p00", "data=tiny", "training.epochs=3")
    real = capped(compose_config("project=p00", "data=cifar10", "max_epochs=3"))
    plain = JobContext()
    names = {run_name(cfg, result_key(cfg), plain) for cfg in (tiny, real, compose_config("project=p00", "data=tiny"))}
    assert len(names) == 3
    assert run_name(real, "abcdef0123", plain).startswith("p00 · cifar10 · 3 ep (cap 3) · abcdef")
    assert run_name(tiny, "abcdef0123", plain) == "p00 · tiny · 3 ep · abcdef"


def test_unknown_backend_is_refused_before_keras_starts() -> None:
    with pytest.raises(ConfigError, match=r"backend='theano'.*tensorflow, jax, torch"):
        use_backend("theano")


def test_mirror_from_environment_replaces_the_official_source(monkeypatch: pytest.MonkeyPatch) -> None:
    from cnnlab.run.data import DataSpec

    monkeypatch.setenv("CNNLAB_DATA_SOURCE", "/mirror/cifar-10-python.tar.gz")
    monkeypatch.setenv("CNNLAB_DATA_MD5", "0" * 32)
    job = compose_config()
    spec = DataSpec.from_config(job.data, job.mirror, job.paths.data)
    assert (spec.source, spec.md5) == ("/mirror/cifar-10-python.tar.gz", "0" * 32)
    tiny_job = compose_config("data=tiny")
    tiny = DataSpec.from_config(tiny_job.data, tiny_job.mirror, tiny_job.paths.data)
    assert tiny.source == "generated" and tiny.generate and not tiny.mirrored
    assert data_source(tiny_job).startswith("generated by cnnlab"), "a mirror never replaces generated data"
    monkeypatch.delenv("CNNLAB_DATA_SOURCE")
    monkeypatch.delenv("CNNLAB_DATA_MD5")
    assert result_key(compose_config("data=tiny")) == result_key(tiny_job), "nor does it change generated data's key"


def test_a_backend_that_is_not_installed_is_named() -> None:
    import importlib.util

    missing = next((b for b in ("jax", "torch") if importlib.util.find_spec(b) is None), None)
    if missing is None:
        pytest.skip("every backend is installed here")
    with pytest.raises(ConfigError, match=rf"backend='{missing}'.*not installed"):
        use_backend(missing)
