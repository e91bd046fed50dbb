"""Every error a user can cause or meet (issue #33, points 4-6) ends every cnnlab command with one line naming the
file or value and the fix, exit status 2, no traceback, before training starts (no MLflow run) and leaving nothing
empty behind; those that need no download come before TensorFlow and MLflow are imported: a tripwire on
PYTHONPATH makes importing either fail, so a refusal that came after them would be a traceback here.

Real processes on tiny data or hand-made files; nothing is mocked but the tripwire."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from filelock import FileLock

from cnnlab.cli import _refusals
from cnnlab.config.errors import ConfigError
from cnnlab.config.settings import capped, result_key
from cnnlab.core.data import DataError
from cnnlab.errors import UserError
from cnnlab.run.state import RunState
from tests.conftest import ROOT, compose_config, folders, job_command, job_env
from tests.support import runs

pytestmark = pytest.mark.system
HEAVY = ("tensorflow", "mlflow")


def tripwire(folder: Path) -> str:
    """A folder for PYTHONPATH whose `tensorflow` and `mlflow` refuse to be imported."""
    for name in HEAVY:
        (folder / name).mkdir(parents=True)
        (folder / name / "__init__.py").write_text(f"raise ImportError('{name} imported before the refusal')\n")
    return str(folder)


def env(tmp_path: Path, light: bool, **extra: str) -> dict[str, str]:
    base = {k: v for k, v in job_env(**extra).items() if not k.startswith("CNNLAB_DATA_") or k in extra}
    if light:
        base["PYTHONPATH"] = os.pathsep.join([tripwire(tmp_path / "tripwire"), str(ROOT / "src")])
    return base


def refused(done: subprocess.CompletedProcess[str], *says: str) -> str:
    """The command's one-line refusal, checked: exit 2, no traceback, the line names what it should."""
    output = done.stdout + done.stderr
    assert done.returncode == 2, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and done.stderr.rstrip().endswith(lines[0]), done.stderr[-3000:]
    for said in says:
        assert said in lines[0], lines[0]
    return lines[0]


def train(tmp_path: Path, data: Path, *overrides: str, light: bool = True, **environ: str):
    return subprocess.run(job_command("cnnlab.train", tmp_path, data, *overrides), cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env=env(tmp_path, light, **environ))


def nothing_started(tmp_path: Path) -> None:
    """No MLflow run, no run folder, no state, no empty folder left."""
    if (tmp_path / "mlflow.db").exists():  # (opening a store that is not there would make one)
        assert runs(tmp_path) == [], "no MLflow run for a refusal"
    assert not (tmp_path / "runs" / "p00").exists() and not list((tmp_path / "checkpoints").glob("*"))
    empty = [p for p in tmp_path.rglob("*") if p.is_dir() and not any(p.iterdir()) and "tripwire" not in p.parts]
    assert empty == [], "nothing empty left behind"


def test_a_model_keras_cannot_use_is_refused_before_data_store_or_run(tmp_path: Path, tiny_data_dir: Path) -> None:
    """`model.layers=[]` built (the head then predicts per pixel): before, it passed every check and failed in fit."""
    done = train(tmp_path, tiny_data_dir, "project=p00", "model.layers=[]", light=False)
    refused(done, "model.layers=[] is not allowed", "Flatten", "(None, 32, 32, 10)")
    assert not (tmp_path / "mlflow.db").exists(), "refused before the store was opened"
    nothing_started(tmp_path)


@pytest.mark.parametrize("blocked", ["runs/p00", "mlruns"])
def test_a_folder_the_job_would_write_is_checked_before_anything(blocked: str, tmp_path: Path,
                                                                  tiny_data_dir: Path) -> None:
    """A project's run folder or the store's artifacts folder that cannot be written (a file in its place: root
    ignores permissions): before, the job trained fully and failed saving, or failed when fit started."""
    (tmp_path / blocked).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / blocked).write_text("not a folder")
    done = train(tmp_path, tiny_data_dir, "project=p00")
    key = "paths.runs=" if blocked == "runs/p00" else "tracking.uri="
    refused(done, key, f"{tmp_path / blocked} is a file, not a folder")
    assert not (tmp_path / "mlflow.db").exists()


def test_a_twin_is_refused_before_the_heavy_imports(tmp_path: Path, tiny_data_dir: Path) -> None:
    """The lock is checked first: before, a twin started 0.3 s after the first was refused after 23 s."""
    job = capped(compose_config("data=tiny", *folders(tmp_path, tiny_data_dir), "project=p00"))
    lock = RunState.lock_path(RunState.folder_for(job.paths.checkpoints, job.project.id, result_key(job)))
    lock.parent.mkdir(parents=True)
    with FileLock(lock):
        done = train(tmp_path, tiny_data_dir, "project=p00")
    refused(done, "p00 with these settings is being trained by another process")


def cifar(tmp_path: Path) -> tuple[Path, list[str]]:
    data = tmp_path / "data"
    return data, ["data=cifar10", *folders(tmp_path, data)[1:], f"paths.data={data}"]


def test_an_archive_in_place_with_another_md5_is_kept_and_named_before_the_heavy_imports(tmp_path: Path) -> None:
    data, overrides = cifar(tmp_path)
    archive = data / "raw" / "cifar10" / "cifar-10-python.tar.gz"
    archive.parent.mkdir(parents=True)
    archive.write_bytes(b"another copy")
    done = subprocess.run([sys.executable, "-m", "cnnlab.train", "project=p00", *overrides], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env=env(tmp_path, True))
    refused(done, f"{archive} has md5 {hashlib.md5(b'another copy').hexdigest()}", "it is kept as it is")
    assert archive.read_bytes() == b"another copy"


@pytest.mark.parametrize("where", ["mirror", "offline"])
def test_a_source_that_cannot_be_fetched_is_one_line_naming_it_and_leaves_no_empty_folder(
        where: str, tmp_path: Path) -> None:
    """A mirror naming a missing file (refused before the heavy imports, without "use a mirror"), or offline
    without one (the download tried): before, a 19-21 s traceback and an empty data/raw/cifar10/."""
    data, overrides = cifar(tmp_path)
    if where == "mirror":
        done = subprocess.run([sys.executable, "-m", "cnnlab.train", "project=p00", *overrides], cwd=ROOT,
                              capture_output=True, text=True, timeout=600,
                              env=env(tmp_path, True, CNNLAB_DATA_SOURCE=str(tmp_path / "gone.tar.gz"),
                                      CNNLAB_DATA_MD5="0" * 32))
        line = refused(done, f"mirror.source (CNNLAB_DATA_SOURCE)='{tmp_path / 'gone.tar.gz'}' is not a file")
        assert "Use a mirror" not in line
    else:
        done = subprocess.run([sys.executable, "-m", "cnnlab.train", "project=p00", *overrides,
                               "data.source=http://127.0.0.1:9/cifar-10-python.tar.gz", "data.download_retries=1"],
                              cwd=ROOT, capture_output=True, text=True, timeout=600, env=env(tmp_path, False))
        refused(done, "could not fetch http://127.0.0.1:9/cifar-10-python.tar.gz", "CNNLAB_DATA_SOURCE")
    assert not (data / "raw").exists()
    nothing_started(tmp_path)


def test_a_corrupt_archive_with_its_md5_is_one_line(tmp_path: Path) -> None:
    data, overrides = cifar(tmp_path)
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(b"\x1f\x8b not really gzip")
    done = subprocess.run([sys.executable, "-m", "cnnlab.train", "project=p00", *overrides], cwd=ROOT,
                          capture_output=True, text=True, timeout=600,
                          env=env(tmp_path, False, CNNLAB_DATA_SOURCE=str(broken),
                                  CNNLAB_DATA_MD5=hashlib.md5(broken.read_bytes()).hexdigest()))
    refused(done, "cifar-10-python.tar.gz is not a readable CIFAR-10 python archive")
    nothing_started(tmp_path)


@pytest.mark.parametrize("model", ["missing", "text"])
def test_evaluate_refuses_a_model_that_is_missing_or_not_one(model: str, tmp_path: Path, tiny_data_dir: Path) -> None:
    path = tmp_path / "model.keras"
    if model == "text":
        path.write_text("not a model")
        (tmp_path / "run.json").write_text('{"data": "tiny"}')
    done = subprocess.run(job_command("cnnlab.evaluate", tmp_path, tiny_data_dir, "project=p00",
                                      f"evaluate.model={path}"), cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env=env(tmp_path, True))
    refused(done, str(path), "no such file" if model == "missing" else "is not a Keras model file", "evaluate.model=")


def test_predict_refuses_a_model_that_is_not_there(tmp_path: Path) -> None:
    image = tmp_path / "x.png"
    image.write_bytes(b"")
    done = subprocess.run([sys.executable, "-m", "cnnlab.predict", str(tmp_path / "no-model"), str(image)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env(tmp_path, False))
    refused(done, "x.png")


def project_folder(tmp_path: Path, params: dict) -> Path:
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    return folder


PARAMS = {"projects": ["p00"], "seeds": [42], "data": "tiny", "backend": "tensorflow", "max_epochs": 0}


@pytest.mark.parametrize("content", ["", "{not json", "[]"])
def test_report_names_an_empty_or_corrupt_metrics_file(content: str, tmp_path: Path) -> None:
    folder = project_folder(tmp_path, PARAMS)
    (folder / "metrics" / "s42").mkdir(parents=True)
    (folder / "metrics" / "s42" / "p00.json").write_text(content)
    (folder / "outputs" / "s42" / "p00").mkdir(parents=True)
    (folder / "outputs" / "s42" / "p00" / "run.json").write_text("{}")
    done = subprocess.run([sys.executable, "-m", "cnnlab.report"], cwd=folder, capture_output=True, text=True,
                          timeout=600, env=env(tmp_path, True))
    refused(done, "metrics/s42/p00.json is ", "dvc repro -f train@p00-42")


def test_report_names_only_the_file_that_is_missing(tmp_path: Path) -> None:
    folder = project_folder(tmp_path, PARAMS)
    (folder / "metrics" / "s42").mkdir(parents=True)
    (folder / "metrics" / "s42" / "p00.json").write_text("{}")
    done = subprocess.run([sys.executable, "-m", "cnnlab.report"], cwd=folder, capture_output=True, text=True,
                          timeout=600, env=env(tmp_path, True))
    line = refused(done, "outputs/s42/p00/run.json is missing")
    assert "metrics/s42/p00.json" not in line


@pytest.mark.parametrize(("change", "says"), [
    ({"projects": ["p00", "p01", "p00"]}, "p00 named more than once"),
    ({"epochs": 3}, "epochs is not a pipeline parameter"),
    ({"data": "mnist"}, "data='mnist' is not allowed"),
])
def test_the_pipeline_refuses_bad_params_with_exit_status_2(change: dict, says: str, tmp_path: Path) -> None:
    folder = project_folder(tmp_path, {**PARAMS, **change})
    done = subprocess.run([sys.executable, "-m", "cnnlab.pipeline", "compose"], cwd=folder, capture_output=True,
                          text=True, timeout=600, env=env(tmp_path, True))
    refused(done, "params.yaml: ", says)
    assert not (folder / "composed").exists()


def test_every_refusal_class_is_walked_here() -> None:
    """The wrapper's classes are the ones these tests meet: a new class of refusal gets a test here."""
    assert set(_refusals()) == {ConfigError, DataError, UserError}


