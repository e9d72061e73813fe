"""Frey Face: 1965 grey video frames of 28x20 pixels in one MATLAB file, ``frey_rawface.mat``.

The file's matrix ``ff`` (uint8, 560 rows) holds one image per column; the last ``test_count``
frames of the registry entry are the test set, and there are no labels.
"""

from __future__ import annotations

import io
import math

import numpy as np

from minivae.errors import DataError

from .dataset import Dataset
from .idx import decompress, read_bytes


def load_frey(spec, folder, path):
    """Load Frey Face: pixels scaled to [0, 1], the last ``spec.test_count`` frames as test, no labels."""
    frames = parse_frey_mat(decompress(read_bytes(path), path), path, spec.image_shape)
    if len(frames) <= spec.test_count:
        raise DataError(f"{path}: holds {len(frames)} images; Frey Face needs more than "
                        f"{spec.test_count} (its last {spec.test_count} are the test set)")
    pixels = frames.astype(np.float32) / np.float32(255)
    split = len(pixels) - spec.test_count
    return Dataset(spec.name, pixels[:split], None, pixels[split:], None, spec.image_shape, folder,
                   spec.likelihood_hint)


def parse_frey_mat(data, source, image_shape):
    """The images of a Frey Face .mat file as uint8 rows of H*W pixels (row-major (H, W) images).

    The file's matrix ``ff`` has one image per column; ``ff.T.reshape(-1, H, W)`` are the images.
    """
    import scipy.io  # only Frey Face needs it: other commands skip its import (~0.05-0.1 s here)

    try:
        variables = scipy.io.loadmat(io.BytesIO(data))
    except Exception as error:  # scipy raises many unrelated types on a corrupt file
        raise DataError(f"{source}: is not a readable MATLAB .mat file ({type(error).__name__}: "
                        f"{error}); download frey_rawface.mat again") from error
    if "ff" not in variables:
        raise DataError(f"{source}: has no variable 'ff'; Frey Face's frey_rawface.mat keeps its "
                        f"images there: check the file")
    ff = variables["ff"]
    pixels_per_image = math.prod(image_shape)
    if ff.ndim != 2 or ff.shape[0] != pixels_per_image or ff.shape[1] == 0 or ff.dtype != np.uint8:
        raise DataError(f"{source}: 'ff' is {ff.dtype} of shape {ff.shape}; Frey Face needs uint8 of "
                        f"shape ({pixels_per_image}, images): check the file")
    return np.ascontiguousarray(ff.T)
