"""The reference implementation of P12's recipe, airbench94 (Keller Jordan's `airbench` package on PyPI, the
recipe's published code), trained on cnnlab's data archive: whether P12's distance from 94 % is in the data (the
JPEG copy) or in cnnlab's Keras version of the recipe. Both train on the same 50,000 images and are tested on the
same 10,000.

airbench runs on a CUDA GPU in float16. Without a GPU this runs it on the CPU in float32: `.cuda()` leaves a tensor
or module where it is, `.half()` makes it float32, CUDA events are wall clocks and `torch.load` maps to the CPU;
airbench's own code is imported, not changed. It needs PyTorch and airbench, which cnnlab does not depend on, so
it runs in an environment of its own and imports nothing of cnnlab:

    python -m venv .wt/airbench-venv
    .wt/airbench-venv/bin/pip install torch torchvision airbench==0.1.8
    .wt/airbench-venv/bin/python bench/airbench_reference.py --archive .wt/cifar/cifar-10-python.tar.gz \\
        --label "JPEG copy" --runs 1 --out bench/results/airbench94_jpeg_cpu.jsonl

One JSON line per run (test accuracy with airbench's test-time augmentation, seconds, device, versions) goes to
`--out` and to stdout; airbench prints its own per-epoch table on the way."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import platform
import tarfile
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np


def cifar_arrays(archive: Path) -> dict[str, dict]:
    """The official archive's training and test batches as NHWC uint8 images and integer labels."""
    batches: dict[str, dict] = {}
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            name = Path(member.name).name
            if name.startswith(("data_batch_", "test_batch", "batches.meta")):
                batches[name] = pickle.load(tar.extractfile(member), encoding="bytes")
    classes = [c.decode() for c in batches["batches.meta"][b"label_names"]]

    def images(names: list[str]) -> dict:
        data = np.concatenate([batches[n][b"data"] for n in names]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        labels = np.concatenate([batches[n][b"labels"] for n in names])
        return {"images": data, "labels": labels, "classes": classes}

    return {"train": images([f"data_batch_{i}" for i in range(1, 6)]), "test": images(["test_batch"])}


def on_the_cpu(torch) -> None:
    """airbench's CUDA and float16 calls, made to run on the CPU in float32."""

    class WallClock:
        def record(self) -> None:
            self.at = time.perf_counter()

        def elapsed_time(self, end: WallClock) -> float:  # milliseconds, as torch.cuda.Event's
            return 1000 * (end.at - self.at)

    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    torch.nn.Module.cuda = lambda self, *args, **kwargs: self
    torch.Tensor.half = lambda self, *args, **kwargs: self.float()
    torch.nn.Module.half = torch.nn.Module.float
    torch.cuda.Event = lambda *args, **kwargs: WallClock()
    torch.cuda.synchronize = lambda *args, **kwargs: None
    load = torch.load
    torch.load = lambda *args, **kwargs: load(*args, **{**kwargs, "map_location": "cpu"})


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archive", type=Path, required=True, help="cifar-10-python.tar.gz (official or a copy)")
    parser.add_argument("--label", default="official", help="what the archive is, for the results (e.g. JPEG copy)")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--first-run", type=int, default=0, help="the first run's number (its torch seed)")
    parser.add_argument("--epochs", type=float, help="airbench94's own 9.9 unless given (fewer: a quick check)")
    parser.add_argument("--work", type=Path, default=Path(".wt/airbench"), help="airbench's data tensors go here")
    parser.add_argument("--out", type=Path, help="append one JSON line per run")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    if not args.archive.is_file():
        parser.error(f"--archive {args.archive}: no such file (the official cifar-10-python.tar.gz or a copy)")
    out = args.out.resolve() if args.out else None
    md5 = hashlib.md5(args.archive.read_bytes()).hexdigest()

    import torch  # here: `--help` and a wrong --archive need no PyTorch
    from airbench import CifarLoader, evaluate
    from airbench.lib_airbench94 import hyp, train94

    gpu = torch.cuda.is_available()
    if not gpu:
        on_the_cpu(torch)
        torch.set_num_threads(args.threads)
    folder = args.work / md5 / "cifar10"  # airbench reads cifar10/{train,test}.pt under its working folder
    folder.mkdir(parents=True, exist_ok=True)
    for split, arrays in cifar_arrays(args.archive).items():
        if not (folder / f"{split}.pt").exists():
            torch.save({"images": torch.tensor(arrays["images"]), "labels": torch.tensor(arrays["labels"]),
                        "classes": arrays["classes"]}, folder / f"{split}.pt")
    os.chdir(folder.parent)
    device = torch.cuda.get_device_name(0) if gpu else f"{cpu_model()}, {torch.get_num_threads()} threads"
    for run in range(args.first_run, args.first_run + args.runs):
        loader = CifarLoader("cifar10", train=True, batch_size=hyp["opt"]["batch_size"], aug=hyp["aug"],
                             altflip=True)
        torch.manual_seed(run)
        started = time.perf_counter()
        model = train94(loader, run=run, **({"epochs": args.epochs} if args.epochs else {}))
        seconds = time.perf_counter() - started
        test = CifarLoader("cifar10", train=False, batch_size=2000)
        row = {"implementation": f"airbench94 (airbench {version('airbench')})", "run": run,
               "tta_test_accuracy": round(evaluate(model, test, hyp["net"]["tta_level"]), 4),
               "test_accuracy_one_view": round(evaluate(model, test, 0), 4),
               "seconds_with_its_evaluation": round(seconds, 1),
               "epochs": args.epochs or hyp["opt"]["train_epochs"], "data": args.label, "archive_md5": md5,
               "device": device, "precision": "float16" if gpu else "float32", "torch": torch.__version__}
        print(json.dumps(row), flush=True)
        if out is not None:
            with out.open("a") as rows:
                rows.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
