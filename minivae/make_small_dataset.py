"""Rebuild the packaged dataset ``fashion-mnist-small`` from the full Fashion-MNIST IDX files.

    python -m minivae.make_small_dataset SOURCE_DIR OUT_DIR

``SOURCE_DIR`` holds the four MNIST-named Fashion-MNIST files (raw or ``.gz``; on Debian,
``apt-get install dataset-fashion-mnist`` puts them in ``/usr/share/datasets/fashion-mnist``).
The subset is stratified and needs no random numbers: from each split it keeps the first
``per_class`` images of every class in the order the file holds them (the files are already
shuffled), and writes them in that same order. With 1,000 per class from the training file and
200 per class from the test file this gives 10,000 training and 2,000 test images, balanced over the
ten classes. The IDX bytes it writes are the same on every machine (the registry checks their SHA-256
after gunzip); the ``.gz`` bytes are the same wherever zlib compresses alike (``mtime`` is zero).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from minivae.data.idx import read_idx, write_idx
from minivae.data.lookup import find_file
from minivae.data.registry import IDX_FILES
from minivae.errors import DataError

TRAIN_PER_CLASS = 1000
TEST_PER_CLASS = 200


def first_per_class(labels, per_class):
    """Indices, in increasing order, of the first ``per_class`` items of every class in ``labels``.

    Raises ``DataError`` when a class has fewer than ``per_class`` items.
    """
    labels = np.asarray(labels)
    chosen = []
    for label in np.unique(labels):
        where = np.flatnonzero(labels == label)
        if len(where) < per_class:
            raise DataError(f"class {label} has {len(where)} items, fewer than the {per_class} per class "
                            f"the subset needs; pass a smaller count or the full files")
        chosen.append(where[:per_class])
    return np.sort(np.concatenate(chosen))


def build_subset(source_dir, out_dir, train_per_class=TRAIN_PER_CLASS, test_per_class=TEST_PER_CLASS):
    """Write the stratified subset of the IDX dataset in ``source_dir`` into ``out_dir`` as ``.gz`` files.

    Returns the number of (training, test) images written.
    """
    os.makedirs(out_dir, exist_ok=True)
    counts = []
    splits = ((IDX_FILES[0], IDX_FILES[1], train_per_class), (IDX_FILES[2], IDX_FILES[3], test_per_class))
    for images_name, labels_name, per_class in splits:
        images = read_idx(_source_file(source_dir, images_name))
        labels = read_idx(_source_file(source_dir, labels_name))
        if len(images) != len(labels):
            raise DataError(f"{source_dir}: {images_name} has {len(images)} images but {labels_name} has "
                            f"{len(labels)} labels; use the files of one dataset")
        keep = first_per_class(labels, per_class)
        write_idx(os.path.join(out_dir, images_name + ".gz"), images[keep])
        write_idx(os.path.join(out_dir, labels_name + ".gz"), labels[keep])
        counts.append(len(keep))
    return tuple(counts)


def _source_file(folder, name):
    """The path of ``name`` or ``name.gz`` in ``folder``, or a ``DataError`` naming both."""
    path = find_file(folder, name)
    if path is None:
        raise DataError(f"{folder}: holds neither {name} nor {name}.gz; pass the folder of the full "
                        f"Fashion-MNIST files (apt-get install dataset-fashion-mnist)")
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m minivae.make_small_dataset", description=__doc__.split("\n")[0])
    parser.add_argument("source_dir", help="folder of the full Fashion-MNIST IDX files")
    parser.add_argument("out_dir", help="folder to write the subset into")
    parser.add_argument("--train-per-class", type=int, default=TRAIN_PER_CLASS)
    parser.add_argument("--test-per-class", type=int, default=TEST_PER_CLASS)
    args = parser.parse_args(argv)
    try:
        train, test = build_subset(args.source_dir, args.out_dir, args.train_per_class, args.test_per_class)
    except DataError as error:
        print(f"make_small_dataset: {error}", file=sys.stderr)
        return 1
    print(f"wrote {train} training and {test} test images into {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
