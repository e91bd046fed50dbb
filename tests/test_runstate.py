"""Every run owns its state: a kill at a chosen instant and the same command again, Ctrl-C and SIGTERM, a second
process with the same settings, stale records, runs left RUNNING, a diverging loss, and config errors that
stop a job before anything happens. Real processes and signals, a real MLflow store; failpoints
(cnnlab.run.faults) choose every instant, so no test races a job that may finish first."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import keras
import pytest

from cnnlab.config.errors import ConfigError
from cnnlab.config.settings import result_key
from cnnlab.core.loop import TrainingDiverged
from cnnlab.evaluate import reevaluate
from cnnlab.job.steps import train
from cnnlab.run.faults import ENV as FAILPOINT
from cnnlab.run.state import RunBusy
from cnnlab.tracking.store import open_store
from tests.conftest import ROOT, job_command, job_env, run_job
from tests.support import EPOCH_METRICS, runs, steps, store

JOB = ["project=p00", "training.epochs=3"]
RUN_FILES = sorted(["confusion.csv", "confusion_matrix.png", "config.yaml", "history.csv", "learning_curves.png",
                    "metrics.json", "model.keras", "run.json"])


def assert_one_complete_run(workdir: Path, epochs: int, log_model: bool = True, store_dir: Path | None = None) -> str:
    """One FINISHED run (in the store in `store_dir`, by default `workdir`) with every epoch logged once, its
    files complete, and nothing left behind."""
    workdir, files = store_dir or workdir, workdir
    (run,) = runs(workdir)
    run_id = run.info.run_id
    assert run.info.status == "FINISHED" and "error" not in run.data.tags
    for key in EPOCH_METRICS:
        assert steps(workdir, run_id, key) == list(range(epochs)), key
    assert steps(workdir, run_id, "test_accuracy") == [0], "the test set is evaluated and logged once"
    folder = files / "runs" / "p00" / run_id
    assert sorted(p.name for p in folder.iterdir()) == RUN_FILES
    assert len((folder / "history.csv").read_text().strip().splitlines()) == 1 + epochs
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["epochs"] == epochs and metrics["test_accuracy"] == run.data.metrics["test_accuracy"]
    assert not list((files / "checkpoints").glob("p00-*/")), "a finished run leaves no state"
    assert not [p for p in files.rglob("*") if p.name.endswith(".partial")], "no half-written leftovers"
    models = store(workdir).search_logged_models([run.info.experiment_id])
    assert [(m.source_run_id, str(m.status)) for m in models] == ([(run_id, "READY")] if log_model else [])
    assert [o.model_id for o in run.outputs.model_outputs] == [m.model_id for m in models]
    return run_id


@pytest.mark.system
@pytest.mark.parametrize("point", ["mid_epoch:0", "after_backup:0", "mid_epoch:1", "after_backup:1", "after_fit",
                                   "model_logging", "before_publish", "after_finish"])
def test_a_kill_at_any_instant_then_the_same_command_finishes_the_one_run(
        point: str, make_cfg, workdir: Path, tiny_data_dir: Path) -> None:
    killed = run_job("cnnlab.train", workdir, tiny_data_dir, *JOB, env=job_env(**{FAILPOINT: point}))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    (stopped,) = runs(workdir)
    assert (stopped.info.status == "FINISHED") == (point == "after_finish")
    train(make_cfg(*JOB))  # the same job again, in this process: what it finds on disk is what the kill left
    assert assert_one_complete_run(workdir, epochs=3) == stopped.info.run_id


@pytest.mark.integration
@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_ctrl_c_or_sigterm_ends_the_run_killed_and_the_rerun_continues_it(
        sig: str, make_cfg, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FAILPOINT, f"mid_epoch:1@{sig}")
    with pytest.raises(KeyboardInterrupt, match=f"stopped by {sig}"):
        train(make_cfg(*JOB))
    (run,) = runs(workdir)
    assert run.info.status == "KILLED" and sig in run.data.tags["error"]
    assert steps(workdir, run.info.run_id, "loss") == [0]
    assert not (workdir / "runs").exists(), "no run folder before the run has finished"
    (state,) = (workdir / "checkpoints").glob("p00-*/")
    assert sorted(p.name for p in (state / "backup").iterdir()) == ["epoch-0001.json", "epoch-0001.weights.h5"]
    monkeypatch.delenv(FAILPOINT)
    train(make_cfg(*JOB, "tracking.log_model=false", "project.description=changed"))  # neither is a param
    assert assert_one_complete_run(workdir, epochs=3, log_model=False) == run.info.run_id, "error tag dropped"
    assert store(workdir).get_run(run.info.run_id).data.tags["description"] == "changed"


@pytest.mark.system
def test_a_second_process_with_the_same_settings_is_refused_and_shares_nothing(
        make_cfg, workdir: Path, tiny_data_dir: Path) -> None:
    log = workdir / "first.log"  # a file, not a pipe: a full pipe would block the job before its failpoint
    with log.open("w") as out:
        first = subprocess.Popen(job_command("cnnlab.train", workdir, tiny_data_dir, *JOB), cwd=ROOT,
                                 env=job_env(**{FAILPOINT: "mid_epoch:1@SIGSTOP"}), stdout=out, stderr=out)
    try:
        _, status = os.waitpid(first.pid, os.WUNTRACED)  # returns when the job stops itself at the failpoint
        if not os.WIFSTOPPED(status):  # it ended instead (reaped here: hand its status to Popen)
            first.returncode = os.waitstatus_to_exitcode(status)
            pytest.fail(f"the job ended with {first.returncode} before its failpoint: {log.read_text()[-3000:]}")
        with pytest.raises(RunBusy, match="p00 with these settings is being trained by another process"):
            train(make_cfg(*JOB))
        twin = run_job("cnnlab.train", workdir, tiny_data_dir, *JOB)
        assert twin.returncode == 2 and twin.stderr.startswith("error: p00 with these settings is being trained")
        assert len(twin.stderr.strip().splitlines()) == 1, "one line, no traceback"
    finally:
        if first.returncode is None:
            os.kill(first.pid, signal.SIGCONT)
        assert first.wait(timeout=300) == 0, log.read_text()[-3000:]
    assert_one_complete_run(workdir, epochs=3)


@pytest.mark.system
@pytest.mark.parametrize("change", ["run deleted", "store removed", "another store"])
def test_a_stale_record_starts_a_new_run_with_a_message(change: str, make_cfg, workdir: Path, tiny_data_dir: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    overrides = list(JOB)
    if change == "store removed":  # all in separate processes: MLflow keeps a store it has opened open
        killed = run_job("cnnlab.train", workdir, tiny_data_dir, *JOB, env=job_env(**{FAILPOINT: "mid_epoch:1"}))
        assert killed.returncode == -signal.SIGKILL
        (record,) = (workdir / "checkpoints").glob("p00-*/run.json")
        old_run = json.loads(record.read_text())["run_id"]
        (workdir / "mlflow.db").unlink()
        shutil.rmtree(workdir / "mlruns")
        done = run_job("cnnlab.train", workdir, tiny_data_dir, *JOB)
        assert done.returncode == 0, done.stderr[-3000:]
        assert f"run {old_run} of" in done.stdout and "is not in the store any more: starting a new run" in done.stdout
    else:
        monkeypatch.setenv(FAILPOINT, "mid_epoch:1@SIGTERM")
        with pytest.raises(KeyboardInterrupt):
            train(make_cfg(*JOB))
        monkeypatch.delenv(FAILPOINT)
        (old,) = runs(workdir)
        old_run = old.info.run_id
        if change == "run deleted":
            store(workdir).delete_run(old_run)
            expected = "was deleted: starting a new run"
        else:
            (workdir / "elsewhere").mkdir()
            overrides.append(f"tracking.uri=sqlite:///{workdir / 'elsewhere' / 'mlflow.db'}")
            expected = "not to this job's store and experiment: starting a new run"
        assert train(make_cfg(*overrides))["epochs"] == 3 and expected in caplog.text
    in_store = workdir / "elsewhere" if change == "another store" else workdir
    assert assert_one_complete_run(workdir, epochs=3, store_dir=in_store) != old_run


@pytest.mark.system
def test_runs_left_running_by_a_dead_sweep_are_ended_killed_and_the_job_still_resumes(
        make_cfg, workdir: Path, tiny_data_dir: Path) -> None:
    killed = run_job("cnnlab.train", workdir, tiny_data_dir, *JOB, "tracking.log_model=false", multirun=True,
                     env=job_env(**{FAILPOINT: "after_backup:0"}))
    assert killed.returncode == -signal.SIGKILL
    parent, orphan = runs(workdir)
    assert (parent.data.tags["sweep"], parent.info.status, orphan.info.status) == ("true", "RUNNING", "RUNNING")
    train(make_cfg("project=p01", "training.epochs=1", "tracking.log_model=false"))  # any later job notices them
    for run in (parent, orphan):
        ended = store(workdir).get_run(run.info.run_id)
        assert ended.info.status == "KILLED" and ended.data.tags["error"].startswith("abandoned")
    train(make_cfg(*JOB, "tracking.log_model=false"))
    resumed = store(workdir).get_run(orphan.info.run_id)
    assert resumed.info.status == "FINISHED" and steps(workdir, orphan.info.run_id, "loss") == [0, 1, 2]


@pytest.mark.integration
def test_a_diverging_loss_stops_the_job_with_a_clear_failure(make_cfg, workdir: Path) -> None:
    cfg = make_cfg("project=p00", "training.epochs=5", "training.optimizer.learning_rate=1e30",
                   "tracking.log_model=false")
    with pytest.raises(TrainingDiverged, match=r"the loss became nan.*training\.optimizer\.learning_rate"):
        train(cfg)
    (run,) = runs(workdir)
    assert run.info.status == "FAILED" and "TrainingDiverged" in run.data.tags["error"]
    assert len(steps(workdir, run.info.run_id, "loss")) < 5, "NaN must stop training early"
    assert not (workdir / "runs").exists() and not list((workdir / "checkpoints").glob("p00-*/"))


@pytest.mark.integration
def test_bad_values_stop_before_data_or_store_and_leave_earlier_results(make_cfg, workdir: Path,
                                                                        tmp_path_factory) -> None:
    first = train(make_cfg("project=p00", "training.epochs=1", "tracking.log_model=false"))
    (folder,) = (workdir / "runs" / "p00").iterdir()
    before = {str(p) for p in workdir.rglob("*") if "mlruns" not in p.parts}
    (workdir / "a_file").write_text("not a folder")
    fresh = tmp_path_factory.mktemp("fresh")
    bad = {
        "project.id=.": "project.id", "project.id=..": "project.id", "project.id=../../x": "project.id",
        "model.layers.0.kernel_size=-1": "model.layers.0.kernel_size",
        "training.optimizer.momentum=0.9": "training.optimizer.momentum",
        "training.optimizer.learning_rate=nan": "training.optimizer.learning_rate",
        f"paths.runs={workdir / 'a_file' / 'runs'}": "paths.runs",
        "tracking.uri=sqlite:////proc/cnnlab/mlflow.db": "tracking.uri",
    }
    for override, key in bad.items():
        with pytest.raises(ConfigError, match=rf"^{key}=.* is not allowed: "):
            train(make_cfg("project=p00", "training.epochs=1", f"paths.data={fresh}", override))
    assert not any(fresh.iterdir()), "no data was fetched or prepared"
    after = {str(p) for p in workdir.rglob("*") if "mlruns" not in p.parts}
    assert after == before | {str(workdir / "a_file")}, "nothing was created, moved or removed"
    assert [r.info.run_id for r in runs(workdir)] == [folder.name]
    assert json.loads((folder / "metrics.json").read_text()) == first
    with pytest.raises(ConfigError, match="project.id"):
        reevaluate(make_cfg("project.id=../../x"), workdir / "evaluation")


def test_a_copied_store_is_refused_before_it_writes_into_the_original(make_cfg, workdir: Path) -> None:
    open_store(make_cfg().tracking)
    copy = workdir / "copy"
    copy.mkdir()
    shutil.copy(workdir / "mlflow.db", copy / "mlflow.db")
    with pytest.raises(ConfigError, match=r"tracking.uri=.*copied or moved"):
        open_store(make_cfg(f"tracking.uri=sqlite:///{copy / 'mlflow.db'}").tracking)


def test_the_trained_model_kept_for_a_resume_loads(make_cfg, workdir: Path) -> None:
    """What a job killed after training leaves, a rerun can use: the model saved in the state loads back."""
    from cnnlab.run.state import RunState

    job = make_cfg("project=p11")
    folder = RunState.folder_for(job.paths.checkpoints, job.project.id, result_key(job))
    with RunState.claim(folder, job.project.id) as state:
        assert state.trained_model() is None
        model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        state.keep_trained(model)
        assert state.trained_model().count_params() == 3
        state.remove()
        assert not state.folder.exists()


@pytest.mark.system
@pytest.mark.parametrize("points, status", [
    ("mid_epoch:1@SIGINT,recording_failure@SIGINT", "KILLED"),  # a second Ctrl-C while the first is recorded
    ("mid_epoch:1@SIGTERM,recording_failure@ENOSPC", "KILLED"),  # the artifact store full while recording
])
def test_a_stopped_run_ends_killed_whatever_happens_while_it_is_recorded(
        points: str, status: str, make_cfg, workdir: Path, tiny_data_dir: Path) -> None:
    stopped = run_job("cnnlab.train", workdir, tiny_data_dir, *JOB, env=job_env(**{FAILPOINT: points}))
    assert stopped.returncode != 0
    (run,) = runs(workdir)
    assert run.info.status == status, "never FINISHED: it did not finish"
    assert steps(workdir, run.info.run_id, "loss") == [0]
    train(make_cfg(*JOB))  # the same job again, in this process
    assert assert_one_complete_run(workdir, epochs=3) == run.info.run_id, "continued, each epoch logged once"


@pytest.mark.system
def test_a_failure_while_a_failure_is_recorded_still_ends_the_run_failed(workdir: Path, tiny_data_dir: Path) -> None:
    diverging = (*JOB[:1], "training.epochs=5", "training.optimizer.learning_rate=1e30", "tracking.log_model=false")
    done = run_job("cnnlab.train", workdir, tiny_data_dir, *diverging,
                   env=job_env(**{FAILPOINT: "recording_failure@ENOSPC"}))
    assert done.returncode != 0 and "TrainingDiverged" in done.stderr
    (run,) = runs(workdir)
    assert run.info.status == "FAILED" and "TrainingDiverged" in run.data.tags["error"]
    assert "could not record the failure" in done.stdout + done.stderr


@pytest.mark.system
def test_ctrl_c_right_after_the_run_started_ends_it_killed(make_cfg, workdir: Path, tiny_data_dir: Path) -> None:
    stopped = run_job("cnnlab.train", workdir, tiny_data_dir, *JOB, env=job_env(**{FAILPOINT: "run_started@SIGINT"}))
    assert stopped.returncode != 0
    (run,) = runs(workdir)
    assert run.info.status == "KILLED", "MLflow's exit hook would have called it FINISHED"
    train(make_cfg(*JOB))  # the same job again, in this process
    first, second = runs(workdir)
    assert (first.info.status, second.info.status) == ("KILLED", "FINISHED")
    assert steps(workdir, second.info.run_id, "loss") == [0, 1, 2] and not finished_runs_reused(workdir)



@pytest.mark.integration
def test_ctrl_c_right_after_the_run_started_stops_a_job_started_with_sigint_ignored(
        make_cfg, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A job that inherits SIGINT ignored (a non-interactive shell starts `cmd &` so; a test run or CI started that
    way passes it on to every job it starts, and Python then keeps SIGINT ignored) still ends KILLED on a Ctrl-C
    right after its run started: the job's own handler is in place before the run exists. When it came only after
    the run had started, this Ctrl-C was ignored and the job trained on and exited 0 (issue #32)."""
    monkeypatch.setenv(FAILPOINT, "run_started@SIGINT")
    inherited = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with pytest.raises(KeyboardInterrupt, match="stopped by SIGINT"):
            train(make_cfg(*JOB))
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN, "the inherited disposition is put back"
    finally:
        signal.signal(signal.SIGINT, inherited)
    (run,) = runs(workdir)
    assert run.info.status == "KILLED" and "stopped by SIGINT" in run.data.tags["error"]
    assert steps(workdir, run.info.run_id, "loss") == []


def finished_runs_reused(workdir: Path) -> bool:
    """Whether a FINISHED run lacks its test evaluation (what on_finished=skip would wrongly reuse)."""
    return any(r.info.status == "FINISHED" and "test_accuracy" not in r.data.metrics for r in runs(workdir))


@pytest.mark.integration
def test_a_finished_run_without_a_model_is_not_reused_by_a_job_that_needs_one(make_cfg, workdir: Path) -> None:
    first = train(make_cfg("project=p00", "training.epochs=1", "tracking.log_model=false"))
    second = train(make_cfg("project=p00", "training.epochs=1"))  # the same key: log_model is no setting
    finished = [r for r in runs(workdir) if r.info.status == "FINISHED"]
    assert len(finished) == 2, "trained again, with its model, instead of reusing a run that has none"
    assert [len(r.outputs.model_outputs) for r in finished] == [0, 1]
    assert second["test_accuracy"] == pytest.approx(first["test_accuracy"]), "the same key computes the same thing"
    assert train(make_cfg("project=p00", "training.epochs=1")) == second, "and that one is reused"
