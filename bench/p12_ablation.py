"""P12's ablation on a validation split (issue #31): which pieces of the recipe earn their place, and what the JPEG
copy's loss costs, each over several seeds.

Every (variant, seed) is one `python -m cnnlab.train project=p12` job on the first 45,000 training images, scored
on the other 5,000 (the validation split: choices are made there, never on the test set), with its own MLflow
store; `--parallel` jobs run at once (a GPU holds several of P12's small trainings). The variants:

- recipe: P12 as configured (lookahead, label smoothing 0.2, alternating flip, 6-view TTA, its precision);
- no_lookahead, no_label_smoothing, no_tta, random_flip (a random horizontal flip instead of the alternating one),
  float32 (no mixed precision), epochs_15 (half as many epochs again): one change each;
- jpeg_50, jpeg_30: the images re-encoded once more at JPEG quality 50 and 30 (train and test alike), to see how
  the accuracy falls as the pixels lose more (the copy itself is about quality 75, 30 dB PSNR).

One JSON line per finished run in `--out` (validation and test accuracy of the last epoch, seconds, device), in the
order they finish; the queue runs the seeds in turn (every variant's first seed, then the second ...), so a run cut
short by `--stop-after` still has a whole first seed.

    python bench/p12_ablation.py --archive .wt/cifar/cifar-10-python.tar.gz \\
        --md5 65ee3a01660a2d2a900036a9439a508e --seeds 42 43 44 --parallel 1 --out ablation.jsonl
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pickle
import re
import subprocess
import sys
import tarfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from cnnlab.core.data import TRAIN_BATCHES, fit_count, read_archive
from cnnlab.run.data import file_digest

SPLIT, BATCH = 0.1, 1024  # the validation split (5,000 of 50,000 images); P12's batch
TTA_LAYERS = {0: ["shift"], 26: []}  # conf/model/p12.yaml: TTAViews (and its keys) first, TTAMean after Flatten
VARIANTS: dict[str, list[str]] = {
    "recipe": [],
    "no_lookahead": ["training.optimizer.lookahead_every=null"],
    "no_label_smoothing": ["training.label_smoothing=0.0"],
    "no_tta": [override for i, keys in TTA_LAYERS.items() for override in (  # each an identity layer instead
        f"model.layers.{i}.type=Activation", *(f"~model.layers.{i}.{key}" for key in keys),
        f"+model.layers.{i}.activation=linear")],
    "random_flip": ["augmentation.layers.0.type=RandomFlip", "+augmentation.layers.0.mode=horizontal"],
    "float32": ["training.mixed_precision=false"],
    "epochs_15": [],
    "jpeg_50": [],
    "jpeg_30": [],
}
JPEG_QUALITY = {"jpeg_50": 50, "jpeg_30": 30}


def _reencoded(images: np.ndarray, quality: int) -> np.ndarray:
    from PIL import Image  # matplotlib's dependency: there wherever cnnlab is

    out = np.empty_like(images)
    for i, image in enumerate(images):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "JPEG", quality=quality)
        out[i] = np.asarray(Image.open(buffer).convert("RGB"))
    return out


def reencode_archive(arrays: dict[str, np.ndarray], class_names: list[str], target: Path,
                     quality: int) -> tuple[str, float]:
    """The images of `arrays` (an archive read by `read_archive`) JPEG-encoded once more at `quality`, written in the
    official archive layout to `target`; its md5 and the PSNR against the images given."""
    with ProcessPoolExecutor() as pool:
        done = {key: np.concatenate(list(pool.map(_reencoded, np.array_split(arrays[key], 64), [quality] * 64)))
                for key in ("x_train", "x_test")}
    error = np.mean([np.mean((done[key].astype(float) - arrays[key]) ** 2) for key in done])
    batches = [(name, rows, labels) for name, rows, labels in zip(
        TRAIN_BATCHES, np.array_split(done["x_train"], 5), np.array_split(arrays["y_train"], 5), strict=True)]
    batches.append(("test_batch", done["x_test"], arrays["y_test"]))
    target.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(target, "w:gz") as tar:
        for name, images, labels in batches:
            add(tar, name, {b"batch_label": name.encode(), b"labels": [int(v) for v in labels],
                            b"data": images.transpose(0, 3, 1, 2).reshape(len(images), 3072),
                            b"filenames": [f"{name}_{i:05d}.jpg".encode() for i in range(len(images))]})
        add(tar, "batches.meta", {b"label_names": [c.encode() for c in class_names],
                                  b"num_cases_per_batch": len(batches[0][1]), b"num_vis": 3072})
    return file_digest(target), float(10 * np.log10(255**2 / error))


def add(tar: tarfile.TarFile, name: str, value: dict) -> None:
    """One pickled member, as the official archive has them."""
    data = pickle.dumps(value, protocol=2)
    info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def job(variant: str, seed: int, epochs: int, steps: int, work: Path, data: dict[str, str]) -> tuple[list[str], Path]:
    """The command of one (variant, seed) and its folder; `steps` an epoch."""
    folder = work / f"{variant}-{seed}"
    epochs = epochs * 3 // 2 if variant == "epochs_15" else epochs
    paths = [f"paths.{key}={folder / key}" for key in ("runs", "checkpoints", "outputs")]
    command = [sys.executable, "-m", "cnnlab.train", "project=p12", f"training.seed={seed}",
               f"training.validation_split={SPLIT}", f"training.epochs={epochs}",
               f"training.optimizer.total_steps={epochs * steps}", f"training.optimizer.frozen_after_steps={3 * steps}",
               f"paths.data={data['dir']}", *paths, f"tracking.uri=sqlite:///{folder / 'mlflow.db'}",
               "tracking.log_model=false", f"hydra.run.dir={folder / 'hydra'}", *VARIANTS[variant]]
    return command, folder


def result(variant: str, seed: int, folder: Path, seconds: float, returncode: int) -> dict:
    """What one finished job measured, read back from its MLflow store."""
    row = {"variant": variant, "seed": seed, "returncode": returncode, "wall_seconds": round(seconds, 1)}
    if returncode == 0:
        import mlflow

        client = mlflow.MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
        experiments = [e.experiment_id for e in client.search_experiments()]
        run = client.search_runs(experiments, f"tags.seed = '{seed}' and metrics.test_accuracy >= 0")[0]
        metrics, tags = run.data.metrics, run.data.tags
        row |= {key: metrics.get(key) for key in ("val_accuracy", "test_accuracy", "train_seconds", "epochs_run")}
        row |= {key: tags.get(key) for key in ("device", "machine", "keras_backend", "cnnlab.key", "data_source")}
    else:  # stopped (--kill-after) or failed: the last epoch its progress line shows, if any
        log = (folder / "log").read_text(errors="replace").replace("\r", "\n")
        epochs = re.findall(r"epoch (\d+)/(\d+) .*?val_accuracy ([\d.]+)", log)
        if epochs:
            row |= {"last_logged_epoch": f"{epochs[-1][0]}/{epochs[-1][1]}", "val_accuracy": float(epochs[-1][2])}
        row["log_tail"] = log[-1500:]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archive", type=Path, required=True, help="the CIFAR-10 archive (the JPEG copy)")
    parser.add_argument("--md5", required=True, help="its md5")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 43, 44])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--work", type=Path, default=Path("ablation"))
    parser.add_argument("--out", type=Path, default=Path("ablation.jsonl"))
    parser.add_argument("--stop-after", type=float, default=float("inf"), help="start no job after these seconds")
    parser.add_argument("--kill-after", type=float, default=float("inf"), help="stop the jobs still running then")
    args = parser.parse_args()
    start = time.monotonic()
    arrays, class_names = read_archive(args.archive)  # read once: the steps an epoch, and the re-encoded copies
    steps = -(-fit_count(len(arrays["y_train"]), SPLIT) // BATCH)  # 44 on 50,000 images
    data = {"jpeg_copy": {"dir": str(args.work / "data" / "copy"), "source": str(args.archive), "md5": args.md5,
                          "label": "JPEG copy"}}
    for variant, quality in JPEG_QUALITY.items():
        if variant in args.variants:
            archive = args.work / f"jpeg{quality}" / "cifar-10-python.tar.gz"
            md5, psnr = reencode_archive(arrays, class_names, archive, quality)
            print(json.dumps({"data": variant, "quality": quality, "md5": md5, "psnr_vs_copy_db": round(psnr, 2),
                              "seconds": round(time.monotonic() - start, 1)}), flush=True)
            data[variant] = {"dir": str(args.work / "data" / f"jpeg{quality}"), "source": str(archive), "md5": md5,
                             "label": f"JPEG copy re-encoded at quality {quality}"}
    queue = [(variant, seed) for seed in args.seeds for variant in args.variants]
    running: dict[tuple[str, int], tuple[subprocess.Popen, Path, float]] = {}
    with args.out.open("a") as out:
        while queue or running:
            while queue and len(running) < args.parallel and time.monotonic() - start < args.stop_after:
                variant, seed = queue.pop(0)
                chosen = data.get(variant, data["jpeg_copy"])
                command, folder = job(variant, seed, args.epochs, steps, args.work.resolve(), chosen)
                folder.mkdir(parents=True, exist_ok=True)
                env = {**os.environ, "CNNLAB_DATA_SOURCE": str(Path(chosen["source"]).resolve()),
                       "CNNLAB_DATA_MD5": chosen["md5"], "CNNLAB_DATA_LABEL": chosen["label"],
                       "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}  # JAX would take 75 % of a GPU per job
                with (folder / "log").open("w") as log:
                    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
                running[variant, seed] = (process, folder, time.monotonic())
            if not running:
                break
            time.sleep(2)
            for (variant, seed), (process, folder, began) in list(running.items()):
                if process.poll() is None and time.monotonic() - start > args.kill_after:
                    process.kill()
                    process.wait()
                if process.poll() is not None:
                    del running[variant, seed]
                    row = result(variant, seed, folder, time.monotonic() - began, process.returncode)
                    row["finished_after"] = round(time.monotonic() - start, 1)
                    out.write(json.dumps(row) + "\n")
                    out.flush()
                    print(json.dumps({k: v for k, v in row.items() if k != "log_tail"}), flush=True)
    print(f"{len(queue)} jobs not started", flush=True)


if __name__ == "__main__":
    main()
