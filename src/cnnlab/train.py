"""`python -m cnnlab.train project=p04 [overrides]`: train one project, evaluate it once on the test set, keep its
files in `runs/<project>/<run id>/` and track everything in MLflow (the steps: cnnlab.job.steps). With `-m` Hydra
sweeps; a failing job is recorded FAILED and the sweep goes on."""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from cnnlab.cli import one_line_errors, precheck
from cnnlab.config.compose import check_composed, to_job
from cnnlab.run.checkout import run_own_code
from cnnlab.run.context import JobContext
from cnnlab.run.describe import base_tags

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path="../../conf", config_name="config")
@one_line_errors
def task(cfg: DictConfig) -> float | None:
    """Hydra's task: the typed job, trained; returns the run's kept epoch's validation value (what a sweep or
    search optimises). In a sweep, a failed job is logged and recorded FAILED, and the sweep goes on; a pruned
    search trial's TrialPruned goes to the search sweeper, which tells Optuna."""
    # the job's steps import MLflow, Optuna, matplotlib and SciPy: only inside Hydra's task, after the command
    # line's check (precheck), so a refused command imports none of them
    from optuna import TrialPruned

    from cnnlab.job.steps import selected_value, train

    context = JobContext.current()
    check_composed(cfg, context.overrides)
    job = to_job(cfg)
    try:
        metrics = train(job, context)
    except Exception as err:
        if not context.multirun or isinstance(err, TrialPruned):
            raise
        log.exception("job %s failed; the sweep goes on", job.project.id)
        if not getattr(err, "mlflow_run_id", None):
            from cnnlab.tracking.runs import log_rejected_job  # (MLflow, as above)

            log_rejected_job(job.tracking, job.project.id, base_tags(job, context), err)
        return None
    return selected_value(job, metrics)


def main() -> None:
    run_own_code("cnnlab.train", sys.argv[1:])
    precheck(sys.argv[1:], twin=True)
    task()


if __name__ == "__main__":
    main()
