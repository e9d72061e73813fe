"""Tests of minivae.data.arrays: your own .npz / .npy arrays as a dataset, checked like IDX data."""

import numpy as np
import pytest

from minivae import data
from minivae.errors import DataError


def images(count, rows=4, columns=3, seed=0):
    """``count`` random uint8 images."""
    return np.random.default_rng(seed).integers(0, 256, size=(count, rows, columns), dtype=np.uint8)


def test_images_labels_and_test_split_from_the_file(tmp_path):
    x, x_test = images(6), images(2, seed=1)
    y, y_test = np.array([0, 1, 2, 0, 1, 2], np.uint8), np.array([2, 0], np.int32)
    path = tmp_path / "mine.npz"
    np.savez(path, x=x, y=y, x_test=x_test, y_test=y_test)
    dataset = data.load_array_dataset(path)
    assert isinstance(dataset, data.Dataset)
    assert (dataset.name, dataset.source, dataset.image_shape) == ("mine.npz", str(path), (4, 3))
    assert dataset.train_x.dtype == np.float32 and dataset.train_x.shape == (6, 12)
    np.testing.assert_allclose(dataset.train_x[4], x[4].ravel() / 255.0, rtol=1e-6)
    np.testing.assert_allclose(dataset.test_x, x_test.reshape(2, 12) / 255.0, rtol=1e-6)
    assert dataset.train_y.dtype == np.int64 and dataset.test_y.dtype == np.int64
    np.testing.assert_array_equal(dataset.train_y, y)
    np.testing.assert_array_equal(dataset.test_y, y_test)
    assert dataset.likelihood_hint == "bernoulli" and dataset.class_names is None


def test_float_rows_are_kept_as_they_are_with_a_one_row_image_shape(tmp_path):
    rows = np.random.default_rng(0).random((10, 7))
    rows[0, :2] = (0.0, 1.0)
    path = tmp_path / "rows.npz"
    np.savez(path, x=rows, labels=np.arange(10), x_test=rows[:3])
    with pytest.raises(DataError, match="has labels but not y_test"):
        data.load_array_dataset(path)
    np.savez(path, x=rows, x_test=rows[:3])
    dataset = data.load_array_dataset(path, name="rows")
    assert dataset.name == "rows" and dataset.image_shape == (1, 7)
    np.testing.assert_array_equal(dataset.train_x, rows.astype(np.float32))
    assert dataset.train_y is None and dataset.test_y is None


def held_out(path, **kwargs):
    """The dataset of ``path`` held out by a test fraction, with row i of ``x`` filled with i."""
    dataset = data.load_array_dataset(path, **kwargs)
    return np.rint(dataset.train_x[:, 0] * 255).astype(int), np.rint(dataset.test_x[:, 0] * 255).astype(int), dataset


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_a_test_fraction_holds_out_a_seeded_draw_in_file_order(tmp_path, suffix):
    x = np.repeat(np.arange(40, dtype=np.uint8), 6).reshape(40, 2, 3)
    path = tmp_path / ("mine" + suffix)
    if suffix == ".npy":
        np.save(path, x)
    else:
        np.savez(path, x=x, y=np.arange(40) % 7)
    train, test, dataset = held_out(path, test_fraction=0.25, seed=3)
    assert len(test) == 10 and len(train) == 30 and dataset.test_fraction == 0.25
    assert held_out(path)[2].test_fraction == data.arrays.DEFAULT_TEST_FRACTION == 0.1
    assert sorted(np.concatenate([train, test])) == list(range(40))  # each item in exactly one split
    assert list(train) == sorted(train) and list(test) == sorted(test)  # file order kept
    again_train, again_test, _ = held_out(path, test_fraction=0.25, seed=3)
    np.testing.assert_array_equal(again_test, test)
    other_train, other_test, _ = held_out(path, test_fraction=0.25, seed=4)
    assert list(other_test) != list(test)
    if suffix == ".npz":  # the labels go with their items
        np.testing.assert_array_equal(dataset.train_y, train % 7)
        np.testing.assert_array_equal(dataset.test_y, test % 7)
    _, default_test, _ = held_out(path)
    assert len(default_test) == round(data.arrays.DEFAULT_TEST_FRACTION * 40)


def test_the_dataset_can_be_binarized_in_place(tmp_path):
    path = tmp_path / "mine.npz"
    np.savez(path, x=np.full((20, 2, 2), 0.5, np.float32))
    dataset = data.load_array_dataset(path)
    data.binarize_dataset(dataset, "static", seed=0)
    assert set(np.unique(dataset.train_x)) == {0.0, 1.0} and set(np.unique(dataset.test_x)) <= {0.0, 1.0}


GOOD_X = images(5)
BAD_FIELDS = {
    "no-x": ({"images": GOOD_X}, "has the unknown field\\(s\\) images"),
    "x-missing": ({"y": np.arange(5)}, "has no field 'x' \\(it has y\\)"),
    "x-1d": ({"x": np.zeros(5, np.uint8)}, "field 'x': has shape \\(5,\\); store images as \\(N, H, W\\)"),
    "x-4d": ({"x": np.zeros((5, 1, 2, 2), np.uint8)}, "field 'x': has shape \\(5, 1, 2, 2\\)"),
    "x-empty": ({"x": np.zeros((0, 4, 3), np.uint8)}, "field 'x': holds no items"),
    "x-int64": ({"x": GOOD_X.astype(np.int64)}, "field 'x': holds int64 pixels; store them as uint8"),
    "x-bool": ({"x": GOOD_X > 9}, "field 'x': holds bool pixels"),
    "x-range": ({"x": np.full((5, 3), 1.5)}, "field 'x': holds float pixels outside \\[0, 1\\] \\(from 1.5"),
    "x-inf": ({"x": np.full((5, 3), np.inf)}, "field 'x': holds non-finite pixels"),
    "x_test-nan": ({"x": GOOD_X, "x_test": np.full((2, 4, 3), np.nan)}, "field 'x_test': holds non-finite"),
    "x_test-size": ({"x": GOOD_X, "x_test": images(2, rows=3)}, "field 'x_test': holds items of shape \\(3, 3\\)"),
    "y-length": ({"x": GOOD_X, "y": np.arange(4)}, "field 'y': has shape \\(4,\\); it needs one label per item"),
    "y-float": ({"x": GOOD_X, "y": np.zeros(5)}, "field 'y': holds float64 labels; labels must be integers"),
    "y-negative": ({"x": GOOD_X, "y": np.array([0, 1, -2, 0, 1])}, "field 'y': holds negative labels"),
    "y-and-labels": ({"x": GOOD_X, "y": np.arange(5), "labels": np.arange(5)}, "has both fields 'y' and 'labels'"),
    "y_test-alone": ({"x": GOOD_X, "x_test": GOOD_X, "y_test": np.arange(5)}, "has y_test but not y"),
    "y_test-without-x_test": ({"x": GOOD_X, "y_test": np.arange(5)}, "field 'y_test': test labels without"),
    "y_test-length": ({"x": GOOD_X, "y": np.arange(5), "x_test": GOOD_X[:2], "y_test": np.arange(5)},
                      "field 'y_test': has shape \\(5,\\); it needs one label per item, shape \\(2,\\)"),
    "object-field": ({"x": GOOD_X, "y": np.array([0, "a", None, 1, 2], dtype=object)}, "field 'y': cannot be read"),
}


@pytest.mark.parametrize("case", BAD_FIELDS)
def test_each_problem_is_one_line_naming_the_file_and_the_field(tmp_path, case):
    fields, complaint = BAD_FIELDS[case]
    path = tmp_path / "mine.npz"
    np.savez(path, **fields)
    with pytest.raises(DataError, match=complaint) as raised:
        data.load_array_dataset(path)
    message = str(raised.value)
    assert message.startswith(str(path)) and "\n" not in message


@pytest.mark.parametrize("content, complaint", [
    (None, "cannot be read"),
    (b"not an array file at all", "is not a readable .npz or .npy file"),
    (b"PK\x03\x04 a truncated zip", "is not a readable .npz or .npy file"),
], ids=["missing", "garbage", "broken-zip"])
def test_an_unreadable_file_is_one_line(tmp_path, content, complaint):
    path = tmp_path / "mine.npz"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError, match=complaint) as raised:
        data.load_array_dataset(path)
    assert str(raised.value).startswith(str(path)) and "\n" not in str(raised.value)


def test_a_pickled_npy_is_refused_unread(tmp_path):
    path = tmp_path / "objects.npy"
    np.save(path, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="objects.npy: is not a readable .npz or .npy file .*pickle"):
        data.load_array_dataset(path)


@pytest.mark.parametrize("fraction", [0.0, 1.0, 0.05, -0.5])
def test_a_test_fraction_must_leave_items_in_both_splits(tmp_path, fraction):
    path = tmp_path / "mine.npy"
    np.save(path, GOOD_X)
    with pytest.raises(DataError, match=f"mine.npy: a test fraction of {fraction:g} of its 5 items"):
        data.load_array_dataset(path, test_fraction=fraction)


def test_a_file_with_its_own_test_set_takes_no_test_fraction(tmp_path):
    path = tmp_path / "mine.npz"
    np.savez(path, x=GOOD_X, x_test=GOOD_X[:2])
    with pytest.raises(DataError, match="holds its own test set \\(field 'x_test'\\)"):
        data.load_array_dataset(path, test_fraction=0.2)
    assert data.load_array_dataset(path).test_fraction is None
