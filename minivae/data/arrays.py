"""Your own arrays as a dataset: a ``.npz`` (or ``.npy``) file of images or rows, checked like IDX data.

A ``.npz`` file holds the fields
  ``x``        the training data: images (N, H, W) or rows (N, D), uint8 0..255 or floats in [0, 1];
  ``y``        (or ``labels``) optional integer labels 0, 1, ... of shape (N,);
  ``x_test``   optional test data of the same image or row size (then ``y_test`` goes with ``y``).
A ``.npy`` file holds ``x`` alone. Without ``x_test``, a ``test_fraction`` of the items (drawn with
``seed``, kept in file order within each split) is held out as the test set. Every problem raises a
one-line ``DataError`` naming the file, the field and the fix; nothing is unpickled.
"""

from __future__ import annotations

import os
import zipfile

import numpy as np

from minivae.errors import DataError

from .dataset import Dataset, labels_checked, pixels_in_unit_range

DEFAULT_TEST_FRACTION = 0.1
FIELDS = ("x", "y", "labels", "x_test", "y_test")


def load_array_dataset(path, test_fraction=None, seed=0, name=None, likelihood_hint="bernoulli"):
    """The ``Dataset`` of the arrays in ``path`` (see the module docstring).

    ``test_fraction`` (in (0, 1); None: ``DEFAULT_TEST_FRACTION``) is how much of ``x`` is held out
    when the file has no ``x_test`` (the Dataset's ``test_fraction`` says how much was); a file with
    ``x_test`` takes none. ``name`` defaults to the file's name. Images keep their (H, W) as
    ``image_shape``; rows of D values get (1, D).
    """
    path = os.fspath(path)
    fields = _read_fields(path)
    x = _data_field(path, fields, "x")
    image_shape = tuple(x.shape[1:]) if x.ndim == 3 else (1, x.shape[1])
    y = _labels_field(path, fields, len(x))
    x = pixels_in_unit_range(x.reshape(len(x), -1), f"{path}, field 'x'")
    if "x_test" in fields:
        if test_fraction is not None:
            raise DataError(f"{path}: holds its own test set (field 'x_test'); leave out the test fraction "
                            f"or remove x_test from the file")
        x_test = _data_field(path, fields, "x_test")
        if x_test.shape[1:] != fields["x"].shape[1:]:
            raise DataError(f"{path}, field 'x_test': holds items of shape {x_test.shape[1:]} but x holds "
                            f"{fields['x'].shape[1:]}; use test data of the training data's size")
        y_test = _test_labels(path, fields, y, len(x_test))
        x_test = pixels_in_unit_range(x_test.reshape(len(x_test), -1), f"{path}, field 'x_test'")
    else:
        if "y_test" in fields:
            raise DataError(f"{path}, field 'y_test': test labels without test data (x_test); add x_test "
                            f"or remove y_test")
        test_fraction = DEFAULT_TEST_FRACTION if test_fraction is None else float(test_fraction)
        x, y, x_test, y_test = _held_out(path, x, y, test_fraction, seed)
    return Dataset(name or os.path.basename(path), x, y, x_test, y_test, image_shape, path, likelihood_hint,
                   test_fraction=test_fraction)


def _read_fields(path):
    """The arrays of ``path``: every field of a ``.npz``, or ``{"x": array}`` for a ``.npy``."""
    try:
        loaded = np.load(path, allow_pickle=False)
    except OSError as error:
        raise DataError(f"{path}: cannot be read ({error.strerror or error}); check that the path names "
                        f"a readable .npz or .npy file") from error
    except (ValueError, EOFError, zipfile.BadZipFile) as error:
        raise DataError(f"{path}: is not a readable .npz or .npy file ({error}); save the arrays with "
                        f"numpy.savez or numpy.save") from error
    if isinstance(loaded, np.ndarray):
        return {"x": loaded}
    with loaded:
        unknown = sorted(set(loaded.files) - set(FIELDS))
        if unknown:
            raise DataError(f"{path}: has the unknown field(s) {', '.join(unknown)}; name the fields "
                            f"{', '.join(FIELDS)}")
        fields = {}
        for field in loaded.files:
            try:
                fields[field] = loaded[field]
            except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
                raise DataError(f"{path}, field {field!r}: cannot be read ({error}); save it again as a "
                                f"numeric array with numpy.savez") from error
    if "x" not in fields:
        raise DataError(f"{path}: has no field 'x' (it has {', '.join(fields) or 'none'}); store the "
                        f"training data as x, e.g. numpy.savez(path, x=images)")
    return fields


def _data_field(path, fields, field):
    """The images (N, H, W) or rows (N, D) of ``field``, checked for shape (not yet for values)."""
    array = fields[field]
    if array.ndim not in (2, 3):
        raise DataError(f"{path}, field {field!r}: has shape {array.shape}; store images as (N, H, W) "
                        f"or rows as (N, D)")
    if array.size == 0:
        raise DataError(f"{path}, field {field!r}: holds no items (shape {array.shape}); store at least "
                        f"one image or row")
    return array


def _labels_field(path, fields, count):
    """The training labels (field ``y`` or ``labels``), checked, or None."""
    given = [field for field in ("y", "labels") if field in fields]
    if len(given) == 2:
        raise DataError(f"{path}: has both fields 'y' and 'labels'; keep one of them")
    return _labels(path, given[0], fields[given[0]], count) if given else None


def _test_labels(path, fields, y, count):
    """The test labels (field ``y_test``), present exactly when training labels are."""
    if (y is None) != ("y_test" not in fields):
        train_field = "labels" if "labels" in fields else "y"
        missing, present = ("y_test", train_field) if y is not None else (train_field, "y_test")
        raise DataError(f"{path}: has {present} but not {missing}; label both splits or neither")
    return None if y is None else _labels(path, "y_test", fields["y_test"], count)


def _labels(path, field, labels, count):
    """``labels`` of ``field`` as int64 0, 1, ..., one per item of the split (``count`` of them)."""
    source = f"{path}, field {field!r}"
    if labels.ndim != 1 or len(labels) != count:
        raise DataError(f"{source}: has shape {labels.shape}; it needs one label per item, shape ({count},)")
    labels = labels_checked(labels, source)
    if labels.min() < 0:
        raise DataError(f"{source}: holds negative labels (down to {labels.min()}); number the classes "
                        f"0, 1, ...")
    return labels


def _held_out(path, x, y, fraction, seed):
    """(x, y, x_test, y_test): a ``fraction`` of the items, drawn with ``seed``, held out."""
    count = len(x)
    test_count = round(fraction * count)
    if not 0 < fraction < 1 or not 0 < test_count < count:
        raise DataError(f"{path}: a test fraction of {fraction:g} of its {count} items leaves "
                        f"{test_count} for testing and {count - test_count} for training; choose a "
                        f"fraction in (0, 1) that leaves at least one item in each, or add x_test")
    is_test = np.zeros(count, dtype=bool)
    is_test[np.random.default_rng(seed).permutation(count)[:test_count]] = True
    if y is None:
        return x[~is_test], None, x[is_test], None
    return x[~is_test], y[~is_test], x[is_test], y[is_test]
