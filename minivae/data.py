"""Datasets on the host: IDX files, the registry, finding / downloading / verifying, binarization.

A dataset is looked for, in order, in the folder given with ``--data-dir`` (and only there when one
is given), in ``$MINIVAE_DATA/<name>`` and ``$MINIVAE_DATA``, in the user cache
(``$XDG_CACHE_HOME/minivae/<name>``, by default ``~/.cache/minivae/<name>``) and in
``<root>/<name>`` for each system root (``/usr/share/datasets``, where Debian's packages put their
copies; ``$MINIVAE_SYSTEM_DATA`` replaces that list: roots separated by ``os.pathsep``, empty for
none). When no folder holds every file, the files are downloaded into the user cache from the
registry's mirrors, each one checked (checksum and structure) before it is renamed into place, so
that nothing unverified is ever cached. ``$MINIVAE_NO_DOWNLOAD=1`` forbids downloads, as
``--no-download`` does.

One dataset ships inside the package, so that training works on a machine with no network and no
copy: ``fashion-mnist-small``, 10,000 training and 2,000 test images of Fashion-MNIST (MIT licence,
Zalando SE), the first 1,000 (training) and 200 (test) images of each of its ten classes in file
order. ``python -m minivae.make_small_dataset`` rebuilds it from the full files; its files are
checked against the registry's SHA-256 digests every time they are loaded.

Every failure raises ``DataError`` whose message names the file, what is wrong and the fix. This
module is NumPy only: dynamic binarization and batching happen on the device, in the training loop.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import math
import os
import struct
import urllib.error
import urllib.request
import zlib
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import scipy.io

from minivae.errors import DataError
from minivae.fileio import atomic_write

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

# MNIST's file names, shared by every MNIST-like dataset, in the order train images, train labels,
# test images, test labels.
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

DOWNLOAD_CHUNK = 1 << 20

# Datasets that ship with minivae live in PACKAGED_ROOT/<name>; the default system roots hold copies
# installed by the operating system (Debian's dataset-* packages).
PACKAGED_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "datasets")
DEFAULT_SYSTEM_ROOTS = ("/usr/share/datasets",)
SYSTEM_ROOTS_VARIABLE = "MINIVAE_SYSTEM_DATA"
NO_DOWNLOAD_VARIABLE = "MINIVAE_NO_DOWNLOAD"

MNIST_CLASSES = tuple(str(digit) for digit in range(10))
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


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

    def summary(self):
        """One line for a help text: the name, the split sizes and the image size."""
        height, width = self.image_shape
        return (f"{self.name}: {self.train_count} training and {self.test_count} test images of "
                f"{height}x{width} pixels ({self.likelihood_hint} decoder)")


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


WAYS_OUT = (
    "Ways out: give this machine network access so the download can run; or pass --data-dir DIR, "
    "a folder holding {files} (each raw or .gz); or install Debian's package dataset-fashion-mnist "
    "(apt-get install dataset-fashion-mnist) and run with --dataset fashion-mnist; or choose another "
    "--dataset ({names})."
)


class DatasetUnavailable(DataError):
    """No folder holds the dataset and it could not be downloaded; ``tried`` lists every attempt.

    The message is ``headline``, then each attempt on its own line, then the ways out.
    """

    def __init__(self, headline, files, tried):
        self.tried = list(tried)
        attempts = "\n".join("  - " + line for line in self.tried)
        ways_out = WAYS_OUT.format(files=", ".join(files), names=", ".join(DATASETS))
        super().__init__(f"{headline}. Tried:\n{attempts}\n{ways_out}")


@dataclass(frozen=True, eq=False)
class Dataset:
    """A dataset ready for training.

    ``train_x`` and ``test_x`` are float32 arrays of shape (N, H*W) with values in [0, 1], each row
    one image flattened in C order from ``image_shape`` (H, W). ``train_y`` / ``test_y`` are int64
    labels of shape (N,), or None for a dataset without labels (frey). ``source`` is the folder the
    files were read from; ``likelihood_hint`` is ``"bernoulli"`` or ``"gaussian"``; ``class_names``
    names the labels 0, 1, ... (None when unknown).
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


# ----------------------------------------------------------------------------------------- IDX files

def read_idx(path, checksum=None):
    """Read an IDX file, raw or gzipped (told by its magic bytes), into a native-endian array.

    Raises ``DataError`` for anything that is not a complete, non-empty IDX file of 1 to 4 dims,
    and, with a ``Checksum``, for a file whose digest differs from it.
    """
    data = _read_bytes(path)
    content = _decompress(data, path)
    if checksum is not None:
        _check_digest(data, content, checksum, path)
    return _parse_idx(content, path)


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


def _read_bytes(path):
    """The whole content of ``path``, with an unreadable file reported as a ``DataError``."""
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as error:
        raise DataError(f"{path}: cannot be read ({error.strerror or error}); check that the path "
                        f"names a readable file") from error


def _decompress(data, source):
    """``data`` gunzipped when it starts with gzip's magic bytes, else unchanged."""
    if not data.startswith(GZIP_MAGIC):
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(f"{source}: is a corrupt or incomplete gzip file ({error}); delete it and "
                        f"download or copy it again") from error


def _parse_idx(data, source):
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


# ------------------------------------------------------------------------------ loading a dataset

def load_dataset(name, data_dir=None, download=True, log=print, system_dirs=None, timeout=5.0):
    """Find the dataset ``name`` (a key of ``DATASETS``), downloading it if allowed, and load it.

    With ``data_dir`` the files must be there (a user who names a folder means it). Otherwise the
    folders of the module docstring are searched in order (``system_dirs`` maps a dataset name to
    its system folders; default ``system_folders()``), then the mirrors are tried into the user
    cache, each network operation giving up after ``timeout`` seconds, unless ``download`` is False
    or ``$MINIVAE_NO_DOWNLOAD`` forbids it. ``log`` receives one line per download step. Raises
    ``DatasetUnavailable`` listing every attempt when all of them fail.
    """
    spec = _spec_named(name)
    if data_dir is not None:
        return _load_from_data_dir(spec, os.fspath(data_dir))
    tried = []
    for folder in _search_folders(spec, system_folders() if system_dirs is None else system_dirs):
        missing = _missing_files(spec, folder)
        if not missing:
            return _load_folder(spec, folder)
        tried.append(f"{folder}: " + _describe_missing(folder, missing))
    if spec.packaged:
        tried.append(f"download of {spec.name}: it has no mirror, it ships with minivae; reinstall minivae "
                     f"(pip install --force-reinstall minivae, or pip install -e . in a checkout)")
        raise DatasetUnavailable(_unavailable_headline(spec), spec.files, tried)
    if not download or downloads_forbidden():
        reason = "--no-download" if not download else f"${NO_DOWNLOAD_VARIABLE} is set"
        tried.append(f"download of {spec.name}: not attempted ({reason})")
        raise DatasetUnavailable(_unavailable_headline(spec), spec.files, tried)
    cache = cache_folder(name)
    failures = _download_missing(spec, cache, log, timeout)
    if failures:
        raise DatasetUnavailable(_unavailable_headline(spec), spec.files, tried + failures)
    return _load_folder(spec, cache)


def resolve_default_dataset(data_dir=None, download=True, log=print, system_dirs=None, timeout=5.0):
    """The dataset of a run with no ``--dataset``, and one ``log`` line saying which and why.

    In order: MNIST, found or downloaded as by ``load_dataset``; else a Fashion-MNIST copy already on
    the machine (never downloaded); else ``fashion-mnist-small``, which ships with minivae. With
    ``data_dir``, the files there are loaded as MNIST, whatever they hold, and nothing else is tried.
    """
    if data_dir is not None:
        return load_dataset("mnist", data_dir=data_dir, log=log)
    try:
        mnist = load_dataset("mnist", download=download, log=log, system_dirs=system_dirs, timeout=timeout)
        log(f"no --dataset given: training on MNIST from {mnist.source}")
        return mnist
    except DatasetUnavailable as missing:
        mnist_missing = missing
    tried_download = download and not downloads_forbidden()
    mnist_where = "MNIST is not on this machine" + (" and could not be downloaded" if tried_download
                                                   else " (downloads are off)")
    try:
        fashion = load_dataset("fashion-mnist", download=False, log=log, system_dirs=system_dirs)
        log(f"{mnist_where}: training on the Fashion-MNIST copy in {fashion.source} instead "
            f"(pass --dataset to choose)")
        return fashion
    except DatasetUnavailable as missing:
        fashion_missing = missing
    try:
        small = load_dataset("fashion-mnist-small", log=log)
    except DatasetUnavailable as small_missing:
        headline = ("no --dataset given: mnist is not on this machine and could not be found or downloaded, "
                    "no copy of fashion-mnist is on this machine, and the packaged fashion-mnist-small "
                    "is missing")
        tried = mnist_missing.tried + fashion_missing.tried + small_missing.tried
        raise DatasetUnavailable(headline, IDX_FILES, tried) from None
    spec = DATASETS["fashion-mnist-small"]
    log(f"{mnist_where}, and no Fashion-MNIST copy is on it: training on fashion-mnist-small, the "
        f"{spec.train_count:,}-image Fashion-MNIST subset that ships with minivae (pass --dataset to choose)")
    return small


def downloads_forbidden():
    """Whether ``$MINIVAE_NO_DOWNLOAD`` is set to something other than empty or ``0``."""
    return os.environ.get(NO_DOWNLOAD_VARIABLE, "") not in ("", "0")


def system_folders():
    """Each dataset's system folders: ``<root>/<name>`` for each root of ``$MINIVAE_SYSTEM_DATA``
    (separated by ``os.pathsep``; set and empty means none), or of ``DEFAULT_SYSTEM_ROOTS``."""
    variable = os.environ.get(SYSTEM_ROOTS_VARIABLE)
    roots = DEFAULT_SYSTEM_ROOTS if variable is None else [root for root in variable.split(os.pathsep) if root]
    return {name: tuple(os.path.join(root, name) for root in roots) for name in DATASETS}


def cache_folder(name):
    """The user cache folder of dataset ``name``: ``$XDG_CACHE_HOME/minivae/<name>`` or ``~/.cache/...``."""
    xdg_cache = os.environ.get("XDG_CACHE_HOME", "")
    base = xdg_cache if os.path.isabs(xdg_cache) else os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "minivae", name)


def _unavailable_headline(spec):
    """The first line of the error raised when ``spec``'s dataset can be neither found nor fetched."""
    return f"{spec.name}: the dataset is not on this machine and could not be downloaded"


def _spec_named(name):
    """The registry entry ``name``, or a ``DataError`` listing the known names."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}, or pass "
                        f"--data-dir DIR with MNIST-named IDX files")
    return DATASETS[name]


def _search_folders(spec, system_dirs):
    """The folders that may hold ``spec``'s dataset, most specific first (``data_dir`` excluded).

    A packaged dataset is only ever read from the package itself.
    """
    if spec.packaged:
        return [os.path.join(PACKAGED_ROOT, spec.name)]
    folders = []
    user_root = os.environ.get("MINIVAE_DATA")
    if user_root:
        folders += [os.path.join(user_root, spec.name), user_root]
    folders.append(cache_folder(spec.name))
    folders += list(system_dirs.get(spec.name, ()))
    return folders


def find_file(folder, name):
    """The path of ``name`` or ``name.gz`` in ``folder`` (the raw file first), or None."""
    for candidate in (name, name + ".gz"):
        path = os.path.join(folder, candidate)
        if os.path.isfile(path):
            return path
    return None


def _missing_files(spec, folder):
    """The names of ``spec.files`` found in ``folder`` neither raw nor gzipped."""
    return [name for name in spec.files if find_file(folder, name) is None]


def _describe_missing(folder, missing):
    """Why ``folder`` cannot be used, in a few words."""
    if not os.path.isdir(folder):
        return "no such folder"
    return "missing " + ", ".join(missing)


def _load_from_data_dir(spec, data_dir):
    """Load the files of ``spec`` from the user's ``data_dir``, which must hold all of them."""
    missing = _missing_files(spec, data_dir)
    if missing:
        raise DataError(f"{data_dir}: cannot load {spec.name} from this --data-dir folder "
                        f"({_describe_missing(data_dir, missing)}); put its files there "
                        f"({', '.join(spec.files)}, each raw or .gz) or leave out --data-dir to use "
                        f"the cache or a download")
    return _load_folder(spec, data_dir)


def _load_folder(spec, folder):
    """Load the dataset of ``spec`` from ``folder``, which holds every one of its files."""
    paths = [find_file(folder, name) for name in spec.files]
    if spec.file_format == "frey-mat":
        return _load_frey(spec, folder, paths[0])
    return _load_idx_dataset(spec, folder, paths)


def _load_idx_dataset(spec, folder, paths):
    """Load four MNIST-named IDX files (any image count and size) into a ``Dataset``."""
    train_images, train_labels, test_images, test_labels = paths
    checksums = [spec.checksums.get(name) if spec.packaged else None for name in spec.files]
    train_x, train_y, train_shape = _read_split(train_images, train_labels, checksums[:2])
    test_x, test_y, test_shape = _read_split(test_images, test_labels, checksums[2:])
    if train_shape != test_shape:
        raise DataError(f"{test_images}: holds images of {test_shape[0]}x{test_shape[1]} pixels but "
                        f"{train_images} holds {train_shape[0]}x{train_shape[1]}; use a test set of "
                        f"the training set's image size")
    return Dataset(spec.name, train_x, train_y, test_x, test_y, train_shape, folder, spec.likelihood_hint,
                   _names_fitting(spec.class_names, train_y, test_y))


def _names_fitting(class_names, *labels):
    """``class_names`` when every label indexes it (files in a --data-dir may hold other labels), else None."""
    if class_names is None or any(split.min() < 0 or split.max() >= len(class_names) for split in labels):
        return None
    return class_names


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
    if labels.dtype.kind not in "iu":
        raise DataError(f"{labels_path}: holds {labels.dtype} labels; labels must be integers")
    if len(labels) != len(images):
        raise DataError(f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} "
                        f"labels; use the labels file that belongs to these images")
    pixels = _pixels_in_unit_range(images.reshape(len(images), -1), images_path)
    return pixels, labels.astype(np.int64), images.shape[1:]


def _pixels_in_unit_range(pixels, path):
    """float32 pixels in [0, 1]: uint8 divided by 255, floats checked to lie in [0, 1] already."""
    if pixels.dtype == np.uint8:
        return pixels.astype(np.float32) / np.float32(255)
    if pixels.dtype.kind == "f":
        if not np.all((pixels >= 0) & (pixels <= 1)):
            raise DataError(f"{path}: holds float pixels outside [0, 1] (or NaN); scale them to [0, 1]")
        return pixels.astype(np.float32)
    raise DataError(f"{path}: holds {pixels.dtype} pixels; store them as uint8 (0..255) or as "
                    f"float32 in [0, 1]")


def _load_frey(spec, folder, path):
    """Load Frey Face: pixels scaled to [0, 1], the last ``spec.test_count`` frames as test, no labels."""
    frames = _parse_frey_mat(_decompress(_read_bytes(path), path), path, spec.image_shape)
    if len(frames) <= spec.test_count:
        raise DataError(f"{path}: holds {len(frames)} images; Frey Face needs more than "
                        f"{spec.test_count} (its last {spec.test_count} are the test set)")
    pixels = frames.astype(np.float32) / np.float32(255)
    split = len(pixels) - spec.test_count
    return Dataset(spec.name, pixels[:split], None, pixels[split:], None, spec.image_shape, folder,
                   spec.likelihood_hint)


def _parse_frey_mat(data, source, image_shape):
    """The images of a Frey Face .mat file as uint8 rows of H*W pixels (row-major (H, W) images).

    The file's matrix ``ff`` has one image per column; ``ff.T.reshape(-1, H, W)`` are the images.
    """
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


# ---------------------------------------------------------------------------------------- downloads

def _download_missing(spec, folder, log, timeout):
    """Download each file of ``spec`` that ``folder`` lacks; the list of failures, empty on success.

    Stops at the first file that no mirror can provide, so that a machine without a network gives
    up after one round of the mirrors.
    """
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as error:
        return [f"{folder}: cannot create the download folder ({error.strerror}); set XDG_CACHE_HOME "
                f"to a writable folder"]
    for name in spec.files:
        if find_file(folder, name) is None:
            failures = _download_file(spec, name, folder, log, timeout)
            if failures:
                return failures
    return []


def _download_file(spec, name, folder, log, timeout):
    """Fetch ``name`` from the first mirror that serves a verified copy; the failures, empty on success."""
    target = os.path.join(folder, name + spec.download_suffix)
    failures = []
    for mirror in spec.mirrors:
        url = mirror + name + spec.download_suffix
        try:
            _fetch_verified(url, target, spec.checksums.get(name), spec, log, timeout)
            return []
        except (OSError, http.client.HTTPException, ValueError, DataError) as error:
            failure = _describe_failure(url, error)
            log(f"  failed: {failure}")
            failures.append(failure)
    return failures


def _fetch_verified(url, target, checksum, spec, log, timeout):
    """Stream ``url`` into a temporary file beside ``target``, verify it, then rename it to ``target``."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        declared = response.headers.get("Content-Length", "")
        total = int(declared) if declared.isdigit() else None
        log(f"downloading {url} ({'size unknown' if total is None else f'{total:,} bytes'}) "
            f"into {os.path.dirname(target)}")
        with atomic_write(target, "w+b") as handle:
            received = _copy_stream(response, handle)
            if total is not None and received != total:
                raise DataError(f"{url}: the server sent {received} of {total} bytes; try again")
            handle.seek(0)
            _verify_download(handle.read(), url, checksum, spec)
    log(f"  saved {target}: {received:,} bytes, verified")


def _copy_stream(response, handle):
    """Copy the body of ``response`` into ``handle`` in chunks; the number of bytes copied."""
    received = 0
    while chunk := response.read(DOWNLOAD_CHUNK):
        handle.write(chunk)
        received += len(chunk)
    return received


def _verify_download(data, url, checksum, spec):
    """Raise ``DataError`` unless the downloaded ``data`` match ``checksum`` and the format of ``spec``."""
    content = _decompress(data, url)
    if checksum is not None:
        _check_digest(data, content, checksum, url, fix="the mirror serves a damaged or different file")
    if spec.file_format == "frey-mat":
        _parse_frey_mat(content, url, spec.image_shape)
    else:
        _parse_idx(content, url)


def _check_digest(data, content, checksum, source, fix="the file is damaged or not the published one: "
                                                         "reinstall or download it again"):
    """Raise ``DataError`` unless ``checksum`` matches ``data`` (as stored) or ``content`` (decompressed),
    as its ``of`` says; ``source`` names the file and ``fix`` ends the message."""
    digested = data if checksum.of == "download" else content
    actual = hashlib.new(checksum.algorithm, digested, usedforsecurity=False).hexdigest()
    if actual != checksum.digest:
        raise DataError(f"{source}: the {checksum.algorithm} of the {checksum.of} bytes is {actual}, "
                        f"expected {checksum.digest}; {fix}")


def _describe_failure(url, error):
    """One line saying why downloading ``url`` failed, starting with the URL."""
    if isinstance(error, DataError):
        return str(error)  # already starts with the URL
    if isinstance(error, urllib.error.HTTPError):
        return f"{url}: HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        return f"{url}: {error.reason}"
    return f"{url}: {type(error).__name__}: {error}"


# ------------------------------------------------------------------------------------- binarization

def binarize_static(x, seed):
    """One fixed Bernoulli draw per pixel: 1 with probability ``x`` (in [0, 1]), in ``x``'s dtype.

    The same ``seed`` gives the same binary dataset, as in the statically binarized MNIST benchmark.
    """
    x = np.asarray(x)
    draws = np.random.default_rng(seed).random(x.shape, dtype=np.float32)
    return (draws < x).astype(x.dtype)


BINARIZE_MODES = ("none", "static", "dynamic")
"""The values of ``--binarize`` (``binarize_dataset``)."""


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
