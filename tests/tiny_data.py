"""Tiny MNIST-like datasets for the training tests (a helper module, not a test file).

``write_dataset`` writes the four MNIST-named IDX files of a small, learnable dataset: every image is
one of a few fixed binary patterns (bars and blocks) with a few pixels flipped, so that a small VAE's
loss goes down within a couple of epochs. The files are written with ``minivae.data.write_idx``;
``idx_bytes`` encodes an array by hand, for writing deliberately broken files.
"""

import struct

import numpy as np

from minivae.data import IDX_FILES, write_idx

TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS = IDX_FILES
PATTERNS = 4


def patterns(rows, columns):
    """``PATTERNS`` binary (rows, columns) images: top half, left half, a diagonal band, a frame."""
    r, c = np.mgrid[0:rows, 0:columns]
    return np.stack([
        r < rows // 2,
        c < columns // 2,
        np.abs(r * columns - c * rows) <= max(rows, columns),
        (r == 0) | (c == 0) | (r == rows - 1) | (c == columns - 1),
    ]).astype(np.uint8)


def images_and_labels(count, rows=8, columns=8, seed=0, flip=0.05):
    """``count`` uint8 images of the patterns, and their uint8 labels (the pattern's index).

    A fraction ``flip`` of the pixels is flipped; pattern pixels are light grey to white (180..255),
    the others black to dark grey (0..60), so that ``--binarize`` changes the data.
    """
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, PATTERNS, size=count).astype(np.uint8)
    on = patterns(rows, columns)[labels].astype(bool)
    on ^= rng.random(on.shape) < flip
    images = np.where(on, rng.integers(180, 256, size=on.shape), rng.integers(0, 61, size=on.shape))
    return images.astype(np.uint8), labels


def write_dataset(folder, train_count=128, test_count=32, rows=8, columns=8, seed=0, gz=False):
    """Write the four IDX files of a tiny dataset into ``folder`` (a pathlib.Path, created); returns it."""
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    train_x, train_y = images_and_labels(train_count, rows, columns, seed=seed)
    test_x, test_y = images_and_labels(test_count, rows, columns, seed=seed + 1)
    for name, array in [(TRAIN_IMAGES, train_x), (TRAIN_LABELS, train_y), (TEST_IMAGES, test_x),
                        (TEST_LABELS, test_y)]:
        write_idx(folder / (name + suffix), array)
    return folder


def idx_bytes(array):
    """The IDX encoding of a uint8 ``array``, written by hand (for files the tests then break)."""
    array = np.asarray(array, dtype=np.uint8)
    return bytes((0, 0, 0x08, array.ndim)) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def cli_args(data_dir, out, *extra, epochs=2, batch_size=16, hidden=(16,), latent_dim=3):
    """The argument list of a small, fast ``python -m minivae.train`` run on ``data_dir`` into ``out``.

    ``--hidden`` appends, so it is given here once per width of ``hidden``, never in ``extra``.
    """
    argv = ["--data-dir", str(data_dir), "--out", str(out), "--epochs", str(epochs),
            "--batch-size", str(batch_size), "--latent-dim", str(latent_dim)]
    for width in hidden:
        argv += ["--hidden", str(width)]
    return argv + [str(flag) for flag in extra]


def read_metrics(out):
    """metrics.csv of the run in ``out``: (header, rows), each row a dict of column -> string."""
    with open(out / "metrics.csv", newline="") as handle:
        lines = handle.read().splitlines()
    header = lines[0].split(",")
    return header, [dict(zip(header, line.split(","))) for line in lines[1:]]


def command_stderr_lines(stderr):
    """The lines a ``python -m minivae.train`` subprocess wrote on stderr, less matplotlib's notes about
    its font cache (written once per machine, or on every start where its cache folder is read-only)."""
    return [line for line in stderr.splitlines() if not line.startswith("Matplotlib ")]
