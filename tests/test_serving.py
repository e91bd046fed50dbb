"""The P11 model (custom cnnlab layers), trained once on tiny data and registered, used the ways a user would:
loaded in a fresh process outside the checkout where cnnlab is not importable, served by a real
`mlflow models serve` (the only test that starts one) answering uint8 images, and `python -m cnnlab.predict` on
a PNG and a JPEG."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import sysconfig
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
from PIL import Image

from cnnlab.config.machine import has_nvidia_driver
from cnnlab.job.steps import train
from cnnlab.predict import read_image
from tests.conftest import answer, compose_config, folders, free_port, job_env, wait_for

pytestmark = pytest.mark.system
CHAMPION = "models:/cnnlab-p11@champion"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, tiny_data_dir: Path) -> str:
    """The tracking URI of a store where P11 (1 epoch on tiny data) is registered as cnnlab-p11@champion."""
    workdir = tmp_path_factory.mktemp("p11")
    cfg = compose_config("data=tiny", *folders(workdir, tiny_data_dir), "project=p11", "training.epochs=1",
                         "registry.register=true")
    train(cfg)
    return str(cfg.tracking.uri)


def images(n: int) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)


def test_requirements_name_the_backend_and_pinned_versions(store: str) -> None:
    mlflow.set_tracking_uri(store)
    local = Path(mlflow.artifacts.download_artifacts(f"{CHAMPION}"))
    pinned = dict(line.split("==") for line in (local / "requirements.txt").read_text().split())
    import keras

    assert pinned["keras"] == keras.__version__ and pinned["mlflow"] == mlflow.__version__
    assert pinned["numpy"] == np.__version__ and keras.backend.backend() in pinned
    assert (local / "code" / "cnnlab" / "core" / "layers.py").is_file()


def test_p11_loads_and_predicts_where_cnnlab_is_not_importable(store: str, tmp_path: Path) -> None:
    """`python -S` with only site-packages on the path: the editable install's .pth (which puts src/ on the
    path) is not read, so cnnlab comes from the model or from nowhere; the working directory is a temp dir."""
    script = f"""
import json, sys
try:
    import cnnlab
    sys.exit("cnnlab is importable: " + cnnlab.__file__)
except ImportError:
    pass
import numpy as np, mlflow.pyfunc
model = mlflow.pyfunc.load_model({CHAMPION!r})
import cnnlab
x = np.random.default_rng(1).integers(0, 256, size=(2, 32, 32, 3), dtype=np.uint8)
print(json.dumps({{"cnnlab": cnnlab.__file__, "p": model.predict(x).tolist()}}))
"""
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", str(tmp_path)), "TF_CPP_MIN_LOG_LEVEL": "2",
           "PYTHONPATH": sysconfig.get_paths()["purelib"], "MLFLOW_TRACKING_URI": store,
           "KERAS_BACKEND": os.environ["KERAS_BACKEND"]}
    done = subprocess.run([sys.executable, "-S", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert "/code/cnnlab/" in out["cnnlab"], "cnnlab's layers came with the model"
    assert not out["cnnlab"].startswith(str(Path(__file__).resolve().parents[1]))
    mlflow.set_tracking_uri(store)
    here = mlflow.pyfunc.load_model(CHAMPION).predict(images(2))
    np.testing.assert_allclose(out["p"], here, atol=1e-5)


def test_served_champion_answers_uint8_images(store: str, tmp_path: Path) -> None:
    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m", CHAMPION, "--env-manager", "local",
         "-h", "127.0.0.1", "-p", str(port)], cwd=tmp_path, env=job_env(MLFLOW_TRACKING_URI=store),
        stdout=open(tmp_path / "serve.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        log = tmp_path / "serve.log"

        def ready() -> bool:
            assert server.poll() is None, log.read_text()[-3000:]
            return answer(f"http://127.0.0.1:{port}/ping") is not None

        wait_for(ready, "mlflow models serve (/ping)", 180, lambda: log.read_text())
        body = json.dumps({"inputs": images(2).tolist()}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            rows = json.loads(response.read())["predictions"]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    assert len(rows) == 2 and all(len(row) == 10 for row in rows)
    assert np.allclose(np.sum(rows, axis=1), 1, atol=1e-4) and (np.asarray(rows) >= 0).all()
    mlflow.set_tracking_uri(store)
    np.testing.assert_allclose(rows, mlflow.pyfunc.load_model(CHAMPION).predict(images(2)), atol=1e-5)


def test_predict_cli_prints_the_top3_for_a_png_and_a_jpeg(store: str, tmp_path: Path) -> None:
    """Also: on a machine without an NVIDIA driver it starts quietly (TensorFlow's own log level left at its
    default): none of the backend's CUDA probe, oneDNN or CPU-instruction lines."""
    pixels = images(2)
    Image.fromarray(pixels[0]).resize((97, 61)).save(tmp_path / "one.png")
    Image.fromarray(pixels[1]).resize((200, 150)).save(tmp_path / "two.jpg", quality=90)
    env = {k: v for k, v in job_env(MLFLOW_TRACKING_URI=store).items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    done = subprocess.run([sys.executable, "-m", "cnnlab.predict", CHAMPION, "one.png", "two.jpg"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    if not has_nvidia_driver():
        noise = r"cuda|cuInit|oneDNN|absl::InitializeLog|cpu_feature_guard|rebuild TensorFlow"
        assert not re.search(noise, done.stdout + done.stderr, re.IGNORECASE), done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["one.png", "two.jpg"]
    mlflow.set_tracking_uri(store)
    model = mlflow.pyfunc.load_model(CHAMPION)
    names = model.metadata.metadata["class_names"]
    expected = model.predict(np.stack([read_image(tmp_path / "one.png"), read_image(tmp_path / "two.jpg")]))
    for line, row in zip(lines, expected, strict=True):
        top = re.findall(r"(\w+) (\d\.\d{3})", line.split(": ", 1)[1])
        assert len(top) == 3
        best = np.argsort(row)[::-1][:3]
        assert [name for name, _ in top] == [names[i] for i in best]
        assert [float(p) for _, p in top] == pytest.approx([row[i] for i in best], abs=1e-3)
