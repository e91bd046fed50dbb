"""The quick look of the whole pipeline on tiny data (README, docs/getting-started.md), run as a new user runs it
in a fresh clone: it trains and reports every project (in DVC's temporary copy, tracked in the clone's store) and
leaves the published results (params.yaml, dvc.lock, metrics/, plots/, reports/) exactly as committed."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import ROOT
from tests.support import git_copy, pipeline_projects, sh

pytestmark = pytest.mark.system
QUICK_LOOK = "dvc exp run --temp -S data=tiny -S max_epochs=1 -S 'seeds=[42]'"


def test_the_quick_look_is_the_command_the_user_is_given() -> None:
    for page in (ROOT / "README.md", ROOT / "docs" / "getting-started.md"):
        assert QUICK_LOOK in page.read_text(), page


def test_the_quick_look_leaves_the_committed_results_as_they_are(tmp_path: Path) -> None:
    origin = git_copy(tmp_path / "origin")  # params.yaml as committed: the reference table on CIFAR-10
    clone = tmp_path / "clone"
    sh(tmp_path, "git", "clone", "-q", str(origin), str(clone))
    published = {p: p.read_bytes() for p in [clone / "params.yaml", clone / "dvc.lock",
                                            *(clone / "reports").iterdir(), *(clone / "metrics").rglob("*.json")]}
    done = sh(clone, *shlex.split(QUICK_LOOK), timeout=None)  # thirteen tiny trainings: no bound holds when busy
    assert "have been applied" not in done.stdout + done.stderr
    (name,) = re.findall(r"Ran experiment\(s\): (\S+)", done.stdout)
    assert sh(clone, "git", "status", "--porcelain").stdout == "", "nothing tracked changed, nothing new unignored"
    assert {p: p.read_bytes() for p in published} == published
    client = MlflowClient(f"sqlite:///{clone / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("cnnlab").experiment_id])
    assert sorted(r.data.tags["project"] for r in runs) == sorted(pipeline_projects()) and \
        {r.data.tags["data"] for r in runs} == {"tiny"}
    assert name in sh(clone, "dvc", "exp", "show", "--no-pager", "--csv").stdout, "kept, to look at or apply"
