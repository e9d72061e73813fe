"""Binarising pixels in [0, 1] into Bernoulli draws, the ``--binarize`` setting of a run.

The modes: "none" keeps the pixels; "static" draws the whole dataset once, as in the statically
binarized MNIST benchmark; "dynamic" draws the training batches afresh on the device, in the
training loop (this module fixes only the test set, so that test losses stay comparable).
"""

from __future__ import annotations

import numpy as np

BINARIZE_MODES = ("none", "static", "dynamic")


def binarize_static(x, seed):
    """One fixed Bernoulli draw per pixel: 1 with probability ``x`` (in [0, 1]), in ``x``'s dtype.

    The same ``seed`` gives the same binary dataset, as in the statically binarized MNIST benchmark.
    """
    x = np.asarray(x)
    draws = np.random.default_rng(seed).random(x.shape, dtype=np.float32)
    return (draws < x).astype(x.dtype)


def binarize_dataset(dataset, mode, seed):
    """Apply ``--binarize`` in place: "static" draws the training set once (seed ``2*seed``);
    "static" and "dynamic" both fix the test set with one draw (seed ``2*seed + 1``), so test losses
    are comparable across epochs and with ``minivae.evaluate``; with "dynamic" the training batches
    are drawn afresh on the device by the training loop. "none" leaves the pixels as they are."""
    if mode == "none":
        return
    if mode == "static":
        dataset.train_x[...] = binarize_static(dataset.train_x, seed=seed * 2)
    dataset.test_x[...] = binarize_static(dataset.test_x, seed=seed * 2 + 1)
