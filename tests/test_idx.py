"""Tests of minivae.data.idx: IDX files (round trips, malformed files, fuzzing) and folders of four
MNIST-named IDX files loaded as a dataset."""

import gzip

import numpy as np
import pytest
from data_files import (TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES, TRAIN_LABELS, idx_bytes, isolated_cache,
                        overwrite, quiet, small_images, write_idx_dataset)
from hypothesis import given, settings
from hypothesis import strategies as st

from minivae import data
from minivae.errors import DataError

IDX_DTYPES = [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No MINIVAE_DATA, and a user cache inside ``tmp_path``; returns the cache root."""
    return isolated_cache(monkeypatch, tmp_path)


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


@pytest.mark.parametrize("name, array, complaint", [
    (TRAIN_LABELS, np.zeros(4, np.uint8), "has 5 images but .*train-labels-idx1-ubyte has 4 labels"),
    (TEST_IMAGES, small_images(3, rows=5, columns=3), "holds images of 5x3 pixels but .* holds 4x3"),
    (TRAIN_LABELS, np.zeros((5, 1), np.uint8), "train-labels-idx1-ubyte: .* must be 1-D"),
    (TRAIN_IMAGES, np.zeros((5, 12), np.uint8), "train-images-idx3-ubyte: .* must be 3-D"),
    (TRAIN_IMAGES, np.zeros((0, 4, 3), np.uint8), "train-images-idx3-ubyte: holds no items"),
    (TRAIN_LABELS, np.zeros(5, np.float32), "train-labels-idx1-ubyte: .* labels must be integers"),
    (TRAIN_IMAGES, np.full((5, 4, 3), 2.0, np.float32), "train-images-idx3-ubyte: .* outside \\[0, 1\\]"),
    (TRAIN_IMAGES, np.full((5, 4, 3), np.nan, np.float32), "train-images-idx3-ubyte: holds non-finite pixels"),
    (TRAIN_IMAGES, np.zeros((5, 4, 3), np.int16), "train-images-idx3-ubyte: holds int16 pixels"),
], ids=["label-count", "image-size", "labels-2d", "images-2d", "no-images", "float-labels",
        "pixels-out-of-range", "nan-pixels", "int16-pixels"])
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
