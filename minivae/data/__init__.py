"""Datasets on the host (NumPy only): the registry, finding / downloading / verifying, loading.

    idx.py       IDX files (MNIST's format), raw or gzipped; a folder of four of them
    registry.py  the datasets minivae knows: files, mirrors, digests, image sizes, class names
    lookup.py    where a dataset is looked for on this machine, load_dataset, the default dataset
    fetch.py     downloads through pooch, each file verified before it is kept
    frey.py      Frey Face's MATLAB file
    arrays.py    your own arrays (.npz / .npy) as a dataset
    dataset.py   the Dataset every loader returns, and the checks of pixels and labels they share
    binarize.py  --binarize: static and dynamic Bernoulli draws of the pixels

Every failure raises ``DataError`` whose message names the file, what is wrong and the fix. Dynamic
binarization and batching happen on the device, in the training loop.
"""

from .arrays import load_array_dataset
from .binarize import BINARIZE_MODES, binarize_dataset, binarize_static
from .dataset import Dataset
from .fetch import download_files
from .idx import GZIP_MAGIC, IDX_DTYPES, read_idx, write_idx
from .lookup import (DatasetUnavailable, cache_folder, downloads_forbidden, find_file, load_dataset, load_run_data,
                     names_data, resolve_default_dataset, system_folders)
from .registry import (DATASETS, FASHION_MNIST_CLASSES, IDX_FILES, MNIST_CLASSES, PACKAGED_ROOT, Checksum,
                       DatasetSpec)

__all__ = [
    "BINARIZE_MODES", "DATASETS", "FASHION_MNIST_CLASSES", "GZIP_MAGIC", "IDX_DTYPES", "IDX_FILES",
    "MNIST_CLASSES", "PACKAGED_ROOT", "Checksum", "Dataset", "DatasetSpec", "DatasetUnavailable",
    "binarize_dataset", "binarize_static", "cache_folder", "download_files", "downloads_forbidden",
    "find_file", "load_array_dataset", "load_dataset", "load_run_data", "names_data", "read_idx",
    "resolve_default_dataset", "system_folders", "write_idx",
]
