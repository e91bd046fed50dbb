"""Batches cut on the device (cnnlab.core.feed) cover every example once per epoch in the epoch's order (a function
of seed and epoch), keep labels with their images; on JAX a real training run uses them."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import keras
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from cnnlab.core.feed import DeviceBatches
from cnnlab.core.loop import epoch_order
from tests.conftest import job_env, run_job


def epoch(batches: DeviceBatches) -> tuple[np.ndarray, np.ndarray]:
    parts = [batches[i] for i in range(len(batches))]
    return (np.concatenate([keras.ops.convert_to_numpy(x) for x, _ in parts]),
            np.concatenate([keras.ops.convert_to_numpy(y) for _, y in parts]))


def test_every_example_once_per_epoch_with_its_label_and_a_new_order_each_epoch() -> None:
    x = np.arange(23 * 2 * 2 * 3, dtype=np.uint8).reshape(23, 2, 2, 3)
    y = np.arange(23, dtype=np.float32)[:, None]
    on_device = DeviceBatches.transfer(x, y)
    batches = DeviceBatches(*on_device, batch_size=5, order=epoch_order(23, seed=0, epoch=0))
    assert len(batches) == 5 and keras.ops.shape(batches[4][0])[0] == 3
    first_x, first_y = epoch(batches)
    assert sorted(first_y[:, 0].tolist()) == list(range(23))
    np.testing.assert_array_equal(first_x, x[first_y[:, 0].astype(int)])
    np.testing.assert_array_equal(first_y[:, 0], epoch_order(23, seed=0, epoch=0)), "the epoch's order, again"
    second_x, second_y = epoch(DeviceBatches(*on_device, batch_size=5, order=epoch_order(23, seed=0, epoch=1)))
    assert sorted(second_y[:, 0].tolist()) == list(range(23)) and not np.array_equal(first_y, second_y)
    np.testing.assert_array_equal(second_x, x[second_y[:, 0].astype(int)])


@pytest.mark.system
def test_training_on_jax_cuts_batches_on_the_device(tmp_path: Path, tiny_data_dir: Path) -> None:
    if importlib.util.find_spec("jax") is None:
        pytest.skip("jax is not installed (pip install -e '.[dev]' installs it)")
    done = run_job("cnnlab.train", tmp_path, tiny_data_dir, "project=p08", "training.epochs=2",
                   "tracking.log_model=false", env=job_env(KERAS_BACKEND="jax"))
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("cnnlab").experiment_id])
    assert run.data.tags["keras_backend"] == "jax" and run.data.tags["device_data"] == "true"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [0, 1]
    assert (tmp_path / "runs" / "p08" / run.info.run_id / "model.keras").exists()
