"""The registry of datasets: their files, mirrors, published digests, image sizes and class names.

One dataset ships inside the package, so that training works on a machine with no network and no
copy: ``fashion-mnist-small``, 10,000 training and 2,000 test images of Fashion-MNIST (MIT licence,
Zalando SE), the first 1,000 (training) and 200 (test) images of each of its ten classes in file
order. ``python -m minivae.make_small_dataset`` rebuilds it from the full files; its files are
checked against the registry's SHA-256 digests every time they are loaded.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass

from minivae.errors import DataError

# MNIST's file names, shared by every MNIST-like dataset, in the order train images, train labels,
# test images, test labels.
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

# Datasets that ship with minivae live in PACKAGED_ROOT/<name> (minivae/datasets, beside this package).
PACKAGED_ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "datasets")

MNIST_CLASSES = tuple(str(digit) for digit in range(10))
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")

DAMAGED_FILE_FIX = "the file is damaged or not the published one: reinstall or download it again"


@dataclass(frozen=True)
class Checksum:
    """A published digest of one dataset file.

    ``algorithm`` is a ``hashlib`` name; ``of`` says which bytes it is a digest of: ``"download"``
    for the bytes exactly as the mirror serves them (the compressed ``.gz``), ``"decompressed"`` for
    the bytes after gunzip (robust to a mirror that recompresses the same data).
    """

    algorithm: str
    digest: str
    of: str

    def verify(self, data, content, source, fix=DAMAGED_FILE_FIX):
        """Raise ``DataError`` unless this digest matches ``data`` (as stored) or ``content``
        (decompressed), as ``of`` says; ``source`` names the file and ``fix`` ends the message."""
        digested = data if self.of == "download" else content
        actual = hashlib.new(self.algorithm, digested, usedforsecurity=False).hexdigest()
        if actual != self.digest:
            raise DataError(f"{source}: the {self.algorithm} of the {self.of} bytes is {actual}, "
                            f"expected {self.digest}; {fix}")


@dataclass(frozen=True)
class DatasetSpec:
    """What the registry knows about one dataset: its files, where to fetch them, how to check them.

    ``files`` are the names looked for locally (each may also be found with ``.gz`` appended);
    a mirror serves ``file + download_suffix``. ``checksums`` maps a name of ``files`` to its
    ``Checksum``; a file without one is checked for structure only. ``file_format`` is ``"idx"``
    (four MNIST-named IDX files) or ``"frey-mat"`` (one MATLAB file holding the matrix ``ff``).
    ``class_names`` names the labels 0, 1, ... (None for a dataset without labels). A ``packaged``
    dataset ships in ``PACKAGED_ROOT/<name>``, has no mirrors, and is verified on every load.
    """

    name: str
    files: tuple[str, ...]
    mirrors: tuple[str, ...]
    download_suffix: str
    checksums: Mapping[str, Checksum]
    file_format: str
    image_shape: tuple[int, int]
    train_count: int
    test_count: int
    likelihood_hint: str
    class_names: tuple[str, ...] | None = None
    packaged: bool = False


def _md5_of_download(digests):
    """Checksums of the four IDX ``.gz`` files as served, one MD5 per file, in ``IDX_FILES`` order."""
    return {name: Checksum("md5", digest, "download") for name, digest in zip(IDX_FILES, digests)}


def _sha256_of_decompressed(digests):
    """Checksums of the four IDX files after gunzip, one SHA-256 per file, in ``IDX_FILES`` order."""
    return {name: Checksum("sha256", digest, "decompressed") for name, digest in zip(IDX_FILES, digests)}


DATASETS = {
    "mnist": DatasetSpec(
        name="mnist",
        files=IDX_FILES,
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
        download_suffix=".gz",
        # The MD5s torchvision publishes (torchvision/datasets/mnist.py) for the .gz files, the
        # same bytes on all three mirrors.
        checksums=_md5_of_download((
            "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "d53e105ee54ea40749a09fcbcd1e9432",
            "9fb629c4189551a2d022fa330f9573f3",
            "ec29112dd5afa0611ce80d1b7f02629c",
        )),
        file_format="idx",
        image_shape=(28, 28),
        train_count=60000,
        test_count=10000,
        likelihood_hint="bernoulli",
        class_names=MNIST_CLASSES,
    ),
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        files=IDX_FILES,
        mirrors=(
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/",
        ),
        download_suffix=".gz",
        # Digests of the decompressed files: Debian's package recompresses the .gz files (other
        # bytes, other MD5s than the ones Zalando publishes) but holds the same data.
        checksums=_sha256_of_decompressed((
            "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        )),
        file_format="idx",
        image_shape=(28, 28),
        train_count=60000,
        test_count=10000,
        likelihood_hint="bernoulli",
        class_names=FASHION_MNIST_CLASSES,
    ),
    # The subset of Fashion-MNIST that ships with minivae (see the module docstring); digests of the
    # IDX bytes after gunzip, as written by `python -m minivae.make_small_dataset`.
    "fashion-mnist-small": DatasetSpec(
        name="fashion-mnist-small",
        files=IDX_FILES,
        mirrors=(),
        download_suffix=".gz",
        checksums=_sha256_of_decompressed((
            "d33512cfdc636a0d8972818e6659995be209a88891df7fa2109d7895922c8985",
            "620cb8e3b9348037c5ff9a07b02d773ab165330e072dfd19e0d21c59f8042dcf",
            "15a92dd1e9b16ea361928086e77df4dfa890c255c00b5a8c8162c1040ce8eef1",
            "234596aeb6eb48133ec99a62541f90bc0728c9559a681f1e0638037462458f2c",
        )),
        file_format="idx",
        image_shape=(28, 28),
        train_count=10000,
        test_count=2000,
        likelihood_hint="bernoulli",
        class_names=FASHION_MNIST_CLASSES,
        packaged=True,
    ),
    # Frey Face: 1965 video frames of 28x20 grey pixels, no labels. The last `test_count` frames are
    # the held-out test set. No checksum of frey_rawface.mat is published anywhere we could find,
    # so a download is checked for structure only (a uint8 matrix `ff` of 560 rows).
    "frey": DatasetSpec(
        name="frey",
        files=("frey_rawface.mat",),
        mirrors=("https://cs.nyu.edu/~roweis/data/",),
        download_suffix="",
        checksums={},
        file_format="frey-mat",
        image_shape=(28, 20),
        train_count=1765,
        test_count=200,
        likelihood_hint="gaussian",
    ),
}


def spec_named(name):
    """The registry entry ``name``, or a ``DataError`` listing the known names."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}, or pass "
                        f"--data-dir DIR with MNIST-named IDX files")
    return DATASETS[name]
