"""What makes a logged model load anywhere: pinned requirements that name the Keras backend, cnnlab's source
copied into the model (MLflow's `code` folder, put on sys.path by `mlflow.pyfunc.load_model`), and this module
as the pyfunc loader, which registers cnnlab's layers before MLflow's Keras loader reads the model.

mlflow.keras.save_model has no `code_paths`, and Keras finds a registered custom layer only once its module
has been imported, so the pyfunc flavor is pointed here instead of at `mlflow.keras`. `mlflow.keras.load_model`
still needs cnnlab installed; `mlflow.pyfunc.load_model` and `mlflow models serve` do not.

This module is imported from inside a model with nothing but MLflow, Keras and the backend installed: it
imports no other part of cnnlab at module level."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
from pathlib import Path
from typing import Any

CODE_DIR = "code"


def requirements(backend: str) -> list[str]:
    """The model's pip requirements, pinned to this environment's versions: Keras, its backend, MLflow, NumPy
    (cnnlab's layers need nothing else)."""
    # inside a model only MLflow and Keras are installed, not cnnlab's config (Hydra): imported where it logs one
    from cnnlab.config.settings import BACKEND_PACKAGES

    names = ["keras", *BACKEND_PACKAGES[backend], "mlflow", "numpy"]
    return [f"{name}=={importlib.metadata.version(name)}" for name in names]


def add_cnnlab(local: str) -> None:
    """Copy cnnlab's package into the saved model at `local` and make its pyfunc flavor load through this
    module, with the code folder on sys.path."""
    # MLflow (seconds to import) only where it is used: cnnlab.predict reads the images before it
    from mlflow.models import Model
    from mlflow.pyfunc import CODE, MAIN

    package = Path(__file__).resolve().parents[1]
    shutil.copytree(package, Path(local, CODE_DIR, package.name), ignore=shutil.ignore_patterns("__pycache__"))
    model = Model.load(local)
    flavor = model.flavors["python_function"]
    flavor[MAIN], flavor[CODE] = __name__, CODE_DIR
    model.save(os.path.join(local, "MLmodel"))


def saved_backend(path: str) -> str:
    """The Keras backend the model at `path` was saved with, as its MLmodel names it (KeyError: not a Keras
    model)."""
    from mlflow.models import Model  # (MLflow only where it is used, as above)

    return Model.load(path).flavors["keras"]["keras_backend"]


def _load_pyfunc(path: str) -> Any:
    """pyfunc's loader: the backend the model was saved with (unless KERAS_BACKEND says otherwise; it must be
    set before Keras is imported), cnnlab's layers registered, then MLflow's own Keras loader."""
    os.environ.setdefault("KERAS_BACKEND", saved_backend(path))
    # Keras, through MLflow's loader and cnnlab's layers, only once KERAS_BACKEND is set
    import mlflow.keras.load

    import cnnlab.core.models  # noqa: F401  (registers cnnlab's layers for loading)

    return mlflow.keras.load._load_pyfunc(path)
