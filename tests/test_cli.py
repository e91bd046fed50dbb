"""The command lines users type: Hydra multirun sweeps with an MLflow parent run, and failures inside them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def run_cli(module: str, workdir: Path, data_dir: Path, *overrides: str,
            multirun: bool = False) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, "-m", module, *(["-m"] if multirun else []), "data=tiny", f"paths.data={data_dir}",
            *(f"paths.{key}={workdir / key}" for key in ("outputs", "checkpoints", "metrics", "plots")),
            f"tracking.uri=sqlite:///{workdir / 'mlflow.db'}", f"hydra.sweep.dir={workdir / 'sweep'}",
            f"hydra.run.dir={workdir / 'run'}", "tracking.log_model=false", *overrides]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def runs_by_parent(workdir: Path):
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("cnnlab").experiment_id])
    parents = [r for r in runs if r.data.tags.get("sweep") == "true"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, children


def test_multirun_gives_one_child_run_per_project_under_one_parent(tmp_path: Path, tiny_data_dir: Path) -> None:
    done = run_cli("cnnlab.train", tmp_path, tiny_data_dir, "project=p00,p01,p04", "training.epochs=1",
                   multirun=True)
    assert done.returncode == 0, done.stderr[-3000:]
    parents, children = runs_by_parent(tmp_path)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(r.data.tags["project"] for r in children) == ["p00", "p01", "p04"]
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert {r.info.status for r in children} == {"FINISHED"}
    assert sorted(p.name for p in (tmp_path / "outputs").iterdir()) == ["p00", "p01", "p04"]


def test_a_failing_job_is_recorded_failed_and_the_sweep_goes_on(tmp_path: Path, tiny_data_dir: Path) -> None:
    done = run_cli("cnnlab.train", tmp_path, tiny_data_dir, "project=p00", "training.batch_size=64,0,32",
                   "training.epochs=1", multirun=True)
    assert done.returncode != 0, "a sweep with a failed job must exit non-zero"
    assert "1 of 3 sweep jobs failed" in done.stderr
    parents, children = runs_by_parent(tmp_path)
    assert len(parents) == 1 and parents[0].info.status == "FAILED"
    status = {r.data.params.get("training.batch_size", "0"): r.info.status for r in children}
    assert status == {"64": "FINISHED", "0": "FAILED", "32": "FINISHED"}
    failed = next(r for r in children if r.info.status == "FAILED")
    assert "training.batch_size=0 is not allowed: a positive integer" in failed.data.tags["error"]


def test_single_run_with_a_bad_value_exits_before_training(tmp_path: Path, tiny_data_dir: Path) -> None:
    done = run_cli("cnnlab.train", tmp_path, tiny_data_dir, "project=p00", "training.epochs=0")
    assert done.returncode != 0
    assert "training.epochs=0 is not allowed: a positive integer" in done.stderr
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "mlflow.db").exists()


def test_evaluate_cli_reevaluates_a_trained_project(tmp_path: Path, tiny_data_dir: Path) -> None:
    assert run_cli("cnnlab.train", tmp_path, tiny_data_dir, "project=p04", "training.epochs=1").returncode == 0
    done = run_cli("cnnlab.evaluate", tmp_path, tiny_data_dir, "project=p04")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "metrics" / "p04.json").exists()


def test_parallel_launcher_runs_jobs_in_processes_under_one_parent(tmp_path: Path, tiny_data_dir: Path) -> None:
    done = run_cli("cnnlab.train", tmp_path, tiny_data_dir, "project=p00,p01", "training.epochs=1",
                   "hydra/launcher=parallel", "hydra.launcher.n_jobs=2", multirun=True)
    assert done.returncode == 0, done.stderr[-3000:]
    parents, children = runs_by_parent(tmp_path)
    assert len(parents) == 1 and sorted(r.data.tags["project"] for r in children) == ["p00", "p01"]
    assert {r.info.status for r in children} == {"FINISHED"}


def test_benchmark_prints_the_ratio_table_on_cpu() -> None:
    done = subprocess.run([sys.executable, "bench/throughput.py", "--projects", "p00", "--images", "64",
                           "--epochs", "1", "--repeats", "1"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "device: " in done.stdout
    row = next(line for line in done.stdout.splitlines() if line.startswith("| P00 |"))
    assert re.search(r"\| \d+\.\d\dx \|", row), row


def test_mlproject_train_entry_point_runs_in_the_local_environment(tmp_path: Path, tiny_data_dir: Path) -> None:
    overrides = " ".join([
        "data=tiny", f"paths.data={tiny_data_dir}", "training.epochs=1", "tracking.log_model=false",
        *(f"paths.{key}={tmp_path / key}" for key in ("outputs", "checkpoints")), f"hydra.run.dir={tmp_path / 'run'}"])
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "TF_CPP_MIN_LOG_LEVEL": "2"}
    # `mlflow run` creates the experiment itself; made here first so its artifacts stay in tmp_path
    MlflowClient(env["MLFLOW_TRACKING_URI"]).create_experiment("cnnlab", (tmp_path / "mlruns").as_uri())
    done = subprocess.run([sys.executable, "-m", "mlflow", "run", ".", "-e", "train", "-P", "project=p01",
                           "-P", f"overrides={overrides}", "--env-manager", "local", "--experiment-name", "cnnlab"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    (run,) = client.search_runs([client.get_experiment_by_name("cnnlab").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["project"] == "p01"
    assert (tmp_path / "outputs" / "p01" / "model.keras").exists()
