"""Finding a dataset of the registry on this machine, or downloading it, and loading it.

A dataset is looked for, in order, in the folder given with ``--data-dir`` (and only there when one
is given), in ``$MINIVAE_DATA/<name>`` and ``$MINIVAE_DATA``, in the user cache (pooch's
``os_cache``: ``$XDG_CACHE_HOME/minivae/<name>``, by default ``~/.cache/minivae/<name>``) and in
``<root>/<name>`` for each system root (``/usr/share/datasets``, where Debian's packages put their
copies; ``$MINIVAE_SYSTEM_DATA`` replaces that list: roots separated by ``os.pathsep``, empty for
none). When no folder holds every file, the missing files are downloaded into the user cache from
the registry's mirrors (minivae.data.fetch), each one verified before it is kept.
``$MINIVAE_NO_DOWNLOAD=1`` forbids downloads, as ``--no-download`` does.
"""

from __future__ import annotations

import dataclasses
import os

from minivae.errors import DataError

from .arrays import load_array_dataset
from .binarize import binarize_dataset
from .fetch import download_files
from .frey import load_frey
from .idx import load_idx_folder
from .registry import DATASETS, IDX_FILES, PACKAGED_ROOT, spec_named

DEFAULT_SYSTEM_ROOTS = ("/usr/share/datasets",)
SYSTEM_ROOTS_VARIABLE = "MINIVAE_SYSTEM_DATA"
NO_DOWNLOAD_VARIABLE = "MINIVAE_NO_DOWNLOAD"

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


DATA_SETTINGS = ("dataset", "data_dir", "data_file")
"""The settings that each name a run's data (the default dataset stands in when none is given)."""


def names_data(settings):
    """Whether ``settings`` name the run's data (``DATA_SETTINGS``), or leave it to the default."""
    return any(settings.get(name) is not None for name in DATA_SETTINGS)


def load_run_data(settings, download=True, log=print):
    """The data of the run that ``settings`` (a dict of minivae/settings.py's names) describes, binarized
    as training binarizes it (``binarize``, seeded by ``seed``): the arrays of ``data_file`` (with
    ``test_fraction``), else the dataset ``dataset`` (in ``data_dir`` when one is given), else the
    default dataset (with ``data_dir`` alone: the IDX files there). The one loader of train, evaluate
    and explore, so that each reads a run's data the same way."""
    seed = settings.get("seed", 1)
    if settings.get("data_file") is not None:
        dataset = load_array_dataset(settings["data_file"], settings.get("test_fraction"), seed)
    elif settings.get("dataset") is not None:
        dataset = load_dataset(settings["dataset"], data_dir=settings.get("data_dir"), download=download, log=log)
    else:
        dataset = resolve_default_dataset(data_dir=settings.get("data_dir"), download=download, log=log)
    binarize_dataset(dataset, settings.get("binarize", "none"), seed)
    return dataset


def load_dataset(name, data_dir=None, download=True, log=print, system_dirs=None, timeout=5.0, retries=1,
                 progressbar=None):
    """Find the dataset ``name`` (a key of ``DATASETS``), downloading it if allowed, and load it.

    With ``data_dir`` the files must be there (a user who names a folder means it). Otherwise the
    folders of the module docstring are searched in order (``system_dirs`` maps a dataset name to
    its system folders; default ``system_folders()``), then the mirrors are tried into the user
    cache, each network operation giving up after ``timeout`` seconds and each transfer tried
    ``1 + retries`` times, unless ``download`` is False or ``$MINIVAE_NO_DOWNLOAD`` forbids it.
    ``log`` receives one line per download step; ``progressbar`` (None: when stderr is a terminal)
    draws pooch's bar. Raises ``DatasetUnavailable`` listing every attempt when all of them fail.
    """
    spec = spec_named(name)
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
    failures = download_files(spec, _missing_files(spec, cache), cache, log, timeout, retries, progressbar)
    if failures:
        raise DatasetUnavailable(_unavailable_headline(spec), spec.files, tried + failures)
    return _load_folder(spec, cache)


def resolve_default_dataset(data_dir=None, download=True, log=print, system_dirs=None, timeout=5.0,
                            retries=1, progressbar=None):
    """The dataset of a run with no ``--dataset``, and one ``log`` line saying which and why.

    In order: MNIST, found or downloaded as by ``load_dataset``; else a Fashion-MNIST copy already on
    the machine (never downloaded); else ``fashion-mnist-small``, which ships with minivae. With
    ``data_dir``, the IDX files there (with MNIST's names) are loaded, whatever they hold, named by the
    folder (``idx_files_in``), and nothing else is tried.
    """
    if data_dir is not None:
        return idx_files_in(data_dir)
    try:
        mnist = load_dataset("mnist", download=download, log=log, system_dirs=system_dirs, timeout=timeout,
                             retries=retries, progressbar=progressbar)
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


def idx_files_in(data_dir):
    """The four IDX files with MNIST's names in the user's folder ``data_dir`` (``--data-dir`` without
    ``--dataset``), whatever dataset they hold: named by the folder (its last component), never
    "mnist", their classes unnamed, and refused as "the IDX files" when one is missing."""
    data_dir = os.fspath(data_dir)
    dataset = _load_from_data_dir(DATASETS["mnist"], data_dir, what="the IDX files")
    name = os.path.basename(os.path.abspath(data_dir)) or data_dir
    return dataclasses.replace(dataset, name=name, class_names=None)


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
    """The user cache folder of dataset ``name``, pooch's ``os_cache("minivae")/<name>``: on Linux
    ``$XDG_CACHE_HOME/minivae/<name>`` (an absolute XDG_CACHE_HOME), else ``~/.cache/minivae/<name>``;
    the platform's cache folder elsewhere (``~/Library/Caches`` on macOS, ``%LOCALAPPDATA%`` on Windows)."""
    import pooch  # here, not at the top: importing minivae.data (checkpoint.py does) stays light

    return os.path.join(pooch.os_cache("minivae"), name)


def find_file(folder, name):
    """The path of ``name`` or ``name.gz`` in ``folder`` (the raw file first), or None."""
    for candidate in (name, name + ".gz"):
        path = os.path.join(folder, candidate)
        if os.path.isfile(path):
            return path
    return None


def _unavailable_headline(spec):
    """The first line of the error raised when ``spec``'s dataset can be neither found nor fetched."""
    return f"{spec.name}: the dataset is not on this machine and could not be downloaded"


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


def _missing_files(spec, folder):
    """The names of ``spec.files`` found in ``folder`` neither raw nor gzipped."""
    return [name for name in spec.files if find_file(folder, name) is None]


def _describe_missing(folder, missing):
    """Why ``folder`` cannot be used, in a few words."""
    if not os.path.isdir(folder):
        return "no such folder"
    return "missing " + ", ".join(missing)


def _load_from_data_dir(spec, data_dir, what=None):
    """Load the files of ``spec`` from the user's ``data_dir``, which must hold all of them; the error
    calls them ``what`` (default: the dataset's name)."""
    missing = _missing_files(spec, data_dir)
    if missing:
        raise DataError(f"{data_dir}: cannot load {what or spec.name} from this --data-dir folder "
                        f"({_describe_missing(data_dir, missing)}); put its files there "
                        f"({', '.join(spec.files)}, each raw or .gz) or leave out --data-dir to use "
                        f"the cache or a download")
    return _load_folder(spec, data_dir)


def _load_folder(spec, folder):
    """Load the dataset of ``spec`` from ``folder``, which holds every one of its files."""
    paths = [find_file(folder, name) for name in spec.files]
    if spec.file_format == "frey-mat":
        return load_frey(spec, folder, paths[0])
    return load_idx_folder(spec, folder, paths)
