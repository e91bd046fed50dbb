"""Prediction throughput of a logged cnnlab model, three ways, in images per second (median of repeats):
  - baseline: `model.predict` in this process on a uint8 batch, with Keras' default batch size as the served
    model uses it (the Keras model that MLflow loads; loaded and warmed up once, not timed);
  - served: `mlflow models serve --env-manager local` started once (start-up not timed, one warm-up request),
    then one `POST /invocations` of the whole batch as JSON per repeat;
  - CLI: `python -m cnnlab.predict <model> <files>` on the batch written as PNG files, one process per repeat,
    start-up included (what a user waits for).
The device is printed with the table. The model comes from the store MLFLOW_TRACKING_URI names (default
sqlite:///mlflow.db here), e.g. after `python -m cnnlab.train project=p11 data=tiny registry.register=true`:

    python bench/predict.py models:/cnnlab-p11@champion --images 256 --repeats 5
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image


def timed(step: Callable[[], object], repeats: int) -> float:
    """Median seconds of `repeats` calls of `step`."""
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(model: str, log: Path) -> tuple[subprocess.Popen, str]:
    """`mlflow models serve` on a free local port, once it answers /ping; returns the process and its URL."""
    port = free_port()
    server = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m", model,
                               "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
                              stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 300
    while time.monotonic() < deadline and server.poll() is None:
        try:
            urllib.request.urlopen(f"{url}/ping", timeout=2).close()
            return server, url
        except OSError:
            time.sleep(0.5)
    os.killpg(server.pid, signal.SIGKILL)
    raise SystemExit(f"mlflow models serve did not come up: {log.read_text()[-2000:]}")


def post(url: str, body: bytes) -> list:
    request = urllib.request.Request(f"{url}/invocations", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.loads(response.read())["predictions"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="MLflow model URI, e.g. models:/cnnlab-p11@champion")
    parser.add_argument("--images", type=int, default=256, help="images per batch (request, CLI call)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    import keras
    import mlflow.pyfunc

    from cnnlab.job.steps import device_name

    pixels = np.random.default_rng(0).integers(0, 256, size=(args.images, 32, 32, 3), dtype=np.uint8)
    keras_model = mlflow.pyfunc.load_model(args.model).get_raw_model()
    keras_model.predict(pixels, verbose=0)
    rates = {"model.predict in process (baseline)": args.images / timed(
        lambda: keras_model.predict(pixels, verbose=0), args.repeats)}

    with tempfile.TemporaryDirectory() as tmp:
        body = json.dumps({"inputs": pixels.tolist()}).encode()
        server, url = serve(args.model, Path(tmp, "serve.log"))
        try:
            post(url, body)
            rates["mlflow models serve, one JSON request"] = args.images / timed(lambda: post(url, body), args.repeats)
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=60)
        files = []
        for i, image in enumerate(pixels):
            files.append(str(Path(tmp, f"{i}.png")))
            Image.fromarray(image).save(files[-1])
        command = [sys.executable, "-m", "cnnlab.predict", args.model, *files]
        rates["python -m cnnlab.predict, one process"] = args.images / timed(
            lambda: subprocess.run(command, check=True, capture_output=True), args.repeats)

    print(f"device: {device_name()}, {os.cpu_count()} CPU cores, Keras {keras.__version__} on "
          f"{keras.backend.backend()}, MLflow {mlflow.__version__}; {datetime.date.today()}")
    print(f"{args.model}, batches of {args.images} uint8 32x32x3 images, median of {args.repeats} repeats")
    print("| path | images/s | vs baseline |")
    print("|---|---|---|")
    base = rates["model.predict in process (baseline)"]
    for name, rate in rates.items():
        print(f"| {name} | {rate:,.0f} | {rate / base:.3f}x |")


if __name__ == "__main__":
    main()
