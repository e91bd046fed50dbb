"""`python -m cnnlab.predict <model uri> <image files...>`: the top-3 classes of each image, with probabilities.

The model is any MLflow model URI cnnlab logged (`models:/cnnlab-p11@champion`, `models:/cnnlab-p11/2`,
`models:/<model id>`, `runs:/<run id>/...`, a local folder), from the store MLFLOW_TRACKING_URI names
(default: `sqlite:///mlflow.db` here). Images of any size and mode are made what the training data is: RGB,
32x32, uint8 pixels, channels last (scaling is inside the model). CIFAR-10's images are whole pictures shrunk
to 32x32, so the whole image is resized (no crop; the aspect ratio is not kept) with Pillow's antialiased
bicubic filter. The images are read before the model, and the model is found before anything heavy is
imported, so a bad file or URI fails at once with one line."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from cnnlab.run.checkout import run_own_code

SIZE = (32, 32)
TOP = 3


class PredictError(SystemExit):
    """A bad input, said in one line on stderr (exit status 1)."""

    def __init__(self, message: str) -> None:
        super().__init__(f"cnnlab.predict: {message}")


def read_image(path: Path) -> np.ndarray:
    """One image file as the training data has images: (32, 32, 3) uint8 RGB."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB").resize(SIZE, Image.Resampling.BICUBIC), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as err:
        reason = "not an image file Pillow can read (PNG, JPEG, ...)" \
            if isinstance(err, UnidentifiedImageError) else err.strerror or str(err)
        raise PredictError(f"{path}: {reason}") from None


def top_classes(probabilities: np.ndarray, class_names: list[str], top: int = TOP) -> list[tuple[str, float]]:
    order = np.argsort(probabilities)[::-1][:top]
    return [(class_names[i], float(probabilities[i])) for i in order]


def main(argv: list[str] | None = None) -> None:
    run_own_code("cnnlab.predict", sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m cnnlab.predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="MLflow model URI, e.g. models:/cnnlab-p11@champion")
    parser.add_argument("images", nargs="+", type=Path, help="PNG or JPEG files, any size")
    args = parser.parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    batch = np.stack([read_image(path) for path in args.images])
    from cnnlab.tracking.model import ModelNotFound, download, load_pyfunc

    try:
        local = download(args.model)
    except ModelNotFound as err:
        raise PredictError(str(err)) from None
    model = load_pyfunc(local)
    import keras

    keras.utils.disable_interactive_logging()  # no progress bar on stdout, which has the answers
    probabilities = np.asarray(model.predict(batch))
    names = (model.metadata.metadata or {}).get("class_names") or [str(i) for i in range(probabilities.shape[1])]
    for path, row in zip(args.images, probabilities, strict=True):
        print(f"{path}: " + ", ".join(f"{name} {p:.3f}" for name, p in top_classes(row, names)))


if __name__ == "__main__":
    main()
