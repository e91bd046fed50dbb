"""A damaged run state (issue #33, probes 1-3): a job killed after a backup, one file of its state damaged by hand,
the same command again. Every damaged file is named; the run continues from the newest intact backup in the same
MLflow run, every epoch logged once and its history the epochs trained, or, where nothing intact is left, the job
is refused in one line with the command that starts over and the abandoned run is ended KILLED.

Real processes killed at failpoints (cnnlab.run.faults), tiny data, a real MLflow store."""

from __future__ import annotations

import csv
import io
import json
import logging
import signal
from pathlib import Path

import pytest

from cnnlab.job.steps import train
from cnnlab.run.faults import ENV as FAILPOINT
from tests.conftest import job_env, run_job
from tests.support import runs, steps, store

pytestmark = pytest.mark.system
JOB = ("project=p01", "training.epochs=3", "tracking.log_model=false")


def killed_after_backup(workdir: Path, data: Path, epoch: int) -> tuple[str, Path]:
    """A job killed (SIGKILL) after 0-based epoch `epoch` was backed up: its RUNNING run and its state folder."""
    killed = run_job("cnnlab.train", workdir, data, *JOB, env=job_env(**{FAILPOINT: f"after_backup:{epoch}"}))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    (run,) = runs(workdir)
    assert run.info.status == "RUNNING"
    (state,) = (workdir / "checkpoints").glob("p01-*/")
    return run.info.run_id, state


def assert_continued(workdir: Path, run_id: str, epochs: int = 3) -> None:
    """One run, the killed one, FINISHED, each epoch logged once, and its files' history the epochs trained, with
    the values MLflow has."""
    (run,) = runs(workdir)
    assert run.info.run_id == run_id and run.info.status == "FINISHED", "the same MLflow run, continued"
    assert steps(workdir, run_id, "loss") == list(range(epochs)), "every epoch logged once"
    folder = workdir / "runs" / "p01" / run_id
    assert json.loads((folder / "metrics.json").read_text())["epochs"] == epochs
    rows = list(csv.DictReader(io.StringIO((folder / "history.csv").read_text())))
    assert [int(row["epoch"]) for row in rows] == list(range(1, epochs + 1)), "counted from 1"
    logged = {m.step: m.value for m in store(workdir).get_metric_history(run_id, "val_accuracy")}
    assert [float(row["val_accuracy"]) for row in rows] == [logged[e] for e in range(epochs)]
    assert not list((workdir / "checkpoints").glob("p01-*/")), "a finished run leaves no state"


def test_a_damaged_record_is_named_and_its_run_found_again(make_cfg, workdir: Path, tiny_data_dir: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    """Probe 1: garbage in run.json. Before: a new run from epoch 1, FINISHED, not a word."""
    run_id, state = killed_after_backup(workdir, tiny_data_dir, 1)
    (state / "run.json").write_text("garbage{{not json")
    with caplog.at_level(logging.INFO):
        train(make_cfg(*JOB))
    assert f"{state / 'run.json'} is damaged: not JSON" in caplog.text
    assert f"its run is {run_id}" in caplog.text and "continuing after epoch 2 of 3" in caplog.text
    assert_continued(workdir, run_id)


def test_an_empty_journal_is_named_and_put_back_from_the_backup(make_cfg, workdir: Path, tiny_data_dir: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    """Probe 2: history.csv emptied. Before: FINISHED with steps 0 and 2 only, `epochs: 1`, one history row."""
    run_id, state = killed_after_backup(workdir, tiny_data_dir, 1)
    (state / "history.csv").write_text("")
    with caplog.at_level(logging.INFO):
        train(make_cfg(*JOB))
    assert f"{state / 'history.csv'} is damaged (empty): put back as the backup of epoch 2 recorded it" in caplog.text
    assert_continued(workdir, run_id)


@pytest.mark.parametrize("damage", ["weights truncated", "record garbage"])
def test_a_damaged_newest_backup_is_named_and_the_run_continues_from_the_one_before(
        damage: str, make_cfg, workdir: Path, tiny_data_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Probe 3: the newest backup's weights cut to 0 bytes, or its record garbage. Before: a traceback on every
    rerun, exit 1, the intact epoch 1 not used."""
    run_id, state = killed_after_backup(workdir, tiny_data_dir, 1)
    name = "epoch-0002.weights.h5" if damage == "weights truncated" else "epoch-0002.json"
    (state / "backup" / name).write_bytes(b"" if damage == "weights truncated" else b"garbage{{")
    with caplog.at_level(logging.INFO):
        train(make_cfg(*JOB))
    says = "truncated or corrupted" if damage == "weights truncated" else "not JSON"
    assert f"{state / 'backup' / name} is damaged: " in caplog.text and says in caplog.text
    assert "continuing from epoch 1, the newest intact backup (epoch-0001.json)" in caplog.text
    assert "continuing after epoch 1 of 3" in caplog.text
    assert_continued(workdir, run_id)


def test_with_no_intact_backup_left_the_job_is_refused_in_one_line(workdir: Path, tiny_data_dir: Path) -> None:
    """The only backup damaged: nothing to continue from. One line naming the file and how to start over, exit 2,
    no new run, and the abandoned run ended KILLED by the job that found it."""
    run_id, state = killed_after_backup(workdir, tiny_data_dir, 0)
    weights = state / "backup" / "epoch-0001.weights.h5"
    weights.write_bytes(weights.read_bytes()[:100])
    refused = run_job("cnnlab.train", workdir, tiny_data_dir, *JOB)
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "Traceback" not in refused.stderr + refused.stdout
    (line,) = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert refused.stderr.strip().endswith(line)
    assert f"{weights} is damaged" in line and f"rm -r {state} and run the same command again" in line
    (run,) = runs(workdir)
    assert run.info.run_id == run_id and run.info.status == "KILLED", "no new run; the abandoned one ended"
    assert "abandoned" in run.data.tags["error"]
    assert state.exists(), "the state is left for the user to decide"
