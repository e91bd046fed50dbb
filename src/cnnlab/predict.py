"""`python -m cnnlab.predict <model uri> <image files...>`: the top-3 classes of each image, with probabilities.

The model is any MLflow model URI cnnlab logged (`models:/cnnlab-p11@champion`, `models:/cnnlab-p11/2`,
`models:/<model id>`, `runs:/<run id>/...`, a local folder), from the store MLFLOW_TRACKING_URI names
(default: `sqlite:///mlflow.db` here). Images of any mode, up to MAX_PIXELS, are made what the training data is:
RGB, 32x32, uint8 pixels, channels last (scaling is inside the model). CIFAR-10's images are whole pictures
shrunk to 32x32, so the whole image is resized (no crop; the aspect ratio is not kept) with Pillow's antialiased
bicubic filter; 16-bit and float images are resized at their own depth, then brought to 8 bits. The files are
untrusted: one claiming more than MAX_PIXELS is refused before a pixel is decoded, a large JPEG is decoded at
1/2 to 1/8 of its size, and whatever Pillow raises on a broken or hostile file is one line naming the file.
The images are read before the model, and the model is found before anything heavy is imported, so a bad file
or URI fails at once with one line; the Keras backend the model names is then started quietly (no CUDA probe
lines on a machine without an NVIDIA driver)."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from cnnlab.cli import one_line_errors
from cnnlab.config.backend import use_backend
from cnnlab.config.errors import ConfigError
from cnnlab.errors import UserError
from cnnlab.run.checkout import run_own_code
from cnnlab.tracking.mlmodel import saved_backend

SIZE = (32, 32)
TOP = 3
MAX_PIXELS = 50_000_000
"""The largest image read: 50 megapixels (a 48-megapixel phone photo is 8000x6000). Pillow holds a decoded image
at up to 4 bytes a pixel, twice that for the modes converted to RGB before resizing (alpha, palette, CMYK), so
one image costs at most about 400 MB; a file whose header claims more (a decompression bomb: a few kilobytes
that say gigapixels) is refused before a pixel is decoded."""
LIMIT = f"{MAX_PIXELS // 10**6}-megapixel limit"
DRAFT = (4 * SIZE[0], 4 * SIZE[1])
"""A JPEG is decoded at 1/2, 1/4 or 1/8 of its size (libjpeg's DCT scaling, what Pillow's thumbnail does) while
it stays at least this big, so the bicubic resize still has 4 decoded pixels a side for each output one."""
TO_8_BITS = {"I;16": 1 / 257, "I;16B": 1 / 257, "I;16L": 1 / 257, "I;16N": 1 / 257, "I": 1 / 257, "F": 255.0}
"""Modes resized as they are and then scaled to 0-255 (convert("RGB") would clip them, turning 16-bit mid-grey
white): 16-bit by value/257, rounded (the inverse of 8-bit's v*257, so 0->0, 32768->128, 65535->255; Pillow's
"I" is how it holds 16-bit PPM and older 16-bit PNG), 32-bit float (TIFF, PFM) as 0.0-1.0, as those formats
mean it."""
KEPT = {"RGB", "L", *TO_8_BITS}
"""Modes resized without converting first; any other (P, PA, LA, RGBA, CMYK, 1, ...) is made RGB first, as
before (alpha and transparency dropped), since Pillow resizes palette and 1-bit images by nearest neighbour."""


class PredictError(UserError):
    """A bad input (an image file, a model), said in one line on stderr (exit status 2, cnnlab.cli)."""


def read_image(path: Path) -> np.ndarray:
    """One image file as the training data has images: (32, 32, 3) uint8 RGB."""
    small = resized(path)
    if small.mode in TO_8_BITS:
        values = np.nan_to_num(np.asarray(small, dtype=np.float64)) * TO_8_BITS[small.mode]
        grey = np.rint(np.clip(values, 0, 255)).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    return np.asarray(small.convert("RGB"), dtype=np.uint8)


def resized(path: Path) -> Image.Image:
    """The file decoded and resized to SIZE, in a mode of KEPT; in memory at full size only the decoded image
    (JPEGs drafted) and, for the modes converted to RGB, its RGB copy. The file may be hostile, so whatever Pillow
    raises on it (OSError, ValueError, SyntaxError, struct.error, ...) is a fact about the file: one PredictError."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # the transparency is dropped on purpose, as for every other mode with alpha
            warnings.filterwarnings("ignore", "Palette images with Transparency", UserWarning)
            with Image.open(path) as image:
                if image.width * image.height > MAX_PIXELS:
                    raise PredictError(f"{path}: {image.width}x{image.height} pixels, over the {LIMIT}")
                drafted = image.draft(None, DRAFT)
                if image.mode not in KEPT:
                    image = image.convert("RGB")
                return image.resize(SIZE, Image.Resampling.BICUBIC, box=drafted[1] if drafted else None)
    except PredictError:
        raise
    except Exception as err:
        raise PredictError(f"{path}: {unreadable(err)}") from None


def unreadable(err: Exception) -> str:
    """Why Pillow could not read a file, in words."""
    if isinstance(err, UnidentifiedImageError):
        return "not an image file Pillow can read (PNG, JPEG, ...)"
    if isinstance(err, Image.DecompressionBombError | Image.DecompressionBombWarning):
        return f"over the {LIMIT} (Pillow: {err})"
    if isinstance(err, OSError) and err.strerror:
        return err.strerror  # the file itself: missing, unreadable, a folder
    return f"a broken or unsupported image file ({type(err).__name__}: {next(iter(str(err).splitlines()), '')})"


def start_backend_of(uri: str, local: str) -> None:
    """Start the Keras backend the model was saved with (KERAS_BACKEND wins, as in the model's own loader)
    through cnnlab's quiet start, before MLflow's loader imports Keras: on a machine without an NVIDIA driver
    TensorFlow's CUDA probe and oneDNN lines would otherwise be printed; a backend not installed here is one
    line."""
    try:
        saved = saved_backend(local)
    except KeyError:
        raise PredictError(f"model {uri!r} is not a Keras model (its MLmodel has no keras flavor)") from None
    try:
        use_backend(os.environ.get("KERAS_BACKEND") or saved)
    except ConfigError as err:
        raise PredictError(f"model {uri!r}: {err}") from None


def top_classes(probabilities: np.ndarray, class_names: list[str], top: int = TOP) -> list[tuple[str, float]]:
    order = np.argsort(probabilities)[::-1][:top]
    return [(class_names[i], float(probabilities[i])) for i in order]


@one_line_errors
def main(argv: list[str] | None = None) -> None:
    run_own_code("cnnlab.predict", sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m cnnlab.predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="MLflow model URI, e.g. models:/cnnlab-p11@champion")
    parser.add_argument("images", nargs="+", type=Path,
                        help=f"PNG, JPEG, ... files of up to {MAX_PIXELS // 10**6} megapixels")
    args = parser.parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    batch = np.stack([read_image(path) for path in args.images])
    # imports MLflow (seconds): only once the images are read, so a bad file is refused at once
    from cnnlab.tracking.logged_model import ModelNotFound, download, load_pyfunc

    try:
        local = download(args.model)
    except ModelNotFound as err:
        raise PredictError(str(err)) from None
    start_backend_of(args.model, local)
    model = load_pyfunc(local)
    import keras  # heavy, and only once the model's backend is applied (start_backend_of)

    keras.utils.disable_interactive_logging()  # no progress bar on stdout, which has the answers
    probabilities = np.asarray(model.predict(batch))
    names = (model.metadata.metadata or {}).get("class_names") or [str(i) for i in range(probabilities.shape[1])]
    for path, row in zip(args.images, probabilities, strict=True):
        print(f"{path}: " + ", ".join(f"{name} {p:.3f}" for name, p in top_classes(row, names)))


if __name__ == "__main__":
    main()
