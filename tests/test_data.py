"""Fetch, verify, prepare and load CIFAR-10 archives in the official layout (made by cnnlab.core.synth)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import importlib.util
import io
import json
import pickle
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from cnnlab.core import synth
from cnnlab.core.data import DataError
from cnnlab.run.data import DataSpec, fetch, file_digest, load, prepare
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("mirror") / "cifar-10-python.tar.gz"
    synth.write_archive(path, train_per_batch=20, test=30, seed=3)
    return path


def spec_for(source: str | Path, md5: str | None, root: Path, retries: int = 1) -> DataSpec:
    return DataSpec("cifar10", str(source), md5, "cifar-10-python.tar.gz", root, retries)


@pytest.fixture
def http_server(archive: Path) -> Iterator[str]:
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(archive.parent))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/{archive.name}"
    server.shutdown()


def test_synthetic_archive_has_the_official_layout(archive: Path) -> None:
    with tarfile.open(archive) as tar:
        names = sorted(tar.getnames())
        batch = pickle.load(tar.extractfile("cifar-10-batches-py/data_batch_1"), encoding="bytes")
    assert names == sorted(f"cifar-10-batches-py/{n}" for n in
                           ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
                            "test_batch", "batches.meta"])
    assert batch[b"data"].shape == (20, 3072) and batch[b"data"].dtype == np.uint8
    assert len(batch[b"labels"]) == 20


def test_local_mirror_is_copied_verified_prepared_and_loaded(archive: Path, tmp_path: Path) -> None:
    data = load(spec_for(archive, file_digest(archive), tmp_path))
    assert data.x_train.shape == (100, 32, 32, 3) and data.x_train.dtype == np.uint8
    assert data.x_test.shape == (30, 32, 32, 3) and data.y_test.dtype == np.uint8
    assert data.class_names == synth.CLASS_NAMES
    assert set(np.unique(data.y_train)) == set(range(10))
    # rows are R, G, B planes: the parsed image must equal the generator's image
    images, labels = synth.make_images(20, np.random.default_rng(3))
    np.testing.assert_array_equal(data.x_train[:20], images)
    np.testing.assert_array_equal(data.y_train[:20], labels)
    spec = spec_for(archive, file_digest(archive), tmp_path)
    assert spec.prepared_dir.parent == tmp_path / "prepared" / "cifar10"
    assert data.checksum == hashlib.sha256((spec.prepared_dir / "arrays.npz").read_bytes()).hexdigest()


def test_download_over_http_leaves_no_partial_file(http_server: str, archive: Path, tmp_path: Path) -> None:
    path = fetch(spec_for(http_server, file_digest(archive), tmp_path))
    assert file_digest(path) == file_digest(archive)
    assert sorted(p.name for p in path.parent.iterdir()) == ["cifar-10-python.tar.gz"]


def test_checksum_mismatch_names_source_expected_and_actual(archive: Path, tmp_path: Path) -> None:
    wrong = "0" * 32
    with pytest.raises(DataError, match=rf"{archive}.*expected md5 {wrong}, got {file_digest(archive)}"):
        fetch(spec_for(archive, wrong, tmp_path))
    assert not (tmp_path / "raw").exists(), "no partial or wrong archive, and no empty folder, may be left"


def test_missing_local_source_says_how_to_use_a_mirror(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nowhere\.tar\.gz.*is not a file.*CNNLAB_DATA_SOURCE"):
        fetch(spec_for(tmp_path / "nowhere.tar.gz", "0" * 32, tmp_path))


def test_unreachable_url_fails_with_the_mirror_hint(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"could not fetch http://127\.0\.0\.1:9/.*CNNLAB_DATA_SOURCE"):
        fetch(spec_for("http://127.0.0.1:9/cifar-10-python.tar.gz", "0" * 32, tmp_path))


def test_an_archive_in_place_with_another_checksum_is_kept_and_named_not_parsed_or_fetched(
        archive: Path, tmp_path: Path) -> None:
    """A mirror's archive in place, and a job of a shell without the mirror's settings (it expects the official
    md5): the archive stays as it is (DVC tracks it), nothing is downloaded, and both checksums are named."""
    mirror = spec_for(archive, file_digest(archive), tmp_path)
    fetch(mirror)
    official = spec_for("http://127.0.0.1:9/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a", tmp_path)
    before = mirror.archive_path.read_bytes()
    with pytest.raises(DataError, match=rf"has md5 {file_digest(archive)}, but the configured archive has md5 "
                                        r"c58f30108f718f92721af3b95e74349a: it is kept.*CNNLAB_DATA_SOURCE"):
        prepare(official)
    assert mirror.archive_path.read_bytes() == before, "the archive is left in place, unchanged"
    assert sorted(p.name for p in mirror.archive_path.parent.iterdir()) == ["cifar-10-python.tar.gz"]
    assert not official.prepared_dir.exists()


def test_prepared_data_needs_no_source(archive: Path, tmp_path: Path) -> None:
    spec = spec_for(archive, file_digest(archive), tmp_path)
    prepare(spec)
    spec.archive_path.unlink()
    gone = spec_for(tmp_path / "gone.tar.gz", spec.md5, tmp_path)
    assert load(gone).x_train.shape[0] == 100
    assert not spec.archive_path.exists(), "nothing may be fetched when the prepared data exists"


def test_pickles_that_would_run_code_are_refused(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    payload = pickle.dumps({b"data": Evil(), b"labels": []})
    path = tmp_path / "evil.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
                     "batches.meta"]:
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    with pytest.raises(DataError, match=r"refusing to unpickle builtins\.print"):
        prepare(spec_for(path, file_digest(path), tmp_path / "root"))


def test_an_unreadable_info_json_is_rebuilt(archive: Path, tmp_path: Path) -> None:
    spec = spec_for(archive, file_digest(archive), tmp_path)
    first = load(spec)
    (spec.prepared_dir / "info.json").write_text('{"name": "cifar10", "sha2')  # cut short by a crash
    again = load(spec)
    assert again.checksum == first.checksum
    assert json.loads((spec.prepared_dir / "info.json").read_text())["sha256"] == first.checksum


def test_prepared_data_made_with_other_settings_is_rebuilt_not_reused(tmp_path: Path) -> None:
    small = DataSpec("tiny", "generated", None, "cifar-10-python.tar.gz", tmp_path,
                     generate={"train_per_batch": 10, "test": 20, "seed": 0})
    assert load(small).x_train.shape[0] == 50
    bigger = DataSpec("tiny", "generated", None, "cifar-10-python.tar.gz", tmp_path,
                      generate={"train_per_batch": 12, "test": 20, "seed": 0})
    assert load(bigger).x_train.shape[0] == 60
    assert small.prepared_dir != bigger.prepared_dir and small.prepared_dir.parent == bigger.prepared_dir.parent
    kept = (small.prepared_dir / "arrays.npz").read_bytes()
    assert load(small).x_train.shape[0] == 50, "and back again"
    assert (small.prepared_dir / "arrays.npz").read_bytes() == kept, "a folder each: nothing rebuilt under a reader"


def test_a_run_records_the_checksum_of_the_bytes_it_loaded(archive: Path, tmp_path: Path) -> None:
    spec = spec_for(archive, file_digest(archive), tmp_path)
    data = load(spec)
    assert data.checksum == hashlib.sha256((spec.prepared_dir / "arrays.npz").read_bytes()).hexdigest()
    arrays = spec.prepared_dir / "arrays.npz"
    info = json.loads((spec.prepared_dir / "info.json").read_text())
    from cnnlab.core.data import read_npz

    other = read_npz(arrays, info["class_names"])
    assert other.checksum == data.checksum and (other.x_train == data.x_train).all()


def test_preparing_twice_gives_identical_bytes(archive: Path, tmp_path: Path) -> None:
    one, two = (spec_for(archive, file_digest(archive), tmp_path / name) for name in ("one", "two"))
    assert load(one).checksum == load(two).checksum, "DVC must see an unchanged output when prepare reruns"


def _load_in_process(root: str) -> tuple[str, list[str]]:
    """load() in a fresh process; returns the checksum and the data module's build messages."""
    import logging

    built: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith(("generated", "prepared")):
                built.append(record.getMessage().split()[0])

    logging.getLogger("cnnlab.run.data").addHandler(Collect())
    logging.getLogger("cnnlab.run.data").setLevel(logging.INFO)
    spec = DataSpec("tiny", "generated", None, "cifar-10-python.tar.gz", Path(root),
                    generate={"train_per_batch": 40, "test": 40, "seed": 1})
    return load(spec).checksum, built


@pytest.mark.system  # starts processes
def test_processes_loading_at_once_build_the_data_once(tmp_path: Path) -> None:
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(4) as pool:
        done = pool.map(_load_in_process, [str(tmp_path)] * 4)
    assert len({checksum for checksum, _ in done}) == 1
    assert sorted(message for _, built in done for message in built) == ["generated", "prepared"]
    assert [p.name for p in tmp_path.rglob("*") if p.name.endswith(".partial")] == []
    assert _load_in_process(str(tmp_path)) == (done[0][0], []), "ready data is loaded, not built again"


def _tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path


def test_an_archive_with_a_path_traversal_member_is_refused(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "evil.tar.gz", {"cifar-10-batches-py/data_batch_1": b"x", "../../x": b"owned"})
    spec = DataSpec("cifar10", str(archive), file_digest(archive), "cifar-10-python.tar.gz", tmp_path / "root")
    with pytest.raises(DataError, match=r"refusing unsafe archive member '\.\./\.\./x'"):
        prepare(spec)
    assert not (tmp_path / "x").exists() and not (tmp_path.parent / "x").exists()


def test_a_corrupt_prepared_file_is_detected_and_rebuilt(tmp_path: Path) -> None:
    archive = tmp_path / "cifar-10-python.tar.gz"
    synth.write_archive(archive, train_per_batch=10, test=10)
    spec = DataSpec("cifar10", str(archive), file_digest(archive), archive.name, tmp_path / "root")
    good = load(spec)
    arrays = spec.prepared_dir / "arrays.npz"
    arrays.write_bytes(arrays.read_bytes()[:-100] + b"\0" * 100)
    again = load(spec)
    assert again.checksum == good.checksum and (again.x_train == good.x_train).all()


def test_a_truncated_download_is_retried_then_named_with_both_checksums(tmp_path: Path) -> None:
    import http.server
    import threading

    archive = tmp_path / "cifar-10-python.tar.gz"
    synth.write_archive(archive, train_per_batch=10, test=10)
    payload, served = archive.read_bytes(), []

    class Flaky(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            body = payload[: len(payload) // 2] if len(served) < 1 else payload
            served.append(len(body))
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/cifar-10-python.tar.gz"
    try:
        spec = DataSpec("cifar10", url, file_digest(archive), archive.name, tmp_path / "ok", retries=2,
                        first_wait=0)
        assert load(spec).x_train.shape[0] == 50 and served == [len(payload) // 2, len(payload)]
        served.clear()
        wrong = DataSpec("cifar10", url, "f" * 32, archive.name, tmp_path / "bad", retries=2,
                         first_wait=0)
        with pytest.raises(DataError, match=rf"{url}: expected md5 f{{32}}, got {file_digest(archive)}.*2 attempt"):
            load(wrong)
        assert len(served) == 2
        assert not (tmp_path / "bad" / "raw").exists(), "nothing, not even an empty folder, is left"
    finally:
        server.shutdown()


def test_the_reference_implementation_reads_the_images_cnnlab_trains_on(archive: Path, tmp_path: Path) -> None:
    """bench/airbench_reference.py gives airbench the archive's images as its own NHWC uint8 tensors: the same
    training and test images, labels and class names as cnnlab's loader, in the same order."""
    spec = importlib.util.spec_from_file_location("airbench_reference", ROOT / "bench" / "airbench_reference.py")
    reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reference)
    arrays = reference.cifar_arrays(archive)
    data = load(spec_for(archive, file_digest(archive), tmp_path))
    np.testing.assert_array_equal(arrays["train"]["images"], data.x_train)
    np.testing.assert_array_equal(arrays["train"]["labels"], data.y_train)
    np.testing.assert_array_equal(arrays["test"]["images"], data.x_test)
    np.testing.assert_array_equal(arrays["test"]["labels"], data.y_test)
    assert arrays["train"]["classes"] == arrays["test"]["classes"] == data.class_names
