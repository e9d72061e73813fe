"""Data for the examples (a helper module, not an example): a subset of a real dataset as IDX files,
and small made-up datasets for the examples' ``--quick`` and ``--synthetic`` modes.

Every function writes into a folder that ``python -m minivae.train --data-dir`` (and
``minivae.evaluate``) can read: the four MNIST-named IDX files, or ``frey_rawface.mat``.
"""

import os

import numpy as np
import scipy.io

from minivae.data import IDX_FILES, write_idx

FREY_SHAPE = (28, 20)
FREY_FILE = "frey_rawface.mat"


def to_uint8(pixels):
    """Pixels in [0, 1] as uint8 0..255 (exactly the bytes they were read from, for IDX data)."""
    return np.rint(np.clip(pixels, 0, 1) * 255).astype(np.uint8)


def write_idx_dataset(folder, train_images, train_labels, test_images, test_labels):
    """Write the four MNIST-named IDX files (uint8 images (N, H, W), uint8 labels (N,)) into ``folder``."""
    os.makedirs(folder, exist_ok=True)
    for name, array in zip(IDX_FILES, (train_images, train_labels, test_images, test_labels)):
        write_idx(os.path.join(folder, name), array)
    return folder


def write_subset(dataset, folder, train_count, test_count):
    """The first ``train_count`` training and ``test_count`` test images of a loaded ``Dataset`` as IDX files."""
    def split(pixels, labels, count):
        images = to_uint8(pixels[:count]).reshape((-1,) + tuple(dataset.image_shape))
        labels = np.zeros(len(images), np.uint8) if labels is None else labels[:count].astype(np.uint8)
        return images, labels

    return write_idx_dataset(folder, *split(dataset.train_x, dataset.train_y, train_count),
                             *split(dataset.test_x, dataset.test_y, test_count))


def blob_images(count, shape=(16, 16), seed=0):
    """``count`` images of one soft round blob at a random place, and labels (the blob's quadrant, 0..3).

    The images vary in two numbers only (the blob's row and column), so a VAE with a 2-D latent space
    can learn them, and its manifold is a map of positions.
    """
    rng = np.random.default_rng(seed)
    rows, columns = shape
    centers = rng.uniform(0.2, 0.8, size=(count, 2)) * [rows, columns]
    r, c = np.mgrid[0:rows, 0:columns]
    distance2 = (r - centers[:, :1, None]) ** 2 + (c - centers[:, 1:, None]) ** 2
    images = np.exp(-distance2 / (2 * (0.12 * rows) ** 2))
    labels = 2 * (centers[:, 0] > rows / 2) + (centers[:, 1] > columns / 2)
    return to_uint8(images), labels.astype(np.uint8)


def write_blobs(folder, train_count=512, test_count=128, shape=(16, 16), seed=0):
    """A tiny MNIST-like dataset of blobs (``blob_images``) as IDX files in ``folder``."""
    return write_idx_dataset(folder, *blob_images(train_count, shape, seed),
                             *blob_images(test_count, shape, seed + 1))


def frey_like_faces(count, seed=0):
    """``count`` made-up 28x20 grey "faces" in [0, 1]: a bright oval head with two dark eyes and a dark
    mouth, turned left or right (the pose) and smiling more or less (the mouth's width): two smooth
    factors of variation, as in the Frey Face video, but nothing like real faces."""
    rng = np.random.default_rng(seed)
    r, c = np.mgrid[0:FREY_SHAPE[0], 0:FREY_SHAPE[1]].astype(float)
    pose = rng.uniform(-1, 1, size=(count, 1, 1))
    smile = rng.uniform(0, 1, size=(count, 1, 1))
    middle = 10 + 2 * pose
    head = (((r - 14) / 11) ** 2 + ((c - middle) / 7.5) ** 2 < 1) * 0.75
    eyes = sum(np.exp(-((r - 11) ** 2 + (c - middle - side) ** 2) / 2) for side in (-3.5, 3.5))
    mouth = (np.abs(r - 20) <= 0.5 + smile) * (np.abs(c - middle) < 2 + 3 * smile)
    noise = rng.normal(0, 0.03, size=(count,) + FREY_SHAPE)
    return np.clip(head + 0.2 - 0.5 * eyes - 0.4 * mouth + noise, 0, 1)


def write_frey_like(folder, count=1965, seed=0):
    """A Frey-like ``frey_rawface.mat`` in ``folder``: the uint8 matrix ``ff`` of shape (560, count), one
    image per column (row-major 28x20), as in the real file. Returns the folder."""
    os.makedirs(folder, exist_ok=True)
    images = to_uint8(frey_like_faces(count, seed))
    scipy.io.savemat(os.path.join(folder, FREY_FILE), {"ff": images.reshape(count, -1).T})
    return folder


def network_flags(architecture, hidden):
    """The training flags that choose the network: ``--hidden`` for the MLP, ``--architecture conv``
    (which has no hidden width) for the convolutional VAE."""
    return ["--architecture", "conv"] if architecture == "conv" else ["--hidden", str(hidden)]
