"""The one test-set evaluation of a trained model: loss, accuracy, per-class accuracy and confusion matrix (the
figures a train stage publishes, so this is model-deciding code as far as DVC is concerned)."""

from __future__ import annotations

from typing import Any

import numpy as np


def evaluate_model(model: Any, images: np.ndarray, labels: np.ndarray, class_names: list[str],
                   batch_size: int = 1024) -> dict[str, Any]:
    """One pass over the test set; the loss is plain cross-entropy (no label smoothing)."""
    probs = np.asarray(model.predict(images, batch_size=batch_size, verbose=0), dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    predicted = probs.argmax(axis=1)
    k = len(class_names)
    matrix = np.bincount(labels * k + predicted, minlength=k * k).reshape(k, k)
    per_class = matrix.diagonal() / np.maximum(matrix.sum(axis=1), 1)
    return {
        "test_loss": float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1)).mean()),
        "test_accuracy": float((predicted == labels).mean()),
        "per_class_accuracy": {name: float(acc) for name, acc in zip(class_names, per_class, strict=True)},
        "confusion_matrix": matrix.tolist(),
    }
