"""The run's one logged model, packaged to load anywhere (cnnlab.tracking.mlmodel: pinned requirements, cnnlab's
code, a pyfunc loader that registers cnnlab's layers), logged in steps a rerun can finish."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
from mlflow.entities import LoggedModelOutput, LoggedModelStatus
from mlflow.exceptions import MlflowException
from mlflow.models import Model, infer_signature
from mlflow.tracking import MlflowClient
from mlflow.utils.file_utils import TempDir

from cnnlab.config.schema import sqlite_file
from cnnlab.run import faults
from cnnlab.run.state import RunState
from cnnlab.tracking import mlmodel


def log_model_once(state: RunState, run_id: str, model: Any, example: Any, class_names: list[str]) -> str:
    """Log `model` through MLflow's Keras flavor (signature, input example, the class names as metadata) as the
    run's one logged model.

    Done in steps that a rerun can finish: the model entry is created and remembered in the state, its files
    uploaded, then it is marked READY and linked to the run, last. A rerun completes a remembered model and
    deletes one a killed job created but did not remember; the run never links two."""
    store = MlflowClient()
    run = store.get_run(run_id)
    known = (state.record() or {}).get("model_id")
    for found in store.search_logged_models([run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'"):
        if found.model_id != known:
            store.delete_logged_model(found.model_id)
    if known is None:
        known = store.create_logged_model(run.info.experiment_id, name="model", source_run_id=run_id,
                                          params=run.data.params).model_id
        state.remember(model_id=known)
    entry = store.get_logged_model(known)
    if entry.status != LoggedModelStatus.READY:
        # Keras (and MLflow's Keras flavor, which imports it) only here: the job has applied its backend by now
        import keras
        import mlflow.keras

        with TempDir() as tmp:
            local = tmp.path("model")
            os.makedirs(local)  # MLflow 3 writes the input example before making the folder (mlflow/mlflow#16183)
            mlflow.keras.save_model(
                model, local, input_example=example, pip_requirements=mlmodel.requirements(keras.backend.backend()),
                signature=infer_signature(example, model.predict(example, verbose=0)),
                metadata={"class_names": list(class_names)},
                mlflow_model=Model(artifact_path=entry.artifact_location, model_uuid=known, run_id=run_id,
                                   model_id=known))
            mlmodel.add_cnnlab(local)
            store.log_model_artifacts(known, local)
        faults.reach("model_logging")
        store.finalize_logged_model(known, LoggedModelStatus.READY)
    if known not in {output.model_id for output in run.outputs.model_outputs}:
        store.log_outputs(run_id, [LoggedModelOutput(known, step=0)])
    return f"models:/{known}"


class ModelNotFound(ValueError):
    """A model URI that names no MLflow model here; the message says why in one line."""


def download(uri: str) -> str:
    """The model's local folder (downloaded from the store MLFLOW_TRACKING_URI names, if it is there)."""
    store = mlflow.get_tracking_uri()
    database = sqlite_file(store)
    if uri.startswith(("models:/", "runs:/")) and database is not None and not database.exists():
        raise ModelNotFound(f"model {uri!r}: there is no MLflow store {store} here (set MLFLOW_TRACKING_URI)")
    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=uri)
    except (MlflowException, OSError) as err:
        message = err.message if isinstance(err, MlflowException) else str(err)
        raise ModelNotFound(f"model {uri!r} not found in {store}: {message.splitlines()[0]}") from None
    if not Path(local, "MLmodel").is_file():
        raise ModelNotFound(f"model {uri!r} is not an MLflow model (no MLmodel file in it)")
    return local


def load_pyfunc(uri: str) -> Any:
    """A logged model as an MLflow pyfunc model (what serving and cnnlab.predict use)."""
    return mlflow.pyfunc.load_model(uri)
