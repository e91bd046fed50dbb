"""The quick look of the whole pipeline on tiny data is the command README and docs/getting-started.md give.
Running it (in a fresh clone: it trains and reports every project and leaves the published results as committed)
is tests/test_pipeline.py's `quick_look`, whose trainings (one a project) are also that module's tiny pipeline."""

from __future__ import annotations

from tests.conftest import ROOT
from tests.support import QUICK_LOOK


def test_the_quick_look_is_the_command_the_user_is_given() -> None:
    for page in (ROOT / "README.md", ROOT / "docs" / "getting-started.md"):
        assert QUICK_LOOK in page.read_text(), page
