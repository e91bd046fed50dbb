"""The documentation site builds with `mkdocs build --strict`: no broken link, missing page, unknown anchor or file
left out of the navigation (CI runs only `python -m pytest`, so this is how CI checks the site)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT


@pytest.mark.slow
def test_the_site_builds_strictly_without_a_warning(tmp_path: Path) -> None:
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                          cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log
    assert "WARNING" not in log, log
    # the results page shows the learning curves as pictures, served from the site
    results = (site / "results" / "index.html").read_text()
    assert results.count('<img alt="P') >= 13
    assert (site / "_repo" / "plots" / "s42" / "p09" / "learning_curves.png").is_file()
