"""The command lines users type: Hydra multirun sweeps with an MLflow parent run (in parallel too), failures and
Ctrl-C inside them, re-evaluation, the benchmark and the MLproject entry point."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from fnmatch import fnmatch
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from cnnlab.config.machine import has_nvidia_driver
from cnnlab.run.faults import ENV as FAILPOINT
from tests.conftest import ROOT, job_env, run_job
from tests.support import conf_projects

pytestmark = pytest.mark.system


def run_cli(module: str, workdir: Path, data_dir: Path, *overrides: str, multirun: bool = False,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_job(module, workdir, data_dir, "tracking.log_model=false", *overrides, multirun=multirun, env=env)


def runs_by_parent(workdir: Path):
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("cnnlab").experiment_id])
    parents = [r for r in runs if r.data.tags.get("sweep") == "true"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, children


def test_multirun_gives_one_child_run_per_project_under_one_parent(workdir: Path, tiny_data_dir: Path) -> None:
    done = run_cli("cnnlab.train", workdir, tiny_data_dir, "project=p00,p01,p04", "training.epochs=1",
                   multirun=True)
    assert done.returncode == 0, done.stderr[-3000:]
    parents, children = runs_by_parent(workdir)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(r.data.tags["project"] for r in children) == ["p00", "p01", "p04"]
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert {r.info.status for r in children} == {"FINISHED"}
    assert sorted(p.name for p in (workdir / "runs").iterdir()) == ["p00", "p01", "p04"]
    # the parent records the best child by the value the jobs return: best validation accuracy, never test
    chosen = next(r for r in children if r.info.run_id == parents[0].data.tags["best_run_id"])
    top = max(r.data.metrics["best_val_accuracy"] for r in children)
    assert chosen.data.metrics["best_val_accuracy"] == top == parents[0].data.metrics["best_value"]
    assert f"project={chosen.data.tags['project']}" in parents[0].data.tags["best_overrides"].split()


def test_a_failing_job_is_recorded_failed_and_the_sweep_goes_on(workdir: Path, tiny_data_dir: Path) -> None:
    done = run_cli("cnnlab.train", workdir, tiny_data_dir, "project=p00", "training.batch_size=64,0,32",
                   "training.epochs=1", multirun=True)
    assert done.returncode != 0, "a sweep with a failed job must exit non-zero"
    assert "1 of 3 sweep jobs failed" in done.stderr
    parents, children = runs_by_parent(workdir)
    assert len(parents) == 1 and parents[0].info.status == "FAILED"
    status = {r.data.params.get("training.batch_size", "0"): r.info.status for r in children}
    assert status == {"64": "FINISHED", "0": "FAILED", "32": "FINISHED"}
    failed = next(r for r in children if r.info.status == "FAILED")
    assert "training.batch_size=0 is not allowed: a positive integer" in failed.data.tags["error"]


def test_single_run_with_a_bad_value_exits_before_training(tmp_path: Path, tiny_data_dir: Path) -> None:
    done = run_cli("cnnlab.train", tmp_path, tiny_data_dir, "project=p00", "training.epochs=0")
    assert done.returncode == 2
    assert done.stderr == "error: training.epochs=0 is not allowed: a positive integer\n", "one line, no traceback"
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()
    verbose = run_cli("cnnlab.train", tmp_path, tiny_data_dir, "project=p00", "training.epochs=0",
                      env=job_env(HYDRA_FULL_ERROR="1"))
    assert verbose.returncode != 0 and "Traceback" in verbose.stderr
    assert "cnnlab.config.errors.ConfigError" in verbose.stderr


def test_evaluate_cli_reevaluates_a_trained_model_and_refuses_other_data(workdir: Path,
                                                                        tiny_data_dir: Path) -> None:
    """Also: on a machine without an NVIDIA driver, training prints none of TensorFlow's CUDA probe lines (with
    TensorFlow's own log level left at its default)."""
    env = {k: v for k, v in job_env().items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    trained = run_cli("cnnlab.train", workdir, tiny_data_dir, "project=p04", "training.epochs=1", env=env)
    assert trained.returncode == 0, trained.stderr[-3000:]
    if not has_nvidia_driver():
        printed = trained.stdout + trained.stderr
        assert not re.search(r"cuda|cuInit|absl::InitializeLog", printed, re.IGNORECASE), printed[:3000]
    (model,) = (workdir / "runs" / "p04").glob("*/model.keras")
    done = run_cli("cnnlab.evaluate", workdir, tiny_data_dir, "project=p04", f"evaluate.model={model}")
    assert done.returncode == 0, done.stderr[-3000:]
    evaluated = json.loads((workdir / "hydra" / "metrics.json").read_text())
    trained = json.loads((model.parent / "metrics.json").read_text())
    assert evaluated["test_accuracy"] == trained["test_accuracy"]
    other = run_cli("cnnlab.evaluate", workdir, tiny_data_dir, "project=p04", f"evaluate.model={model}",
                    "data=cifar10")
    assert other.returncode == 2
    assert other.stderr == (f"error: {model} was trained on data=tiny, not data=cifar10: its accuracy there means "
                            "nothing; give data=tiny, or evaluate.allow_other_data=true evaluates it anyway\n")
    assert not (tiny_data_dir / "raw" / "cifar10").exists(), "refused before fetching anything"


def test_twelve_projects_in_parallel_on_an_empty_folder(tmp_path: Path) -> None:
    """The docs' parallel recipe (docs/benchmarks.md) on a fresh checkout: every job finishes, and one of them
    builds the data."""
    done = run_cli("cnnlab.train", tmp_path, tmp_path / "data", "project=glob(p??,exclude=p12)", "training.epochs=1",
                   "hydra/launcher=parallel", "hydra.launcher.n_jobs=3", multirun=True)
    assert done.returncode == 0, done.stderr[-3000:]
    parents, children = runs_by_parent(tmp_path)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    seed_projects = [p for p in conf_projects() if fnmatch(p, "p??") and not fnmatch(p, "p12")]  # P00-P11
    assert sorted(r.data.tags["project"] for r in children) == seed_projects
    assert {r.info.status for r in children} == {"FINISHED"}
    logs = "".join(p.read_text() for p in (tmp_path / "sweep").glob("*/train.log"))
    assert logs.count("] - generated ") == 1 and logs.count("] - prepared ") == 1, "the data is built once"


def test_three_learning_rates_of_one_project_in_parallel_keep_three_results(workdir: Path,
                                                                            tiny_data_dir: Path) -> None:
    done = run_cli("cnnlab.train", workdir, tiny_data_dir, "project=p00", "training.epochs=2",
                   "training.optimizer.learning_rate=0.001,0.002,0.003", "hydra/launcher=parallel",
                   "hydra.launcher.n_jobs=3", multirun=True)
    assert done.returncode == 0, done.stderr[-3000:]
    _, children = runs_by_parent(workdir)
    assert sorted(r.data.params["training.optimizer.learning_rate"] for r in children) == ["0.001", "0.002", "0.003"]
    assert {r.info.status for r in children} == {"FINISHED"}
    folders = sorted((workdir / "runs" / "p00").iterdir())
    assert sorted(p.name for p in folders) == sorted(r.info.run_id for r in children), "one folder per run"
    assert len({(p / "model.keras").read_bytes() for p in folders}) == 3, "three distinct models, none overwritten"
    names = sorted(r.info.run_name.split(" · ")[1] for r in children)
    assert names == ["learning_rate=0.001", "learning_rate=0.002", "learning_rate=0.003"], "named by what varies"


def test_ctrl_c_in_a_sweep_ends_the_job_and_the_parent_killed(workdir: Path, tiny_data_dir: Path) -> None:
    done = run_cli("cnnlab.train", workdir, tiny_data_dir, "project=p00,p01", "training.epochs=3", multirun=True,
                   env=job_env(**{FAILPOINT: "mid_epoch:1@SIGINT"}))
    assert done.returncode != 0
    parents, children = runs_by_parent(workdir)
    assert [p.info.status for p in parents] == ["KILLED"], "no sweep parent stays RUNNING"
    assert [(r.data.tags["project"], r.info.status) for r in children] == [("p00", "KILLED")]


def test_benchmark_prints_the_ratio_table_on_cpu() -> None:
    done = subprocess.run([sys.executable, "bench/throughput.py", "--projects", "p00", "--images", "64",
                           "--epochs", "1", "--repeats", "1"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "device: " in done.stdout
    row = next(line for line in done.stdout.splitlines() if line.startswith("| P00 |"))
    assert re.search(r"\| \d+\.\d\dx \|", row), row


def test_time_to_accuracy_times_cnnlabs_loop_against_plain_keras(tiny_data_dir: Path) -> None:
    """`--time-to-accuracy` trains P12 by plain Keras and by cnnlab's loop in one process and gives both times
    (wall and CPU seconds, and a later epoch's) and their ratios (issue #31's overhead figure), here on tiny data
    for two epochs, the second a later epoch, with a target any epoch reaches."""
    done = subprocess.run([sys.executable, "bench/throughput.py", "--time-to-accuracy", "--target", "0", "data=tiny",
                           f"paths.data={tiny_data_dir}", "training.epochs=2"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for path in ("plain Keras", "cnnlab"):
        row = rf"^\| {path} \| \d+\.\d \| \d+\.\d \| \d+\.\d \| \d+\.\d \| [01]\.\d{{4}} \|$"
        assert re.search(row, done.stdout, re.MULTILINE), done.stdout
    assert re.search(r"^cnnlab / plain Keras: \d+\.\d{3}x to the end \(\d+\.\d{3}x in CPU seconds\), \d+\.\d{3}x "
                     r"to 0\.00%, \d+\.\d{3}x a later epoch in CPU seconds", done.stdout, re.MULTILINE), done.stdout


def test_the_long_runs_low_priority_holds_against_autogroups() -> None:
    """bench/low_priority.sh, through which the reference run trains: niced, in a session of its own whose
    autogroup is niced too (else it takes as much CPU as the user's whole shell), waited for, its status passed on."""
    script = 'nice; echo "autogroup:$(cat /proc/self/autogroup 2>/dev/null)"; exit 3'
    done = subprocess.run(["bash", "bench/low_priority.sh", "bash", "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 3, done.stderr
    niceness, autogroup = done.stdout.splitlines()
    assert niceness == "19"
    autogroup = autogroup.removeprefix("autogroup:")
    ours = Path("/proc/self/autogroup")
    # The file reads empty where this process is not scheduled by autogroup (no such kernel feature, or a container
    # whose cgroup takes the CPU share instead, as on CI): there, nice alone decides and only the niceness is checked.
    ours_autogroup = ours.read_text().strip() if ours.exists() else ""
    if ours_autogroup:
        assert autogroup.endswith(" nice 19") and autogroup.split()[0] != ours_autogroup.split()[0], autogroup


def test_mlproject_train_entry_point_runs_in_the_local_environment(tmp_path: Path, tiny_data_dir: Path) -> None:
    overrides = " ".join([
        "data=tiny", f"paths.data={tiny_data_dir}", "training.epochs=1", "tracking.log_model=false",
        *(f"paths.{key}={tmp_path / key}" for key in ("runs", "checkpoints")), f"hydra.run.dir={tmp_path / 'run'}"])
    env = job_env(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}")
    # `mlflow run` creates the experiment itself; made here first so its artifacts stay in tmp_path
    MlflowClient(env["MLFLOW_TRACKING_URI"]).create_experiment("cnnlab", (tmp_path / "mlruns").as_uri())
    done = subprocess.run([sys.executable, "-m", "mlflow", "run", ".", "-e", "train", "-P", "project=p01",
                           "-P", f"overrides={overrides}", "--env-manager", "local", "--experiment-name", "cnnlab"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    (run,) = client.search_runs([client.get_experiment_by_name("cnnlab").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["project"] == "p01"
    model = tmp_path / "runs" / "p01" / run.info.run_id / "model.keras"
    assert model.exists()
    evaluation = " ".join(["data=tiny", f"paths.data={tiny_data_dir}", f"evaluate.model={model}",
                           f"hydra.run.dir={tmp_path / 'evaluation'}"])
    done = subprocess.run([sys.executable, "-m", "mlflow", "run", ".", "-e", "evaluate", "-P", "project=p01",
                           "-P", f"overrides={evaluation}", "--env-manager", "local", "--experiment-name", "cnnlab"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = client.search_runs([client.get_experiment_by_name("cnnlab").experiment_id])
    (evaluated,) = [r for r in runs if r.info.run_id != run.info.run_id]
    assert evaluated.info.run_name == f"p01 evaluate · {run.info.run_id}", "named, not a random empty run"
    assert evaluated.info.status == "FINISHED"
    assert evaluated.data.metrics["test_accuracy"] == pytest.approx(run.data.metrics["test_accuracy"])


def test_an_unsafe_project_id_writes_nothing_outside_the_working_folder(tmp_path: Path, tiny_data_dir: Path) -> None:
    """`project.id=../../x` is refused in one line before Hydra makes its run folder; in a sweep each such job is
    refused (a FAILED run) and Hydra's job folders are named from the id made harmless."""
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    overrides = ["data=tiny", f"paths.data={tiny_data_dir}", "tracking.log_model=false"]
    base = [sys.executable, "-m", "cnnlab.train"]
    single = subprocess.run([*base, *overrides, "project.id=../../x"], cwd=work, env=job_env(),
                            capture_output=True, text=True, timeout=600)
    assert single.returncode == 2 and len(single.stderr.strip().splitlines()) == 1, single.stderr[-3000:]
    assert single.stderr.startswith("error: project.id='../../x' is not allowed")
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == ["a", "a/b"], \
        "nothing written, not even Hydra's run folder"
    sweep = subprocess.run([*base, "-m", *overrides, "project.id=../../x,../y", "training.epochs=1"], cwd=work,
                           env=job_env(), capture_output=True, text=True, timeout=600)
    assert sweep.returncode != 0 and "2 of 2 sweep jobs failed" in sweep.stderr, sweep.stderr[-3000:]
    outside = [p for p in tmp_path.rglob("*") if p not in (tmp_path / "a", work) and not p.is_relative_to(work)]
    assert outside == []
    assert list((work / "logs" / "train" / "multiruns").glob("*/0__._.._x"))


def test_every_sweep_parent_lists_its_jobs_reused_or_continued(workdir: Path, tiny_data_dir: Path) -> None:
    """A sweep run again, and a sweep one of whose values another sweep already trained: each parent run lists all
    its jobs (tags cnnlab.job.<n>), the runs it reused included, and nothing is trained twice."""
    def sweep(epochs: str):
        done = run_cli("cnnlab.train", workdir, tiny_data_dir, "project=p00", f"training.epochs={epochs}",
                       "tracking.system_metrics=false", multirun=True)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "sweep finished: 2 jobs" in done.stdout + done.stderr
        parents, children = runs_by_parent(workdir)
        return max(parents, key=lambda r: r.info.start_time), children

    first, _ = sweep("1,2")
    again, _ = sweep("1,2")
    other, children = sweep("2,3")
    assert len(children) == 3, "epochs 1, 2, 3: each trained once"
    jobs = {parent.info.run_id: {k: v for k, v in parent.data.tags.items() if k.startswith("cnnlab.job.")}
            for parent in (first, again, other)}
    assert set(jobs[first.info.run_id].values()) == set(jobs[again.info.run_id].values()), "the rerun lists them"
    shared = set(jobs[first.info.run_id].values()) & set(jobs[other.info.run_id].values())
    assert len(shared) == 1 and len(jobs[other.info.run_id]) == 2
    for parent in (first, again, other):
        assert parent.info.status == "FINISHED" and parent.data.tags["best_run_id"] in jobs[parent.info.run_id].values()


@pytest.mark.parametrize("overrides, says", [
    (["training.device_data=1"], "training.device_data=1 is not allowed: auto, true or false"),
    (['training.epochs="3"'], "training.epochs='3' is not allowed: an integer (quoted, it is a string)"),
    (["training.epoch=3"], "training.epoch is not allowed: not a key of training"),
    (["augmentation=nosuch"], "augmentation='nosuch' is not allowed: one of airbench, flip_shift, flip_translate"),
    (["project=../../etc"], "project='../../etc' is not allowed: one of p00, p01"),
    (["data=tiny", "data.generate.count=0"], "data.generate.count is not allowed: not a key of data.generate"),
    (["data=tiny", "+data.generate.foo=1"], "data.generate.foo=1 is not allowed: not a key of data.generate"),
    (["tracking.uri=http://127.0.0.1:9"], "tracking.uri='http://127.0.0.1:9' is not allowed: a tracking server"),
])
def test_a_bad_command_line_is_refused_in_one_line_before_anything_starts(overrides: list[str], says: str,
                                                                          tmp_path: Path) -> None:
    """Composition errors (Hydra's and the schema's) and values refused before the backend, the data or the
    store: exit status 2, one line, nothing written (not even Hydra's run folder), and before TensorFlow is
    imported (here a TensorFlow that cannot be imported stands in for it: an import would change the error)."""
    work, shadow = tmp_path / "work", tmp_path / "shadow" / "tensorflow"
    work.mkdir()
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('TensorFlow was imported before the refusal')\n")
    done = subprocess.run([sys.executable, "-m", "cnnlab.train", *overrides], cwd=work,
                          env=job_env(PYTHONPATH=str(shadow.parent)), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.startswith(f"error: {says}") and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert list(work.iterdir()) == [], "nothing written"


def test_a_first_p11_run_prints_its_progress_and_none_of_the_known_noise(tmp_path: Path, tiny_data_dir: Path) -> None:
    """A new user's first run (a fresh store, P11, registered): `epoch k/N` lines of the planned total, the
    singular for one epoch, the first champion said as such; no MLflow table set-up lines, no ImageDataGenerator
    override warning (its config states it), no "was version None"."""
    done = run_job("cnnlab.train", tmp_path, tiny_data_dir, "project=p11", "training.epochs=2",
                   "registry.register=true")
    assert done.returncode == 0, done.stderr[-3000:]
    printed = done.stdout + done.stderr
    assert re.search(r"^epoch 1/2 ━{20} \d+/\d+ · \d+ s · loss .* at most 1 epoch left, about \d+ s$", done.stdout,
                     re.MULTILINE), done.stdout[-3000:]
    assert re.search(r"^epoch 2/2 ━{20} .* the last planned epoch$", done.stdout, re.MULTILINE)
    assert re.search(r"p11: test accuracy \d\.\d{4} after 2 epochs in", printed)
    assert "cnnlab-p11@champion is now version 1 (best_val_accuracy " in printed
    assert "; the first)" in printed
    for noise in ("Creating initial MLflow database tables", "Updating database tables", "was version None",
                  "zca_whitening overrides", "return cls(**kwargs)"):
        assert noise not in printed, noise
    again = run_cli("cnnlab.train", tmp_path, tiny_data_dir, "project=p11", "training.epochs=1", "on_finished=new")
    assert again.returncode == 0, again.stderr[-3000:]
    assert re.search(r"p11: test accuracy \d\.\d{4} after 1 epoch in", again.stdout), again.stdout[-3000:]
