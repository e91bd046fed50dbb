"""`python -m cnnlab.predict` on bad input, without a trained model: images are made what the training data is
(32x32 RGB uint8), and a file that is not an image or a model URI that does not exist stops it with one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from cnnlab.predict import read_image
from tests.conftest import job_env


def predict(tmp_path: Path, *args: str, store: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cnnlab.predict", *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env=job_env(MLFLOW_TRACKING_URI=f"sqlite:///{store}"))


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    return done.stderr.strip().splitlines()[-1]


def test_any_image_becomes_a_32x32_rgb_uint8_array(tmp_path: Path) -> None:
    wide = np.zeros((48, 96, 4), np.uint8)
    wide[..., 0], wide[..., 3] = 200, 255
    Image.fromarray(wide, "RGBA").save(tmp_path / "wide.png")
    Image.fromarray(np.full((50, 50), 90, np.uint8), "L").save(tmp_path / "grey.jpg")
    red = read_image(tmp_path / "wide.png")
    assert red.shape == (32, 32, 3) and red.dtype == np.uint8
    assert (red[..., 0] == 200).all() and (red[..., 1:] == 0).all()
    assert np.abs(read_image(tmp_path / "grey.jpg").astype(int) - 90).max() <= 2


def test_a_file_that_is_not_an_image_is_refused_before_the_model(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a picture")
    done = predict(tmp_path, "models:/cnnlab-p11@champion", "notes.txt", store=tmp_path / "absent.db")
    assert one_line_error(done) == "cnnlab.predict: notes.txt: not an image file Pillow can read (PNG, JPEG, ...)"
    missing = one_line_error(predict(tmp_path, "models:/cnnlab-p11@champion", "gone.png", store=tmp_path / "x.db"))
    assert missing.startswith("cnnlab.predict: gone.png: ") and "No such file" in missing


@pytest.mark.system  # three processes that import MLflow
def test_a_model_uri_that_does_not_exist_is_refused(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "cat.png")
    error = one_line_error(predict(tmp_path, "models:/cnnlab-p11@champion", "cat.png", store=tmp_path / "none.db"))
    assert error.startswith("cnnlab.predict: model 'models:/cnnlab-p11@champion': there is no MLflow store")
    assert not (tmp_path / "none.db").exists(), "looking must not create a store"

    store = tmp_path / "mlflow.db"
    MlflowClient(f"sqlite:///{store}").search_experiments()  # an empty store
    error = one_line_error(predict(tmp_path, "models:/cnnlab-p99@champion", "cat.png", store=store))
    assert error.startswith("cnnlab.predict: model 'models:/cnnlab-p99@champion' not found in sqlite:///")
    assert "cnnlab-p99" in error.split(" not found in ")[1]
    error = one_line_error(predict(tmp_path, str(tmp_path / "no-model"), "cat.png", store=store))
    assert error.startswith(f"cnnlab.predict: model '{tmp_path / 'no-model'}' not found")
