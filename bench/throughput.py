"""Training throughput of cnnlab's path against plain Keras, per project, in one process.

For each project: images/s of an epoch (median over repeats, the first, compiling epoch left out) for
  - baseline: plain Keras - the core model in float32, NumPy arrays scaled to [0, 1], model.fit, the project's
    batch size, no augmentation, one step per execution;
  - cnnlab: the project as cnnlab trains it - raw pixels in, its augmentation layers, its mixed precision,
    steps_per_execution and jit settings, batches cut on the device where training.device_data says so;
  - cnnlab without augmentation, to give the augmentation's cost as a ratio of the step time;
  - cnnlab with `training.mixed_precision=true` (mixed_bfloat16), the opt-in speed-up on CPUs with bf16 units
    (it changes the results a little, so the faithful seed projects keep float32).
Synthetic images (the speed does not depend on the pixels). The device is printed with the table.

    python bench/throughput.py --projects p00 p10 p12 --images 2048 --epochs 3 --repeats 3
    python bench/throughput.py --breakdown p11                       # each augmentation layer's cost
    python bench/throughput.py --time-to-accuracy --target 0.93      # P12: cnnlab's loop against plain Keras
    python bench/throughput.py --determinism --projects p00 p07 p10  # what TensorFlow's op determinism costs
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import time
from typing import Literal, NamedTuple

import numpy as np


def epoch_times(model, inputs: dict, epochs: int) -> list[float]:
    """Seconds of each epoch after the first; `inputs` are model.fit's data arguments."""
    import keras

    class Clock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            seconds.append(time.perf_counter() - self.t)

    seconds: list[float] = []
    model.fit(**inputs, epochs=epochs + 1, callbacks=[Clock()], verbose=0)
    return seconds[1:]


def synthetic(images: int) -> tuple[np.ndarray, np.ndarray]:
    """Random uint8 pixels and integer labels (the speed does not depend on the pixels)."""
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(images, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, size=images)


def cnnlab_seconds(job, layers: list, pixels: np.ndarray, labels: np.ndarray, epochs: int) -> list[float]:
    """Epoch times of the project as cnnlab trains it (cnnlab.core.loop: one fit per epoch in the epoch's order,
    the checkpoint after each), with the given augmentation layer specs, the first epoch left out."""
    import dataclasses
    import tempfile
    from pathlib import Path

    from cnnlab.core import loop
    from cnnlab.core.data import Dataset
    from cnnlab.run.checkpoint import Checkpoint

    training = dataclasses.replace(job.training, epochs=epochs + 1, validation_split=0.0)
    training = dataclasses.replace(training, early_stopping=dataclasses.replace(training.early_stopping,
                                                                                enabled=False))
    augmentation = dataclasses.replace(job.augmentation, layers=list(layers))
    model, _ = loop.build(job.model, augmentation, training, pixels)
    data = Dataset(pixels, labels, pixels[:1], labels[:1], [str(i) for i in range(10)], "synthetic")
    seconds: list[float] = []
    with tempfile.TemporaryDirectory() as folder:
        loop.train(model, data, training, job.selection, Checkpoint(Path(folder)),
                   after_epoch=lambda epoch, logs: seconds.append(logs["epoch_seconds"]))
    return seconds[1:]


def measure(project: str, images: int, epochs: int, repeats: int) -> dict[str, float]:
    import keras

    from cnnlab.config.compose import compose, to_job
    from cnnlab.core.data import one_hot
    from cnnlab.core.models import build_model

    cfg = to_job(compose([f"project={project}"]))
    bf16 = to_job(compose([f"project={project}", "training.mixed_precision=true"]))
    pixels, classes = synthetic(images)
    labels = one_hot(classes)
    plain_inputs = {"x": pixels / np.float32(255), "y": labels, "batch_size": cfg.training.batch_size,
                    "shuffle": True}
    seconds: dict[str, list[float]] = {"baseline": [], "cnnlab": [], "cnnlab_no_aug": [], "cnnlab_bf16": []}
    for _ in range(repeats):
        keras.mixed_precision.set_global_policy("float32")
        plain = build_model(cfg.model)
        plain.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
        seconds["baseline"] += epoch_times(plain, plain_inputs, epochs)
        seconds["cnnlab"] += cnnlab_seconds(cfg, cfg.augmentation.layers, pixels, classes, epochs)
        seconds["cnnlab_no_aug"] += cnnlab_seconds(cfg, [], pixels, classes, epochs)
        seconds["cnnlab_bf16"] += cnnlab_seconds(bf16, bf16.augmentation.layers, pixels, classes, epochs)
    return {name: images / statistics.median(values) for name, values in seconds.items()}


def augmentation_breakdown(project: str, images: int, epochs: int, repeats: int) -> None:
    """The step-time cost of each augmentation layer of `project` alone, against no augmentation."""
    from cnnlab.config.compose import compose, to_job

    cfg = to_job(compose([f"project={project}"]))
    pixels, labels = synthetic(images)
    variants = [("none", [])] + [(spec["type"], [spec]) for spec in cfg.augmentation.layers]
    seconds: dict[str, list[float]] = {name: [] for name, _ in variants}
    for _ in range(repeats):
        for name, specs in variants:
            seconds[name] += cnnlab_seconds(cfg, specs, pixels, labels, epochs)
    base = statistics.median(seconds["none"])
    print(f"| {project.upper()} augmentation layer | step time vs none |")
    print("|---|---|")
    for name, _ in variants[1:]:
        print(f"| {name} | {statistics.median(seconds[name]) / base:.2f}x |", flush=True)


class EpochEnd(NamedTuple):
    """Where training stood at an epoch's end: wall and CPU seconds of training so far, and the test accuracy."""

    wall: float
    cpu: float
    accuracy: float


class TrainingClock:
    """Seconds of training up to each epoch's end, the test evaluations after each epoch left out, and the test
    accuracy there: one clock for both paths of `time_to_accuracy`, so they are timed alike (fit's set-up, the
    compiling first epoch and, for cnnlab, its per-epoch order and checkpoint are training time). Wall seconds and
    this process's CPU seconds (all its threads) are both kept: work beside the benchmark (a niced job, tests)
    stretches the wall time of whichever path is training then, and its CPU time far less."""

    def __init__(self, model, data) -> None:
        self.model, self.data = model, data
        self.rows: list[EpochEnd] = []
        self.evaluating = [0.0, 0.0]  # wall and CPU seconds of the test evaluations so far, left out
        self.started = (time.perf_counter(), time.process_time())

    def epoch_ended(self, *_) -> None:
        from cnnlab.core.evaluation import evaluate_model

        now = (time.perf_counter(), time.process_time())
        wall, cpu = (now[i] - self.started[i] - self.evaluating[i] for i in (0, 1))
        accuracy = evaluate_model(self.model, self.data.x_test, self.data.y_test, self.data.class_names)
        self.evaluating = [self.evaluating[0] + time.perf_counter() - now[0],
                           self.evaluating[1] + time.process_time() - now[1]]
        self.rows.append(EpochEnd(wall, cpu, accuracy["test_accuracy"]))
        print(f"  epoch {len(self.rows)}: {wall:.1f} s of training ({cpu:.1f} CPU s), "
              f"test accuracy {accuracy['test_accuracy']:.4f}", flush=True)

    def reached(self, target: float) -> float | None:
        return next((row.wall for row in self.rows if row.accuracy >= target), None)

    def later_epochs(self, seconds: Literal["wall", "cpu"]) -> float | None:
        """The median length of an epoch after the first (which compiles), in wall or CPU seconds."""
        ends = [0.0, *(getattr(row, seconds) for row in self.rows)]
        lengths = [b - a for a, b in itertools.pairwise(ends)][1:]
        return statistics.median(lengths) if lengths else None


def time_to_accuracy(target: float, overrides: list[str]) -> None:
    """P12 on the configured CIFAR-10, trained twice in this process from the same seed and the same built model:
    by plain Keras (one `model.fit` over every epoch, Keras' own shuffle, no checkpoint) and by cnnlab's loop (one
    fit per epoch in the (seed, epoch) order, the checkpoint after each epoch). Reports the training seconds to
    `target` test accuracy and to the end for each, and cnnlab's ratio to plain Keras: the pipeline's overhead.
    The recipe's layers, optimizer and schedule are the same model in both (cnnlab.core.loop.build), so what is
    compared is the loop around them."""
    import tempfile
    from pathlib import Path

    import keras

    from cnnlab.config.compose import compose, to_job
    from cnnlab.core import loop
    from cnnlab.core.data import one_hot, splits
    from cnnlab.run.checkpoint import Checkpoint
    from cnnlab.run.data import DataSpec, load

    cfg = to_job(compose(["project=p12", *overrides]))
    t = cfg.training
    data = load(DataSpec.from_config(cfg.data, cfg.mirror, cfg.paths.data))
    x_fit, y_fit = splits(data, t.validation_split)["training"]
    print(f"P12: {len(x_fit)} training images, {t.epochs} epochs, batch {t.batch_size}, seed {t.seed}; "
          f"{len(data.x_test)} test images", flush=True)
    clocks: dict[str, TrainingClock] = {}
    for path in ("plain Keras", "cnnlab"):
        print(f"{path}:", flush=True)
        model, _ = loop.build(cfg.model, cfg.augmentation, t, x_fit)
        clock = clocks[path] = TrainingClock(model, data)
        if path == "plain Keras":
            model.fit(x_fit, one_hot(y_fit), batch_size=t.batch_size, epochs=t.epochs, shuffle=True, verbose=0,
                      callbacks=[keras.callbacks.LambdaCallback(on_epoch_end=clock.epoch_ended)])
        else:
            with tempfile.TemporaryDirectory() as folder:
                loop.train(model, data, t, cfg.selection, Checkpoint(Path(folder)), after_epoch=clock.epoch_ended)
        keras.backend.clear_session()
    print(f"| path | seconds to {target:.2%} | seconds to the end ({t.epochs} epochs) | CPU seconds to the end | "
          "median later epoch, s | final test accuracy |")
    print("|---|---:|---:|---:|---:|---:|")
    for path, clock in clocks.items():
        reached, later, end = clock.reached(target), clock.later_epochs("wall"), clock.rows[-1]
        print(f"| {path} | {'not reached' if reached is None else f'{reached:.1f}'} | {end.wall:.1f} | "
              f"{end.cpu:.1f} | {'-' if later is None else f'{later:.1f}'} | {end.accuracy:.4f} |")
    plain, ours = clocks["plain Keras"], clocks["cnnlab"]
    end, plain_end = ours.rows[-1], plain.rows[-1]
    ratio = f"{end.wall / plain_end.wall:.3f}x to the end ({end.cpu / plain_end.cpu:.3f}x in CPU seconds)"
    if plain.reached(target) and ours.reached(target):
        ratio += f", {ours.reached(target) / plain.reached(target):.3f}x to {target:.2%}"
    if plain.later_epochs("cpu") and ours.later_epochs("cpu"):
        ratio += f", {ours.later_epochs('cpu') / plain.later_epochs('cpu'):.3f}x a later epoch in CPU seconds"
    print(f"cnnlab / plain Keras: {ratio} (one run each, plain Keras first)", flush=True)


def determinism_cost(projects: list[str], images: int, epochs: int, repeats: int) -> None:
    """Each project as cnnlab trains it, with TensorFlow's op determinism off and on, alternating within each
    repeat (so a load that comes and goes meets both alike): median images/s of each, and their ratio. Turning
    it off again uses TensorFlow's private switch (its public API only turns it on)."""
    import tensorflow as tf
    from tensorflow.python.framework import config as tf_config

    from cnnlab.config.compose import compose, to_job

    print(f"{images} synthetic images, median of {repeats} x {epochs} epochs per setting (first epoch excluded), "
          "off and on alternating")
    print("| project | op determinism off img/s | on img/s | on / off |")
    print("|---|---|---|---|")
    pixels, labels = synthetic(images)
    for project in projects:
        job = to_job(compose([f"project={project}"]))
        found: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(repeats):
            for on in (False, True):
                if on:
                    tf.config.experimental.enable_op_determinism()
                else:
                    tf_config.disable_op_determinism()
                found[on] += [images / s for s in cnnlab_seconds(job, job.augmentation.layers, pixels, labels, epochs)]
        off, on = statistics.median(found[False]), statistics.median(found[True])
        print(f"| {project.upper()} | {off:,.0f} | {on:,.0f} | {on / off:.2f}x |", flush=True)
    tf_config.disable_op_determinism()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--projects", nargs="+", default=["p00", "p10", "p12"])
    parser.add_argument("--images", type=int, default=2048, help="synthetic images per epoch")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per repeat (after one warm-up)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--time-to-accuracy", action="store_true", help="train P12 twice (plain Keras, cnnlab) instead")
    parser.add_argument("--breakdown", metavar="PROJECT", help="cost of each augmentation layer of PROJECT alone")
    parser.add_argument("--determinism", action="store_true", help="op determinism off against on, per project")
    parser.add_argument("--target", type=float, default=0.93)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for --time-to-accuracy (e.g. data=tiny)")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    from cnnlab.config.machine import compute_platform, describe
    from cnnlab.job.steps import device_name

    print(f"device: {device_name()}, machine: {describe(compute_platform(0, 'disabled'))}, Keras "
          f"{keras.__version__} on {keras.backend.backend()}", flush=True)
    keras.utils.disable_interactive_logging()  # the training loop's per-epoch lines would bury the table
    if args.time_to_accuracy:
        time_to_accuracy(args.target, args.overrides)
        return
    if args.breakdown:
        augmentation_breakdown(args.breakdown, args.images, args.epochs, args.repeats)
        return
    if args.determinism:
        determinism_cost(args.projects, args.images, args.epochs, args.repeats)
        return
    print(f"{args.images} synthetic images, median of {args.repeats} x {args.epochs} epochs (first epoch excluded)")
    print("| project | baseline img/s | cnnlab img/s | cnnlab / baseline | cnnlab no-aug img/s | augmentation cost "
          "| cnnlab bf16 img/s | bf16 / baseline |")
    print("|---|---|---|---|---|---|---|---|")
    for project in args.projects:
        r = measure(project, args.images, args.epochs, args.repeats)
        print(f"| {project.upper()} | {r['baseline']:,.0f} | {r['cnnlab']:,.0f} | {r['cnnlab'] / r['baseline']:.2f}x | "
              f"{r['cnnlab_no_aug']:,.0f} | {r['cnnlab_no_aug'] / r['cnnlab']:.2f}x step time | "
              f"{r['cnnlab_bf16']:,.0f} | {r['cnnlab_bf16'] / r['baseline']:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
