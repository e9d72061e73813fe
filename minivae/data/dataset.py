"""The ``Dataset`` every loader returns (IDX folders, Frey Face, your own arrays), and the checks of
pixels and labels they share, so that each source is held to the same rules."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from minivae.errors import DataError


@dataclass(frozen=True, eq=False)
class Dataset:
    """A dataset ready for training.

    ``train_x`` and ``test_x`` are float32 arrays of shape (N, H*W) with values in [0, 1], each row
    one image flattened in C order from ``image_shape`` (H, W) (for rows that are not images,
    ``image_shape`` is (1, D)). ``train_y`` / ``test_y`` are int64 labels of shape (N,), or None
    for a dataset without labels (frey). ``source`` is the folder or file the data were read from;
    ``likelihood_hint`` is ``"bernoulli"`` or ``"gaussian"``; ``class_names`` names the labels 0,
    1, ... (None when unknown). ``test_fraction`` is the share of a file's items held out as the
    test set (your own arrays without ``x_test``), else None.
    """

    name: str
    train_x: np.ndarray
    train_y: np.ndarray | None
    test_x: np.ndarray
    test_y: np.ndarray | None
    image_shape: tuple[int, int]
    source: str
    likelihood_hint: str
    class_names: tuple[str, ...] | None = None
    test_fraction: float | None = None


def pixels_in_unit_range(pixels, source):
    """float32 pixels in [0, 1]: uint8 divided by 255, floats checked to be finite and in [0, 1].

    ``source`` names the pixels (a file, or a file and a field) in the one-line ``DataError``.
    """
    if pixels.dtype == np.uint8:
        return pixels.astype(np.float32) / np.float32(255)
    if pixels.dtype.kind == "f":
        if not np.all(np.isfinite(pixels)):
            raise DataError(f"{source}: holds non-finite pixels (NaN or infinity); replace them with "
                            f"values in [0, 1]")
        if not np.all((pixels >= 0) & (pixels <= 1)):
            raise DataError(f"{source}: holds float pixels outside [0, 1] (from {pixels.min():g} to "
                            f"{pixels.max():g}); scale them to [0, 1]")
        return pixels.astype(np.float32)
    raise DataError(f"{source}: holds {pixels.dtype} pixels; store them as uint8 (0..255) or as "
                    f"float32 in [0, 1]")


def labels_checked(labels, source):
    """Integer ``labels`` as int64, or a ``DataError`` naming ``source``."""
    if labels.dtype.kind not in "iu":
        raise DataError(f"{source}: holds {labels.dtype} labels; labels must be integers")
    return labels.astype(np.int64)


def names_fitting(class_names, *labels):
    """``class_names`` when every label indexes it (files in a --data-dir may hold other labels), else None."""
    if class_names is None or any(split.min() < 0 or split.max() >= len(class_names) for split in labels):
        return None
    return class_names
