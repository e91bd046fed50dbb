"""What a run logs while it trains: the data it was trained on (dataset lineage), each epoch's metrics once
(synchronously, after the epoch's checkpoint, so MLflow's steps are always a prefix of the kept epochs), the
epochs a stopped job kept but had not logged yet, and the model's summary."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import mlflow
import mlflow.data
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_incrementing


def log_datasets(run_id: str, splits: dict[str, tuple[Any, Any]], source: Path, name: str, sha256: str) -> None:
    """Dataset lineage: each split the run used (training, validation, test) as an MLflow dataset input, named
    `<data>-<split>`, sourced from the prepared file and with the prepared data's sha256 as its digest (cut to the
    36 characters MLflow's dataset table holds; the whole sha256 is the input's tag `sha256`). Logged once: a
    resumed run that has them logs nothing."""
    if MlflowClient().get_run(run_id).inputs.dataset_inputs:
        return
    for context, (images, labels) in splits.items():
        with warnings.catch_warnings():  # MLflow registers its local source class twice, then warns about it
            warnings.filterwarnings("ignore", "The specified dataset source can be interpreted in multiple ways")
            dataset = mlflow.data.from_numpy(images, source=str(source.resolve()), targets=labels,
                                             name=f"{name}-{context}", digest=sha256[:36])
        _log_input(dataset, context, sha256)


# Jobs logging the same new dataset at once race in MLflow's check-then-insert (the dataset's unique key); the next
# attempt finds the dataset the other job created and only links it. Three attempts, 0.5 s then 1 s apart; the
# third one's MlflowException is raised.
@retry(retry=retry_if_exception_type(MlflowException), stop=stop_after_attempt(3),
       wait=wait_incrementing(start=0.5, increment=0.5), reraise=True)
def _log_input(dataset: Any, context: str, sha256: str) -> None:
    mlflow.log_input(dataset, context=context, tags={"sha256": sha256})


def log_epoch(epoch: int, logs: dict[str, float]) -> None:
    """One epoch's metrics to the active run, synchronously (MLflow's own Keras callback logs asynchronously, so a
    kill could lose epochs that the checkpoint already holds)."""
    mlflow.log_metrics({key: float(value) for key, value in logs.items()}, step=epoch, synchronous=True)


def replay_epochs(run_id: str, history: list[dict[str, float]]) -> None:
    """Log the epochs of `history` that the run does not have yet: kept before a kill, not yet logged."""
    logged = {m.step for m in MlflowClient().get_metric_history(run_id, "loss")}
    for epoch, metrics in enumerate(history):
        if epoch not in logged:
            mlflow.log_metrics(metrics, step=epoch, synchronous=True)


def log_summary(model: Any) -> None:
    """The model's Keras summary as the artifact model_summary.txt."""
    lines: list[str] = []
    model.summary(print_fn=lambda line, *args, **kwargs: lines.append(line))
    mlflow.log_text("\n".join(lines), "model_summary.txt")
