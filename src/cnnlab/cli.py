"""What every cnnlab command shares: a refusal (a config error, a data source or file the user can fix, a run
another process is training, a damaged run state: `_refusals`, the one place that says which) ends it with
one line (exit status 2), the traceback only with HYDRA_FULL_ERROR=1; and a check of the command line before
Hydra or the Keras backend start, so a typo costs seconds, Hydra's own composition errors are one line too, and
nothing (not even Hydra's run folder) is written for a job that is refused."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any

from hydra._internal.utils import get_args_parser
from hydra.core.override_parser.overrides_parser import OverridesParser

from cnnlab.config.compose import CompositionError, compose, to_job
from cnnlab.config.errors import ConfigError
from cnnlab.config.schema import JobConfig
from cnnlab.config.settings import capped, result_key
from cnnlab.core.data import DataError
from cnnlab.errors import UserError
from cnnlab.job.checks import check_job
from cnnlab.run.data import DataSpec, check_source
from cnnlab.run.state import RunState
from cnnlab.tracking.store import check_store


def _refusals() -> tuple[type[BaseException], ...]:
    """Every error a user can cause or meet and fix, each said in one line that names the file or value and the
    fix: a config value (ConfigError), the data (DataError: source missing or unreachable, another md5, a corrupt
    archive), and everything else (cnnlab.errors.UserError: a run being trained already, a damaged run state, a
    model or metrics file missing or not one)."""
    return ConfigError, DataError, UserError


def one_line_errors(task: Callable[..., Any]) -> Callable[..., Any]:
    """A refusal of a single run ends the command with its one-line message (exit status 2). Other errors, and
    sweeps (which record failed jobs), are unchanged."""

    @functools.wraps(task)  # Hydra finds conf/ from the task function's module
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return task(*args, **kwargs)
        except _refusals() as err:
            refuse(err)

    return run


def refuse(err: BaseException) -> None:
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise err
    print(f"error: {err}", file=sys.stderr)
    raise SystemExit(2) from None


def precheck(argv: list[str], store: bool = True, twin: bool = False) -> JobConfig | None:
    """Compose the command line's config with Hydra's compose API and check what needs no Keras and no download
    (the typed values, the project id, paths, the store when `store`, the data source, and with `twin` a training
    of the same settings that another process holds), before the Hydra app runs; a refusal ends the command with
    one line. A sweep's varied values are left to its jobs (each refused one is recorded FAILED). Returns the
    checked job of a single run (None otherwise), for a command's own checks."""
    args = get_args_parser().parse_args(argv)
    if args.help or args.hydra_help or args.cfg or args.info or args.shell_completion or args.experimental_rerun:
        return None
    try:
        parsed = OverridesParser.create().parse_overrides(args.overrides)
        fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
        job = to_job(compose(fixed))
    except CompositionError as err:
        refuse(err)
        return None
    except Exception:  # noqa: BLE001 - anything else is Hydra's to report, as it would without this check
        return None
    search = any(o.key_or_group == "hparams_search" for o in parsed)  # a search is a multirun (its config says so)
    if args.multirun or search or len(fixed) != len(parsed):
        return None
    try:
        check_job(job)
        if twin:
            trained = capped(job)  # the lock first: a twin needs nothing else to be refused
            RunState.refuse_if_busy(RunState.folder_for(trained.paths.checkpoints, trained.project.id,
                                                        result_key(trained)), trained.project.id)
        if store:
            check_store(job.tracking.uri)
        check_source(DataSpec.from_config(job.data, job.mirror, job.paths.data))
    except _refusals() as err:
        refuse(err)
    return job
