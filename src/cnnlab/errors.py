"""What a user can cause or meet and fix: a refusal, said in one line (cnnlab.cli maps each to that line, exit
status 2). Subclasses name the file or value and the fix in their message; ConfigError (a config value) and
cnnlab.core.data.DataError (the data) are the two that are not subclasses, and cnnlab.cli lists them beside it."""

from __future__ import annotations


class UserError(RuntimeError):
    """Something the user can fix, named with the fix: a file missing or damaged, a run already being trained."""
