"""Tests of minivae.data: IDX files, dataset lookup, verified downloads, Frey Face, binarization.

Nothing here touches the network: every file is made by the test, and downloads are served by an
HTTP server on 127.0.0.1 running in a thread of this process.
"""

import dataclasses
import gzip
import hashlib
import http.server
import os
import socket
import struct
import threading
import time

import numpy as np
import pytest
import scipy.io
from hypothesis import given, settings
from hypothesis import strategies as st

from minivae import data
from minivae.errors import DataError

IDX_DTYPES = [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]
TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS = data.IDX_FILES


# ------------------------------------------------------------------------------------------ helpers

def idx_bytes(array):
    """The IDX encoding of ``array``, written by hand (independent of ``write_idx``)."""
    code = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(np.int16): 0x0B,
            np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D, np.dtype(np.float64): 0x0E}[array.dtype]
    header = bytes((0, 0, code, array.ndim)) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def small_images(count, rows=4, columns=3, seed=0):
    """``count`` random uint8 images of ``rows`` x ``columns`` pixels."""
    return np.random.default_rng(seed).integers(0, 256, size=(count, rows, columns), dtype=np.uint8)


def write_idx_dataset(folder, train_count=5, test_count=3, rows=4, columns=3, gz=False):
    """Write four MNIST-named IDX files of small random images into ``folder``; return the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    rng = np.random.default_rng(train_count)
    arrays = {
        TRAIN_IMAGES: small_images(train_count, rows, columns, seed=1),
        TRAIN_LABELS: rng.integers(0, 10, size=train_count, dtype=np.uint8),
        TEST_IMAGES: small_images(test_count, rows, columns, seed=2),
        TEST_LABELS: rng.integers(0, 10, size=test_count, dtype=np.uint8),
    }
    for name, array in arrays.items():
        data.write_idx(folder / (name + suffix), array)
    return folder


def tiny_spec(mirrors, checksums=None, name="tiny"):
    """A registry entry for a small MNIST-like dataset served by the tests."""
    return data.DatasetSpec(name=name, files=data.IDX_FILES, mirrors=tuple(mirrors), download_suffix=".gz",
                            checksums=checksums or {}, file_format="idx", image_shape=(4, 3),
                            train_count=5, test_count=3, likelihood_hint="bernoulli")


def tiny_gz_files():
    """The four files of the tiny dataset as a mirror serves them: ``{name + '.gz': bytes}``."""
    arrays = {
        TRAIN_IMAGES: small_images(5, seed=1),
        TRAIN_LABELS: np.arange(5, dtype=np.uint8),
        TEST_IMAGES: small_images(3, seed=2),
        TEST_LABELS: np.arange(3, dtype=np.uint8),
    }
    return {name + ".gz": gzip.compress(idx_bytes(array), mtime=0) for name, array in arrays.items()}


def sha256_of_decompressed(served):
    """Correct "decompressed" SHA-256 checksums of the served ``.gz`` files."""
    return {name[:-3]: data.Checksum("sha256", hashlib.sha256(gzip.decompress(body)).hexdigest(),
                                     "decompressed")
            for name, body in served.items()}


def closed_port_url():
    """A URL on 127.0.0.1 whose port was just bound and closed, so connections are refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


@pytest.fixture
def serve():
    """Start HTTP servers on 127.0.0.1: ``serve({path: bytes})`` returns the base URL of a new one.

    ``overstate`` makes the server declare that many more bytes in Content-Length than it sends.
    """
    servers = []

    def start(files, overstate=0):
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                body = files.get(self.path.lstrip("/"))
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body) + overstate))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No MINIVAE_DATA, and a user cache inside ``tmp_path``; returns the cache root."""
    monkeypatch.delenv("MINIVAE_DATA", raising=False)
    cache_root = tmp_path / "xdg-cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache_root))
    return cache_root


def quiet(line):
    """A ``log`` that drops the line."""


# ---------------------------------------------------------------------------------------- IDX files

@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize("ndim", [1, 2, 3, 4])
@pytest.mark.parametrize("dtype", IDX_DTYPES)
def test_idx_round_trip(tmp_path, dtype, ndim, gz):
    shape = (5, 4, 3, 2)[:ndim]
    rng = np.random.default_rng(ndim)
    if np.dtype(dtype).kind == "f":
        array = rng.standard_normal(shape).astype(dtype)
    else:
        info = np.iinfo(dtype)
        array = rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dtype)
    path = tmp_path / ("x.idx.gz" if gz else "x.idx")
    data.write_idx(path, array)
    on_disk = path.read_bytes()
    assert on_disk.startswith(data.GZIP_MAGIC) == gz
    assert (gzip.decompress(on_disk) if gz else on_disk) == idx_bytes(array)
    loaded = data.read_idx(path)
    assert loaded.dtype == array.dtype and loaded.dtype.isnative
    assert loaded.shape == shape
    np.testing.assert_array_equal(loaded, array)


def test_gzip_is_detected_by_content_not_name(tmp_path):
    array = np.arange(6, dtype=np.int16).reshape(2, 3)
    path = tmp_path / "no-suffix"
    path.write_bytes(gzip.compress(idx_bytes(array)))
    np.testing.assert_array_equal(data.read_idx(path), array)


def test_write_idx_accepts_big_endian_arrays(tmp_path):
    array = np.arange(6, dtype=">i4")
    data.write_idx(tmp_path / "x", array)
    np.testing.assert_array_equal(data.read_idx(tmp_path / "x"), array)


@pytest.mark.parametrize("array", [np.zeros(3, bool), np.zeros((2,) * 5, np.uint8), np.zeros(0, np.uint8)],
                         ids=["bool", "5-D", "empty"])
def test_write_idx_rejects_what_idx_cannot_hold(tmp_path, array):
    with pytest.raises(DataError, match="out.idx"):
        data.write_idx(tmp_path / "out.idx", array)
    assert not list(tmp_path.iterdir())


VALID = idx_bytes(np.arange(24, dtype=np.uint8).reshape(2, 3, 4))

MALFORMED = {
    "empty file": (b"", "is empty"),
    "nonzero first bytes": (b"\x01" + VALID[1:], "first two bytes must be zero"),
    "unknown type code": (VALID[:2] + b"\x0a" + VALID[3:], "unknown IDX type code 0x0A"),
    "zero dims": (VALID[:3] + b"\x00" + VALID[4:], "declares 0 dimensions"),
    "five dims": (VALID[:3] + b"\x05" + VALID[4:], "declares 5 dimensions"),
    "truncated header": (VALID[:9], "truncated inside its header"),
    "truncated payload": (VALID[:-5], "truncated: expected 24 bytes of data, found 19"),
    "extra bytes": (VALID + b"\x00\x00\x00", "has 3 extra bytes after the data"),
    "zero items": (idx_bytes(np.zeros((0, 3), np.uint8)), "holds no items"),
    "corrupt gzip": (gzip.compress(VALID)[:-12] + b"garbage-tail", "corrupt or incomplete gzip"),
    "truncated gzip": (gzip.compress(VALID)[:15], "corrupt or incomplete gzip"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_idx_raises_data_error_naming_the_file(tmp_path, case):
    content, complaint = MALFORMED[case]
    path = tmp_path / "broken-images-idx3-ubyte"
    path.write_bytes(content)
    with pytest.raises(DataError) as raised:
        data.read_idx(path)
    assert str(path) in str(raised.value)
    assert complaint in str(raised.value)


def test_write_into_a_missing_folder_raises_data_error(tmp_path):
    with pytest.raises(DataError, match="no-folder.*cannot be written"):
        data.write_idx(tmp_path / "no-folder" / "x.idx", np.arange(3, dtype=np.uint8))


def test_missing_file_raises_data_error(tmp_path):
    with pytest.raises(DataError, match="nothing-here.*cannot be read"):
        data.read_idx(tmp_path / "nothing-here")


def assert_valid_or_data_error(path, content):
    """``read_idx`` on ``content`` either returns a matching array or raises ``DataError``."""
    path.write_bytes(content)
    try:
        array = data.read_idx(path)
    except DataError as error:
        assert str(path) in str(error)
        return
    assert isinstance(array, np.ndarray) and 1 <= array.ndim <= 4 and array.size > 0


@pytest.fixture(scope="module")
def fuzz_file(tmp_path_factory):
    """One path rewritten by every fuzz example (a function-scoped tmp_path would be shared anyway)."""
    return tmp_path_factory.mktemp("fuzz") / "fuzzed-idx"


@settings(max_examples=200, deadline=None)
@given(content=st.binary(max_size=64))
def test_fuzz_random_bytes(fuzz_file, content):
    assert_valid_or_data_error(fuzz_file, content)


@settings(max_examples=200, deadline=None)
@given(gz=st.booleans(),
       edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=4),
       keep=st.integers(0, 10_000))
def test_fuzz_mutated_and_truncated_valid_files(fuzz_file, gz, edits, keep):
    content = bytearray(gzip.compress(VALID, mtime=0) if gz else VALID)
    for position, value in edits:
        content[position % len(content)] = value
    assert_valid_or_data_error(fuzz_file, bytes(content[:keep]))


# ------------------------------------------------------------------------------- folders of IDX files

def test_load_from_data_dir_scales_flattens_and_keeps_labels(tmp_path, clean_env):
    folder = write_idx_dataset(tmp_path / "mine", train_count=5, test_count=3, rows=4, columns=3, gz=True)
    dataset = data.load_dataset("mnist", data_dir=folder, log=quiet, system_dirs={})
    images = data.read_idx(folder / (TRAIN_IMAGES + ".gz"))
    assert dataset.train_x.shape == (5, 12) and dataset.test_x.shape == (3, 12)
    assert dataset.train_x.dtype == np.float32
    np.testing.assert_allclose(dataset.train_x[2], images[2].ravel() / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(dataset.train_y, data.read_idx(folder / (TRAIN_LABELS + ".gz")))
    assert dataset.train_y.dtype == np.int64 and dataset.test_y.shape == (3,)
    assert dataset.image_shape == (4, 3)
    assert dataset.source == str(folder)
    assert dataset.likelihood_hint == "bernoulli"


def test_data_dir_missing_files_is_an_error_naming_it(tmp_path, clean_env):
    folder = write_idx_dataset(tmp_path / "mine")
    (folder / TEST_LABELS).unlink()
    write_idx_dataset(clean_env / "minivae" / "mnist")  # a complete copy elsewhere must not be used
    with pytest.raises(DataError) as raised:
        data.load_dataset("mnist", data_dir=folder, log=quiet, system_dirs={})
    expected = f"{folder}: cannot load mnist from this --data-dir folder (missing {TEST_LABELS})"
    assert expected in str(raised.value)


def overwrite(folder, name, array):
    """Replace file ``name`` of ``folder`` with ``array`` (encoded by hand: it may be empty)."""
    (folder / name).write_bytes(idx_bytes(array))


@pytest.mark.parametrize("name, array, complaint", [
    (TRAIN_LABELS, np.zeros(4, np.uint8), "has 5 images but .*train-labels-idx1-ubyte has 4 labels"),
    (TEST_IMAGES, small_images(3, rows=5, columns=3), "holds images of 5x3 pixels but .* holds 4x3"),
    (TRAIN_LABELS, np.zeros((5, 1), np.uint8), "train-labels-idx1-ubyte: .* must be 1-D"),
    (TRAIN_IMAGES, np.zeros((5, 12), np.uint8), "train-images-idx3-ubyte: .* must be 3-D"),
    (TRAIN_IMAGES, np.zeros((0, 4, 3), np.uint8), "train-images-idx3-ubyte: holds no items"),
    (TRAIN_LABELS, np.zeros(5, np.float32), "train-labels-idx1-ubyte: .* labels must be integers"),
    (TRAIN_IMAGES, np.full((5, 4, 3), 2.0, np.float32), "train-images-idx3-ubyte: .* outside \\[0, 1\\]"),
    (TRAIN_IMAGES, np.zeros((5, 4, 3), np.int16), "train-images-idx3-ubyte: holds int16 pixels"),
], ids=["label-count", "image-size", "labels-2d", "images-2d", "no-images", "float-labels",
        "pixels-out-of-range", "int16-pixels"])
def test_inconsistent_dataset_folder_is_rejected(tmp_path, clean_env, name, array, complaint):
    folder = write_idx_dataset(tmp_path / "mine")
    overwrite(folder, name, array)
    with pytest.raises(DataError, match=complaint):
        data.load_dataset("mnist", data_dir=folder, log=quiet, system_dirs={})


def test_float_pixels_in_unit_range_are_accepted(tmp_path, clean_env):
    folder = write_idx_dataset(tmp_path / "mine")
    pixels = np.random.default_rng(0).random((5, 4, 3)).astype(np.float32)
    overwrite(folder, TRAIN_IMAGES, pixels)
    dataset = data.load_dataset("mnist", data_dir=folder, log=quiet, system_dirs={})
    np.testing.assert_array_equal(dataset.train_x, pixels.reshape(5, 12))


@pytest.mark.parametrize("name", sorted(data.DATASETS))
def test_registry_entries_are_consistent(name):
    spec = data.DATASETS[name]
    assert spec.name == name and all(mirror.endswith("/") for mirror in spec.mirrors)
    assert bool(spec.mirrors) != spec.packaged  # a packaged dataset is never downloaded; the others are
    assert set(spec.checksums) <= set(spec.files)
    for checksum in spec.checksums.values():
        assert checksum.of in ("download", "decompressed")
        assert len(checksum.digest) == hashlib.new(checksum.algorithm).digest_size * 2
        int(checksum.digest, 16)
    assert spec.likelihood_hint in ("bernoulli", "gaussian")
    height, width = spec.image_shape
    assert spec.summary().startswith(f"{name}: {spec.train_count} training and {spec.test_count} test "
                                     f"images of {height}x{width} pixels")


def test_unknown_dataset_name_lists_the_known_ones(clean_env):
    with pytest.raises(DataError, match="unknown dataset 'cifar'.*mnist, fashion-mnist, fashion-mnist-small, frey"):
        data.load_dataset("cifar", log=quiet)


# ------------------------------------------------------------------------------------------ lookup

def test_lookup_order(tmp_path, monkeypatch, clean_env):
    """data_dir > $MINIVAE_DATA/<name> > $MINIVAE_DATA > XDG cache > system dirs."""
    user_root = tmp_path / "minivae-data"
    folders = [
        write_idx_dataset(tmp_path / "system", train_count=1),
        write_idx_dataset(clean_env / "minivae" / "mnist", train_count=2),
        write_idx_dataset(user_root, train_count=3),
        write_idx_dataset(user_root / "mnist", train_count=4),
    ]
    monkeypatch.setenv("MINIVAE_DATA", str(user_root))
    system_dirs = {"mnist": (str(tmp_path / "system"),)}
    given_dir = write_idx_dataset(tmp_path / "given", train_count=5)
    dataset = data.load_dataset("mnist", data_dir=given_dir, log=quiet, system_dirs=system_dirs)
    assert (dataset.source, len(dataset.train_x)) == (str(given_dir), 5)
    for expected_count, folder in reversed(list(enumerate(folders, start=1))):
        dataset = data.load_dataset("mnist", download=False, log=quiet, system_dirs=system_dirs)
        assert (dataset.source, len(dataset.train_x)) == (str(folder), expected_count)
        (folder / TRAIN_IMAGES).unlink()  # an incomplete folder is passed over


def test_cache_folder_honours_xdg_cache_home_else_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.cache_folder("mnist") == os.path.join(str(tmp_path / "xdg"), "minivae", "mnist")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data.cache_folder("frey") == os.path.join(str(tmp_path / "home"), ".cache", "minivae", "frey")


def test_nothing_found_without_download_lists_every_folder(tmp_path, clean_env):
    system = tmp_path / "system"
    system.mkdir()
    with pytest.raises(data.DatasetUnavailable) as raised:
        data.load_dataset("fashion-mnist", download=False, log=quiet,
                          system_dirs={"fashion-mnist": (str(system),)})
    message = str(raised.value)
    assert str(clean_env / "minivae" / "fashion-mnist") + ": no such folder" in message
    assert str(system) + ": missing " + TRAIN_IMAGES in message
    assert "download of fashion-mnist: not attempted" in message
    for way_out in ("network access", "--data-dir DIR", "dataset-fashion-mnist", "--dataset"):
        assert way_out in message


# --------------------------------------------------------------------------------------- downloads

def test_download_verifies_and_caches(clean_env, monkeypatch, serve):
    served = tiny_gz_files()
    mirror = serve(served)
    monkeypatch.setitem(data.DATASETS, "tiny", tiny_spec([mirror], sha256_of_decompressed(served)))
    lines = []
    dataset = data.load_dataset("tiny", log=lines.append, system_dirs={})
    cache = clean_env / "minivae" / "tiny"
    assert dataset.source == str(cache)
    assert sorted(os.listdir(cache)) == sorted(served)
    assert all((cache / name).read_bytes() == body for name, body in served.items())
    np.testing.assert_array_equal(dataset.test_y, np.arange(3))
    assert sum(line.startswith("downloading " + mirror) for line in lines) == 4
    assert any(f"({len(served[TRAIN_IMAGES + '.gz']):,} bytes)" in line for line in lines)
    served.clear()  # a second load reads the cache, not the (now empty) mirror
    assert data.load_dataset("tiny", log=quiet, system_dirs={}).source == str(cache)


def test_download_checksum_of_the_downloaded_bytes(clean_env, monkeypatch, serve):
    served = tiny_gz_files()
    checksums = {name[:-3]: data.Checksum("md5", hashlib.md5(body).hexdigest(), "download")
                 for name, body in served.items()}
    monkeypatch.setitem(data.DATASETS, "tiny", tiny_spec([serve(served)], checksums))
    assert len(data.load_dataset("tiny", log=quiet, system_dirs={}).train_x) == 5


def test_wrong_checksum_caches_nothing(clean_env, monkeypatch, serve):
    served = tiny_gz_files()
    wrong = {name: data.Checksum("sha256", "0" * 64, "decompressed") for name in data.IDX_FILES}
    mirror = serve(served)
    monkeypatch.setitem(data.DATASETS, "tiny", tiny_spec([mirror], wrong))
    with pytest.raises(data.DatasetUnavailable) as raised:
        data.load_dataset("tiny", log=quiet, system_dirs={})
    assert f"{mirror}{TRAIN_IMAGES}.gz: the sha256 of the decompressed bytes is" in str(raised.value)
    assert list((clean_env / "minivae" / "tiny").iterdir()) == []


def test_download_failing_the_structure_check_caches_nothing(clean_env, monkeypatch, serve):
    served = tiny_gz_files()
    served[TRAIN_IMAGES + ".gz"] = gzip.compress(gzip.decompress(served[TRAIN_IMAGES + ".gz"])[:-1])
    mirror = serve(served)  # the checksum matches the truncated file: only the IDX check can catch it
    monkeypatch.setitem(data.DATASETS, "tiny", tiny_spec([mirror], sha256_of_decompressed(served)))
    with pytest.raises(data.DatasetUnavailable, match="truncated: expected 60 bytes of data, found 59"):
        data.load_dataset("tiny", log=quiet, system_dirs={})
    assert list((clean_env / "minivae" / "tiny").iterdir()) == []


def test_download_shorter_than_its_content_length_caches_nothing(clean_env, monkeypatch, serve):
    mirror = serve(tiny_gz_files(), overstate=10)
    monkeypatch.setitem(data.DATASETS, "tiny", tiny_spec([mirror]))
    with pytest.raises(data.DatasetUnavailable, match=f"{mirror}{TRAIN_IMAGES}.gz: .*bytes"):
        data.load_dataset("tiny", log=quiet, system_dirs={})
    assert list((clean_env / "minivae" / "tiny").iterdir()) == []


def test_failed_mirrors_fall_back_to_the_next(clean_env, monkeypatch, serve):
    served = tiny_gz_files()
    refusing, missing, good = closed_port_url(), serve({}), serve(served)
    monkeypatch.setitem(data.DATASETS, "tiny",
                        tiny_spec([refusing, missing, good], sha256_of_decompressed(served)))
    lines = []
    dataset = data.load_dataset("tiny", log=lines.append, system_dirs={})
    assert len(dataset.train_x) == 5
    failures = [line for line in lines if line.startswith("  failed: ")]
    assert len(failures) == 2 * len(data.IDX_FILES)
    assert any(refusing in line and "refused" in line.lower() for line in failures)
    assert any(missing in line and "HTTP 404" in line for line in failures)


def test_every_mirror_failing_lists_each_attempt_and_fails_fast(clean_env, monkeypatch, serve):
    refusing, missing = closed_port_url(), serve({})
    monkeypatch.setitem(data.DATASETS, "tiny", tiny_spec([refusing, missing]))
    started = time.monotonic()
    with pytest.raises(data.DatasetUnavailable) as raised:
        data.load_dataset("tiny", log=quiet, system_dirs={}, timeout=5)
    assert time.monotonic() - started < 3
    message = str(raised.value)
    assert f"{refusing}{TRAIN_IMAGES}.gz: " in message and "refused" in message.lower()
    assert f"{missing}{TRAIN_IMAGES}.gz: HTTP 404" in message
    assert str(clean_env / "minivae" / "tiny") + ": no such folder" in message
    assert list((clean_env / "minivae" / "tiny").iterdir()) == []


def test_a_silent_server_times_out(clean_env, monkeypatch):
    with socket.socket() as silent:  # accepts connections (backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/"
        monkeypatch.setitem(data.DATASETS, "tiny", tiny_spec([url]))
        started = time.monotonic()
        with pytest.raises(data.DatasetUnavailable, match="timed out"):
            data.load_dataset("tiny", log=quiet, system_dirs={}, timeout=0.3)
    assert time.monotonic() - started < 3


# ------------------------------------------------------------------------------- default dataset

def test_default_falls_back_to_a_local_fashion_mnist(tmp_path, clean_env, monkeypatch):
    monkeypatch.setitem(data.DATASETS, "mnist", tiny_spec([closed_port_url()], name="mnist"))
    system = write_idx_dataset(tmp_path / "usr-share-fashion", train_count=7)
    lines = []
    dataset = data.resolve_default_dataset(log=lines.append, system_dirs={"fashion-mnist": (str(system),)})
    assert dataset.name == "fashion-mnist" and dataset.source == str(system) and len(dataset.train_x) == 7
    notices = [line for line in lines if "Fashion-MNIST" in line]
    assert len(notices) == 1 and str(system) in notices[0]
    assert notices[0].startswith("MNIST is not on this machine and could not be downloaded")


def test_default_never_falls_back_from_a_data_dir_or_a_broken_mnist(tmp_path, clean_env):
    system_dirs = {"fashion-mnist": (str(write_idx_dataset(tmp_path / "usr-share-fashion")),)}
    given = write_idx_dataset(tmp_path / "given", train_count=4)
    dataset = data.resolve_default_dataset(data_dir=given, log=quiet, system_dirs=system_dirs)
    assert (dataset.source, len(dataset.train_x)) == (str(given), 4)
    (given / TRAIN_LABELS).unlink()
    with pytest.raises(DataError, match="cannot load mnist from this --data-dir folder"):
        data.resolve_default_dataset(data_dir=given, log=quiet, system_dirs=system_dirs)
    cached = write_idx_dataset(clean_env / "minivae" / "mnist")
    (cached / TEST_IMAGES).write_bytes(b"\x00\x00\x08")
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte: is not an IDX file"):
        data.resolve_default_dataset(log=quiet, system_dirs=system_dirs)


def test_default_prefers_mnist_when_it_is_there(tmp_path, clean_env):
    write_idx_dataset(clean_env / "minivae" / "mnist", train_count=2)
    system = write_idx_dataset(tmp_path / "usr-share-fashion", train_count=7)
    dataset = data.resolve_default_dataset(log=quiet, system_dirs={"fashion-mnist": (str(system),)})
    assert (dataset.name, len(dataset.train_x)) == ("mnist", 2)


def test_default_with_no_mnist_and_no_fashion_copy_trains_on_the_packaged_subset(tmp_path, clean_env,
                                                                                   monkeypatch, serve):
    fashion_mirror = serve(tiny_gz_files())  # a working mirror: the fallback must not use it
    monkeypatch.setitem(data.DATASETS, "mnist", tiny_spec([closed_port_url()], name="mnist"))
    monkeypatch.setitem(data.DATASETS, "fashion-mnist", tiny_spec([fashion_mirror], name="fashion-mnist"))
    lines = []
    dataset = data.resolve_default_dataset(log=lines.append,
                                           system_dirs={"fashion-mnist": (str(tmp_path / "none"),)})
    assert dataset.name == "fashion-mnist-small" and dataset.source == os.path.join(data.PACKAGED_ROOT,
                                                                                    "fashion-mnist-small")
    assert (len(dataset.train_x), len(dataset.test_x)) == (10000, 2000)
    notices = [line for line in lines if "fashion-mnist-small" in line]
    assert len(notices) == 1 and notices[0].startswith("MNIST is not on this machine and could not be downloaded")
    assert not any(fashion_mirror in line for line in lines)


def test_default_with_nothing_anywhere_names_all_three(tmp_path, clean_env, monkeypatch):
    monkeypatch.setitem(data.DATASETS, "mnist", tiny_spec([closed_port_url()], name="mnist"))
    monkeypatch.setattr(data, "PACKAGED_ROOT", str(tmp_path / "broken-install"))
    with pytest.raises(data.DatasetUnavailable) as raised:
        data.resolve_default_dataset(log=quiet, system_dirs={"fashion-mnist": (str(tmp_path / "none"),)})
    message = str(raised.value)
    assert "mnist is not on this machine" in message and "no copy of fashion-mnist" in message
    assert "packaged fashion-mnist-small is missing" in message and "reinstall minivae" in message
    assert str(clean_env / "minivae" / "mnist") in message and str(tmp_path / "none") in message
    assert str(tmp_path / "broken-install" / "fashion-mnist-small") in message


# --------------------------------------------------------------------------------------- Frey Face

def write_frey(folder, images):
    """Write ``frey_rawface.mat`` with ``ff`` of shape (560, images), uint8; return (folder, ff)."""
    folder.mkdir(parents=True, exist_ok=True)
    ff = np.random.default_rng(3).integers(0, 256, size=(560, images), dtype=np.uint8)
    scipy.io.savemat(folder / "frey_rawface.mat", {"ff": ff})
    return folder, ff


def test_frey_loads_scaled_and_split(tmp_path, clean_env):
    folder, ff = write_frey(tmp_path / "frey", images=230)
    dataset = data.load_dataset("frey", data_dir=folder, log=quiet)
    assert dataset.train_x.shape == (30, 560) and dataset.test_x.shape == (200, 560)
    assert dataset.train_y is None and dataset.test_y is None
    assert dataset.image_shape == (28, 20) and dataset.likelihood_hint == "gaussian"
    assert dataset.train_x.dtype == np.float32
    last_image = dataset.test_x[-1].reshape(28, 20)
    row, column = 5, 17  # pixel (row, column) of image i is ff[row * 20 + column, i]
    assert last_image[row, column] == pytest.approx(ff[row * 20 + column, 229] / 255.0)
    np.testing.assert_allclose(dataset.train_x[0], ff[:, 0] / 255.0, rtol=1e-6)


@pytest.mark.parametrize("content, complaint", [
    (b"MATLAB 5.0 MAT-file, this is not really one" + bytes(200), "not a readable MATLAB .mat file"),
    ({"faces": np.zeros((560, 300), np.uint8)}, "has no variable 'ff'"),
    ({"ff": np.zeros((100, 300), np.uint8)}, "needs uint8 of shape \\(560, images\\)"),
    ({"ff": np.zeros((560, 300), np.float64)}, "needs uint8"),
    ({"ff": np.zeros((560, 150), np.uint8)}, "holds 150 images; Frey Face needs more than 200"),
], ids=["corrupt", "no-ff", "wrong-shape", "wrong-dtype", "too-few"])
def test_bad_frey_file_is_a_data_error(tmp_path, clean_env, content, complaint):
    path = tmp_path / "frey_rawface.mat"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        scipy.io.savemat(path, content)
    with pytest.raises(DataError, match=complaint) as raised:
        data.load_dataset("frey", data_dir=tmp_path, log=quiet)
    assert str(path) in str(raised.value)


def test_frey_download_is_checked_for_structure(clean_env, monkeypatch, serve, tmp_path):
    folder, _ = write_frey(tmp_path / "src", images=210)
    good = (folder / "frey_rawface.mat").read_bytes()
    mirrors = (serve({"frey_rawface.mat": b"not a mat file" * 20}), serve({"frey_rawface.mat": good}))
    monkeypatch.setitem(data.DATASETS, "frey", dataclasses.replace(data.DATASETS["frey"], mirrors=mirrors))
    lines = []
    dataset = data.load_dataset("frey", log=lines.append)
    assert dataset.test_x.shape == (200, 560)
    assert any(mirrors[0] in line and "not a readable MATLAB" in line for line in lines)
    assert os.listdir(clean_env / "minivae" / "frey") == ["frey_rawface.mat"]


# ------------------------------------------------------------------------------------ binarization

def test_binarize_static_is_a_fixed_bernoulli_draw():
    x = np.full((200, 100), 0.3, dtype=np.float32)
    x[:, :10] = 0.0
    x[:, 10:20] = 1.0
    binary = data.binarize_static(x, seed=7)
    assert binary.dtype == np.float32 and binary.shape == x.shape
    assert set(np.unique(binary)) <= {0.0, 1.0}
    assert not binary[:, :10].any() and binary[:, 10:20].all()
    assert abs(binary[:, 20:].mean() - 0.3) < 0.01  # 16000 draws: standard error 0.0036
    np.testing.assert_array_equal(binary, data.binarize_static(x, seed=7))
    assert not np.array_equal(binary, data.binarize_static(x, seed=8))
    assert data.binarize_static(x.astype(np.float64), seed=7).dtype == np.float64
