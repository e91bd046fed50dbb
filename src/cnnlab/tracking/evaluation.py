"""A re-evaluation's record in MLflow: `mlflow run . -e evaluate` makes a run for it, which would otherwise stay
empty."""

from __future__ import annotations

from pathlib import Path

from mlflow.tracking import MlflowClient


def log_evaluation(run_id: str, name: str, tags: dict[str, str], metrics: dict[str, float], folder: Path,
                   artifacts: list[str]) -> None:
    """A re-evaluation's figures in the run `mlflow run` made for it (else that run would stay empty)."""
    store = MlflowClient()
    store.update_run(run_id, name=name)
    for key, value in tags.items():
        store.set_tag(run_id, key, value)
    for key, value in metrics.items():
        store.log_metric(run_id, key, value)
    for artifact in artifacts:
        store.log_artifact(run_id, str(folder / artifact))
