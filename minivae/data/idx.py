"""IDX files (the format of MNIST and its relatives), raw or gzipped, and a folder of four of them.

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number of dimensions), then
one big-endian uint32 per dimension, then the items in C order as big-endian values of the type.
``read_idx`` accepts nothing else: every malformed file raises ``DataError`` naming it and the fix.
``load_idx_folder`` reads the four MNIST-named files of a dataset into a ``Dataset``.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib

import numpy as np

from minivae.errors import DataError
from minivae.fileio import atomic_write

from .dataset import Dataset, labels_checked, names_fitting, pixels_in_unit_range

GZIP_MAGIC = b"\x1f\x8b"

# IDX type codes (third byte of the magic number) and the big-endian dtypes they name.
IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
IDX_MAX_DIMS = 4


def read_idx(path, checksum=None):
    """Read an IDX file, raw or gzipped (told by its magic bytes), into a native-endian array.

    Raises ``DataError`` for anything that is not a complete, non-empty IDX file of 1 to 4 dims,
    and, with a ``Checksum`` (minivae.data.registry), for a file whose digest differs from it.
    """
    data = read_bytes(path)
    content = decompress(data, path)
    if checksum is not None:
        checksum.verify(data, content, path)
    return parse_idx(content, path)


def write_idx(path, array):
    """Write ``array`` as an IDX file, gzipped when ``path`` ends in ``.gz``, atomically."""
    array = np.asarray(array)
    code = _idx_type_code(array, path)
    if not 1 <= array.ndim <= IDX_MAX_DIMS or array.size == 0 or max(array.shape) >= 2 ** 32:
        raise DataError(f"{path}: cannot write an array of shape {array.shape} as IDX; it needs 1 to "
                        f"{IDX_MAX_DIMS} dimensions, each from 1 to 2**32 - 1")
    header = bytes((0, 0, code, array.ndim)) + struct.pack(f">{array.ndim}I", *array.shape)
    content = header + array.astype(IDX_DTYPES[code], copy=False).tobytes()
    if os.fspath(path).endswith(".gz"):
        content = gzip.compress(content, compresslevel=6, mtime=0)
    try:
        with atomic_write(path) as handle:
            handle.write(content)
    except OSError as error:
        raise DataError(f"{path}: cannot be written ({error.strerror or error}); check that its "
                        f"folder exists and is writable") from error


def _idx_type_code(array, path):
    """The IDX type code of ``array``'s dtype, whatever its byte order."""
    for code, dtype in IDX_DTYPES.items():
        if array.dtype.newbyteorder("=") == dtype.newbyteorder("="):
            return code
    supported = ", ".join(str(dtype.newbyteorder("=")) for dtype in IDX_DTYPES.values())
    raise DataError(f"{path}: IDX cannot store dtype {array.dtype}; convert the array to one of {supported}")


def read_bytes(path):
    """The whole content of ``path``, with an unreadable file reported as a ``DataError``."""
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as error:
        raise DataError(f"{path}: cannot be read ({error.strerror or error}); check that the path "
                        f"names a readable file") from error


def decompress(data, source):
    """``data`` gunzipped when it starts with gzip's magic bytes, else unchanged."""
    if not data.startswith(GZIP_MAGIC):
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(f"{source}: is a corrupt or incomplete gzip file ({error}); delete it and "
                        f"download or copy it again") from error


def parse_idx(data, source):
    """The array held by the IDX bytes ``data``; ``source`` names them in error messages."""
    if len(data) == 0:
        raise DataError(f"{source}: is empty; it should be an IDX file: copy or download it again")
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataError(f"{source}: is not an IDX file (its first two bytes must be zero); "
                        f"check that the path names an IDX file such as train-images-idx3-ubyte")
    code, ndim = data[2], data[3]
    if code not in IDX_DTYPES:
        known = ", ".join(f"0x{known:02X}" for known in IDX_DTYPES)
        raise DataError(f"{source}: has the unknown IDX type code 0x{code:02X} (known: {known}); "
                        f"the file is corrupt or not an IDX file")
    if not 1 <= ndim <= IDX_MAX_DIMS:
        raise DataError(f"{source}: declares {ndim} dimensions; an IDX dataset file has 1 to "
                        f"{IDX_MAX_DIMS}: the file is corrupt or not an IDX file")
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise DataError(f"{source}: is truncated inside its header ({len(data)} of {header_size} "
                        f"bytes); copy or download it again")
    shape = struct.unpack(f">{ndim}I", data[4:header_size])
    if math.prod(shape) == 0:
        raise DataError(f"{source}: holds no items (shape {shape}); use a file with at least one item")
    dtype = IDX_DTYPES[code]
    expected = math.prod(shape) * dtype.itemsize
    found = len(data) - header_size
    if found < expected:
        raise DataError(f"{source}: is truncated: expected {expected} bytes of data, found {found}; "
                        f"copy or download it again")
    if found > expected:
        raise DataError(f"{source}: has {found - expected} extra bytes after the data of shape "
                        f"{shape}; the file is corrupt: copy or download it again")
    array = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=header_size)
    return array.reshape(shape).astype(dtype.newbyteorder("="))


# ----------------------------------------------------------------------- a folder of four IDX files

def load_idx_folder(spec, folder, paths):
    """Load the four MNIST-named IDX files ``paths`` (train images, train labels, test images, test
    labels; any image count and size) of ``spec``'s dataset, found in ``folder``, into a ``Dataset``.

    A packaged dataset's files are checked against the registry's digests on every load.
    """
    train_images, train_labels, test_images, test_labels = paths
    checksums = [spec.checksums.get(name) if spec.packaged else None for name in spec.files]
    train_x, train_y, train_shape = _read_split(train_images, train_labels, checksums[:2])
    test_x, test_y, test_shape = _read_split(test_images, test_labels, checksums[2:])
    if train_shape != test_shape:
        raise DataError(f"{test_images}: holds images of {test_shape[0]}x{test_shape[1]} pixels but "
                        f"{train_images} holds {train_shape[0]}x{train_shape[1]}; use a test set of "
                        f"the training set's image size")
    return Dataset(spec.name, train_x, train_y, test_x, test_y, train_shape, folder, spec.likelihood_hint,
                   names_fitting(spec.class_names, train_y, test_y))


def _read_split(images_path, labels_path, checksums=(None, None)):
    """Flattened pixels in [0, 1], int64 labels and the image shape of one images/labels pair
    (each file checked against its ``Checksum`` when one is given)."""
    images_checksum, labels_checksum = checksums
    images = read_idx(images_path, images_checksum)
    if images.ndim != 3:
        raise DataError(f"{images_path}: holds an array of shape {images.shape}; an images file must "
                        f"be 3-D (images, rows, columns): check that it is an images file")
    labels = read_idx(labels_path, labels_checksum)
    if labels.ndim != 1:
        raise DataError(f"{labels_path}: holds an array of shape {labels.shape}; a labels file must "
                        f"be 1-D (one label per image): check that it is a labels file")
    labels = labels_checked(labels, str(labels_path))
    if len(labels) != len(images):
        raise DataError(f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} "
                        f"labels; use the labels file that belongs to these images")
    pixels = pixels_in_unit_range(images.reshape(len(images), -1), images_path)
    return pixels, labels, images.shape[1:]
