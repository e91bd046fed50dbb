"""Logging overhead per epoch: what cnnlab's per-epoch MLflow logging (cnnlab.tracking.epochs.log_epoch: one
synchronous batch of the epoch's six metrics) costs on the embedded sqlite store against a tracking server.

Each repeat is a fresh run that logs `--epochs` epochs; the figure is the median over repeats of the seconds per
epoch, with the server's ratio to sqlite measured in the same process. The server is any running `mlflow server`
(docs/team.md starts one on PostgreSQL); without `--server` only sqlite is measured.

    python bench/tracking.py --server http://127.0.0.1:5000 --epochs 50 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

LOGS = {"loss": 1.5, "accuracy": 0.4, "val_loss": 1.6, "val_accuracy": 0.38, "learning_rate": 1e-3,
        "epoch_seconds": 2.0}


def seconds_per_epoch(uri: str, epochs: int) -> float:
    """One run on `uri` logging `epochs` epochs the way a training job does; seconds per epoch."""
    import mlflow

    from cnnlab.tracking.epochs import log_epoch

    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("cnnlab-tracking-bench")
    with mlflow.start_run():
        started = time.perf_counter()
        for epoch in range(epochs):
            log_epoch(epoch, dict(LOGS))
        return (time.perf_counter() - started) / epochs


def main() -> None:
    from cnnlab.config.backend import use_backend

    use_backend(os.environ["KERAS_BACKEND"])  # quietly, as a training job starts it
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", help="a running tracking server's URL (http://host:port)")
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        stores = {"sqlite (embedded)": f"sqlite:///{Path(folder) / 'mlflow.db'}"}
        if args.server:
            stores[f"server {args.server}"] = args.server
        for uri in stores.values():
            seconds_per_epoch(uri, 2)  # creates the store and experiment; not timed
        medians = {name: statistics.median(seconds_per_epoch(uri, args.epochs) for _ in range(args.repeats))
                   for name, uri in stores.items()}
    print(f"host: {os.cpu_count()}-core CPU, {platform.machine()}, Python {platform.python_version()}; "
          f"median of {args.repeats} runs x {args.epochs} epochs")
    print("| store | ms per epoch | ratio to sqlite |")
    print("|---|---|---|")
    base = medians["sqlite (embedded)"]
    for name, value in medians.items():
        print(f"| {name} | {1000 * value:.1f} | {value / base:.2f}x |")


if __name__ == "__main__":
    main()
