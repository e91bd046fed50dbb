"""The checkout a command runs in is the one that runs: a second clone used with this checkout's environment (whose
editable install points here) trains the clone's configs and code, records which checkout it was, and reads or
writes nothing of this one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import ROOT, job_env
from tests.support import git_copy, listing

pytestmark = pytest.mark.system


def test_a_second_clone_trains_its_own_config_and_code(tmp_path: Path) -> None:
    clone = git_copy(tmp_path / "clone")
    model = clone / "conf" / "model" / "p05.yaml"
    model.write_text(model.read_text().replace("{type: Dense, units: 32,", "{type: Dense, units: 48,"))
    before = listing(ROOT)
    env = {k: v for k, v in job_env().items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-m", "cnnlab.train", "project=p05", "data=tiny", "training.epochs=1",
                           "tracking.log_model=false", "tracking.system_metrics=false"], cwd=clone, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"running the code and configs of {clone}" in done.stdout + done.stderr
    client = MlflowClient(f"sqlite:///{clone / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("cnnlab").experiment_id])
    units = [v for k, v in run.data.params.items() if k.startswith("model.layers.") and k.endswith(".units")]
    assert units == ["48"], "the clone's model config, not this checkout's"
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=clone, capture_output=True, text=True).stdout.strip()
    assert run.data.tags["cnnlab.checkout"] == str(clone)
    assert run.data.tags["git_commit"] == f"{head}-dirty", "the clone's commit, with its uncommitted edits"
    (folder,) = (clone / "runs" / "p05").iterdir()
    record = json.loads((folder / "run.json").read_text())
    assert record["checkout"] == {"path": str(clone), "commit": head, "dirty": True}, "the clone's code ran"
    assert listing(ROOT) == before, "nothing of this checkout was written"


def test_outside_any_checkout_the_installed_cnnlab_runs(tmp_path: Path) -> None:
    env = {k: v for k, v in job_env().items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", "from cnnlab.run.checkout import project_of, imported_checkout; "
                           "from pathlib import Path; print(project_of(Path.cwd()), imported_checkout())"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["None", str(ROOT)]
