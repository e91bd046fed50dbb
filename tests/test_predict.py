"""`python -m cnnlab.predict` on bad input, without a trained model: images are made what the training data is
(32x32 RGB uint8) whatever their mode and depth, a large one in bounded memory, and a file that is not an image,
a hostile one (a decompression bomb, a huge text chunk, a truncated file) or a model URI that does not exist
stops it with one line. All files are real ones written by Pillow."""

from __future__ import annotations

import struct
import subprocess
import sys
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image, PngImagePlugin

from cnnlab.predict import SIZE, read_image
from tests.conftest import job_env


def predict(tmp_path: Path, *args: str, store: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cnnlab.predict", *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env=job_env(MLFLOW_TRACKING_URI=f"sqlite:///{store}"))


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    return done.stderr.strip().splitlines()[-1]


def test_any_image_becomes_a_32x32_rgb_uint8_array(tmp_path: Path) -> None:
    wide = np.zeros((48, 96, 4), np.uint8)
    wide[..., 0], wide[..., 3] = 200, 255
    Image.fromarray(wide, "RGBA").save(tmp_path / "wide.png")
    Image.fromarray(np.full((50, 50), 90, np.uint8), "L").save(tmp_path / "grey.jpg")
    red = read_image(tmp_path / "wide.png")
    assert red.shape == (32, 32, 3) and red.dtype == np.uint8
    assert (red[..., 0] == 200).all() and (red[..., 1:] == 0).all()
    assert np.abs(read_image(tmp_path / "grey.jpg").astype(int) - 90).max() <= 2


def reference(path: Path) -> np.ndarray:
    """What reading an image always meant: Pillow's RGB, resized whole with its antialiased bicubic filter."""
    with warnings.catch_warnings(), Image.open(path) as image:
        warnings.simplefilter("ignore")  # Pillow's advice to keep a palette's transparency as alpha
        return np.asarray(image.convert("RGB").resize(SIZE, Image.Resampling.BICUBIC))


@pytest.mark.parametrize(("mode", "suffix"), [("1", "png"), ("L", "png"), ("LA", "png"), ("P", "png"),
                                              ("P", "gif"), ("RGBA", "png"), ("CMYK", "jpg"), ("RGB", "webp")])
def test_other_modes_are_made_rgb_as_before(tmp_path: Path, mode: str, suffix: str) -> None:
    """Palette (with per-entry transparency), 1-bit, alpha and CMYK images: converted to RGB, alpha dropped,
    then resized, as before; without a warning on stderr. Random alpha and black (K) channels, so resizing
    before converting would show."""
    channels = np.random.default_rng(2).integers(0, 256, (45, 70, 4), dtype=np.uint8).tobytes()
    image = Image.frombytes("CMYK" if mode == "CMYK" else "RGBA", (70, 45), channels)
    image = image if mode == "CMYK" else image.convert(mode)
    path = tmp_path / f"image.{suffix}"
    image.save(path, **({"transparency": bytes(range(256))} if (mode, suffix) == ("P", "png") else {}))
    with Image.open(path) as saved:
        assert saved.mode == mode
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(read_image(path), reference(path))


@pytest.mark.parametrize(("name", "dtype", "grey", "white", "mode"), [
    ("grey16.png", np.uint16, 32768, 65535, "I;16"),
    ("grey16.tiff", ">u2", 32768, 65535, "I;16B"),
    ("grey16.ppm", np.uint16, 32768, 65535, "I"),  # Pillow holds 16-bit PPM as 32-bit I
    ("float.tiff", np.float32, 0.5, 1.0, "F"),
])
def test_16_bit_and_float_images_are_scaled_to_8_bits_not_clipped(tmp_path: Path, name: str, dtype: str,
                                                                   grey: float, white: float, mode: str) -> None:
    """Mid-grey at 16 bits (32768) or as a float (0.5) is mid-grey (128), not white (convert("RGB") clips
    16-bit values to 255) or black (float 0.5 clipped to 0); 0 is black and 65535 or 1.0 white."""
    path = tmp_path / name
    Image.fromarray(np.full((40, 50), grey, dtype)).save(path)
    with Image.open(path) as saved:
        assert saved.mode == mode
    assert (read_image(path) == 128).all()
    Image.fromarray(np.where(np.arange(50) < 25, 0, white).astype(dtype)[None].repeat(40, axis=0)).save(path)
    left_right = read_image(path)[:, [0, -1]]
    assert (left_right[:, 0] == 0).all() and (left_right[:, 1] == 255).all()


def claiming(width: int, height: int) -> Callable[[Path], None]:
    """A real 8x8 PNG whose header (IHDR, CRC fixed) claims width x height: 69 bytes that say megapixels, a
    decompression bomb."""

    def make(path: Path) -> None:
        Image.new("L", (8, 8)).save(path)
        data = bytearray(path.read_bytes())
        data[16:24] = struct.pack(">II", width, height)
        data[29:33] = struct.pack(">I", zlib.crc32(data[12:29]))
        path.write_bytes(data)

    return make


def huge_text(path: Path) -> None:
    """A PNG with a zTXt chunk of a few kilobytes that inflates past Pillow's limit on text (MAX_TEXT_CHUNK)."""
    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "a" * 2 * PngImagePlugin.MAX_TEXT_CHUNK, zip=True)
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)


def truncated(path: Path) -> None:
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])


@pytest.mark.parametrize(("make", "reason"), [
    (claiming(8000, 7500), "8000x7500 pixels, over the 50-megapixel limit"),
    (claiming(10000, 10000), "over the 50-megapixel limit (Pillow: Image size (100000000 pixels) exceeds limit of"),
    (claiming(20000, 20000), "over the 50-megapixel limit (Pillow: Image size (400000000 pixels) exceeds limit of"),
    (huge_text, "a broken or unsupported image file (ValueError: Decompressed data too large for PngImagePlugin"),
    (truncated, "a broken or unsupported image file (OSError: image file is truncated"),
], ids=["bomb-60MP", "bomb-100MP-pillow-warns", "bomb-400MP-pillow-refuses", "huge-ztxt", "truncated"])
def test_a_hostile_file_is_refused_in_one_line_before_the_model(tmp_path: Path, make: Callable[[Path], None],
                                                                reason: str) -> None:
    """Refused before any pixel is decoded (the bombs) and before the model is looked up (the store named does
    not exist, which would be the error otherwise); stderr is that one line, no warning above it."""
    make(tmp_path / "x.png")
    done = predict(tmp_path, "models:/cnnlab-p11@champion", "x.png", store=tmp_path / "absent.db")
    assert one_line_error(done).startswith(f"error: x.png: {reason}")
    assert done.stderr.count("\n") == 1, done.stderr


PEAK = """
import sys
from pathlib import Path
from cnnlab.predict import read_image

def mib(key):
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(key)) / 1024

before = mib("VmRSS:")
pixels = read_image(Path(sys.argv[1]))
print(mib("VmHWM:") - before, pixels.mean())
"""


@pytest.mark.system  # starts processes
def test_a_large_image_is_read_in_bounded_memory(tmp_path: Path) -> None:
    """7000x7000, just under the limit; Pillow holds RGB at 4 bytes a pixel: 187 MiB. Reading used to add two
    of those (the decoded image and convert("RGB")'s copy; 376 MiB measured). A JPEG is now decoded at 1/8
    (875x875: 3 MiB; 4 MiB measured): under 32 MiB. A PNG has no reduced decoding, so one decoded image (187 MiB
    measured): under 1.25 of it. The peak is the process's (VmHWM) less what it held before the read."""
    ramp = Image.linear_gradient("L").resize((7000, 7000))
    Image.merge("RGB", (ramp, ramp.transpose(Image.Transpose.ROTATE_90), ramp.transpose(Image.Transpose.ROTATE_180))
                ).save(tmp_path / "big.png", compress_level=1)
    with Image.open(tmp_path / "big.png") as image:
        image.save(tmp_path / "big.jpg", quality=90)
    one_copy = 7000 * 7000 * 4 / 2**20
    for name, bound in (("big.jpg", 32), ("big.png", 1.25 * one_copy)):
        done = subprocess.run([sys.executable, "-c", PEAK, str(tmp_path / name)], capture_output=True, text=True,
                              timeout=300, env=job_env())
        assert done.returncode == 0, done.stderr[-3000:]
        peak, mean = map(float, done.stdout.split())
        assert peak < bound, f"{name}: reading it added {peak:.0f} MiB at peak (bound {bound:.0f})"
        assert abs(mean - 127.5) < 2, f"{name} read as something else (mean pixel {mean})"


def test_a_file_that_is_not_an_image_is_refused_before_the_model(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a picture")
    done = predict(tmp_path, "models:/cnnlab-p11@champion", "notes.txt", store=tmp_path / "absent.db")
    assert one_line_error(done) == "error: notes.txt: not an image file Pillow can read (PNG, JPEG, ...)"
    missing = one_line_error(predict(tmp_path, "models:/cnnlab-p11@champion", "gone.png", store=tmp_path / "x.db"))
    assert missing.startswith("error: gone.png: ") and "No such file" in missing


@pytest.mark.system  # three processes that import MLflow
def test_a_model_uri_that_does_not_exist_is_refused(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "cat.png")
    error = one_line_error(predict(tmp_path, "models:/cnnlab-p11@champion", "cat.png", store=tmp_path / "none.db"))
    assert error.startswith("error: model 'models:/cnnlab-p11@champion': there is no MLflow store")
    assert not (tmp_path / "none.db").exists(), "looking must not create a store"

    store = tmp_path / "mlflow.db"
    MlflowClient(f"sqlite:///{store}").search_experiments()  # an empty store
    error = one_line_error(predict(tmp_path, "models:/cnnlab-p99@champion", "cat.png", store=store))
    assert error.startswith("error: model 'models:/cnnlab-p99@champion' not found in sqlite:///")
    assert "cnnlab-p99" in error.split(" not found in ")[1]
    error = one_line_error(predict(tmp_path, str(tmp_path / "no-model"), "cat.png", store=store))
    assert error.startswith(f"error: model '{tmp_path / 'no-model'}' not found")


@pytest.mark.system  # a process that imports MLflow
def test_a_model_that_is_not_a_keras_model_is_refused_before_a_backend_starts(tmp_path: Path) -> None:
    """The backend to start is the one the model's keras flavor names; a model without one is one line."""
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "cat.png")
    (tmp_path / "sklearn").mkdir()
    (tmp_path / "sklearn" / "MLmodel").write_text("flavors:\n  python_function:\n    loader_module: mlflow.sklearn\n")
    error = one_line_error(predict(tmp_path, str(tmp_path / "sklearn"), "cat.png", store=tmp_path / "absent.db"))
    assert error == (f"error: model '{tmp_path / 'sklearn'}' is not a Keras model "
                     "(its MLmodel has no keras flavor)")
