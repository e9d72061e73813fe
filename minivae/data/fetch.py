"""Downloads through pooch: every file fetched from the registry's mirrors, verified, then cached.

For each file the mirrors are tried in order. pooch streams the file into a staging folder inside
the cache folder (``tempfile``'s name, never the file's own), checks the digest of the bytes as
served when the registry has one (``known_hash``), retries a failed or corrupt transfer
``retries`` times (waiting 1 s, 2 s, ...), and draws a progress bar on a terminal. minivae then
checks what pooch cannot: a digest of the decompressed bytes and the file's structure (IDX, or
Frey Face's .mat). Only a file that passed every check is written under its own name in the cache
(atomically, ``minivae.fileio``): nothing unverified is ever kept.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile

from minivae.errors import DataError
from minivae.fileio import atomic_write

from .frey import parse_frey_mat
from .idx import decompress, parse_idx, read_bytes

MIRROR_FIX = "the mirror serves a damaged or different file"


def download_files(spec, names, folder, log, timeout, retries=1, progressbar=None):
    """Download the files ``names`` of ``spec`` into ``folder``; the list of failures, empty on success.

    ``timeout`` bounds each network operation (seconds); ``progressbar`` None draws one when stderr
    is a terminal. Stops at the first file that no mirror can provide, so that a machine without a
    network gives up after one round of the mirrors (each tried ``1 + retries`` times).
    """
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as error:
        return [f"{folder}: cannot create the download folder ({error.strerror}); set XDG_CACHE_HOME "
                f"to a writable folder"]
    if progressbar is None:
        progressbar = sys.stderr.isatty()
    for name in names:
        failures = _download_file(spec, name, folder, log, timeout, retries, progressbar)
        if failures:
            return failures
    return []


def _download_file(spec, name, folder, log, timeout, retries, progressbar):
    """Fetch ``name`` from the first mirror that serves a verified copy; the failures, empty on success."""
    import pooch  # only a download needs it (and requests behind it)

    served = name + spec.download_suffix
    target = os.path.join(folder, served)
    checksum = spec.checksums.get(name)
    failures = []
    for mirror in spec.mirrors:
        url = mirror + served
        log(f"downloading {url} into {folder}")
        try:
            with tempfile.TemporaryDirectory(prefix=".download-", dir=folder) as staging:
                fetcher = pooch.create(path=staging, base_url=mirror, registry={served: _known_hash(checksum)},
                                       retry_if_failed=retries)
                with _pooch_quiet(pooch):
                    path = fetcher.fetch(served, downloader=pooch.HTTPDownloader(progressbar=progressbar,
                                                                                 timeout=timeout))
                data = read_bytes(path)
                _verify_download(data, url, checksum, spec)
                with atomic_write(target) as handle:
                    handle.write(data)
            log(f"  saved {target}: {len(data):,} bytes, verified")
            return []
        except (OSError, ValueError, DataError) as error:  # requests' errors are OSErrors
            failure = _describe_failure(url, error, checksum, timeout, retries)
            log(f"  failed: {failure}")
            failures.append(failure)
    return failures


def _known_hash(checksum):
    """pooch's ``known_hash`` ("md5:...") for a digest of the bytes as served; None for the others,
    which ``_verify_download`` checks after decompressing."""
    if checksum is None or checksum.of != "download":
        return None
    return f"{checksum.algorithm}:{checksum.digest}"


@contextlib.contextmanager
def _pooch_quiet(pooch):
    """pooch's own log lines (which repeat ours, on stderr) held back while the block runs."""
    logger = pooch.get_logger()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _verify_download(data, url, checksum, spec):
    """Raise ``DataError`` unless the downloaded ``data`` match a ``checksum`` of the decompressed bytes
    (pooch has checked one of the bytes as served) and the format of ``spec``."""
    content = decompress(data, url)
    if checksum is not None and checksum.of == "decompressed":  # pooch checked the others
        checksum.verify(data, content, url, fix=MIRROR_FIX)
    if spec.file_format == "frey-mat":
        parse_frey_mat(content, url, spec.image_shape)
    else:
        parse_idx(content, url)


def _describe_failure(url, error, checksum, timeout, retries):
    """One line saying why downloading ``url`` failed, starting with the URL."""
    import requests

    tries = f"{1 + retries} tries"
    if isinstance(error, DataError):
        return str(error)  # already starts with the URL
    if isinstance(error, requests.HTTPError) and error.response is not None:
        return f"{url}: HTTP {error.response.status_code} {error.response.reason} ({tries})"
    if isinstance(error, requests.Timeout):
        return f"{url}: timed out, no answer within {timeout:g} s ({tries})"
    if isinstance(error, requests.ConnectionError):
        return f"{url}: {_innermost_reason(error)} ({tries})"
    if isinstance(error, requests.exceptions.ChunkedEncodingError):
        return f"{url}: the connection broke before the whole file arrived ({_innermost_reason(error)}; " \
               f"{tries}); try again"
    if isinstance(error, ValueError) and checksum is not None and checksum.of == "download":
        return (f"{url}: the {checksum.algorithm} of the download bytes is not the published "
                f"{checksum.digest} ({tries}); {MIRROR_FIX}")
    return f"{url}: {type(error).__name__}: {error}"


def _innermost_reason(error):
    """The deepest cause behind a requests error that says something plain ("Connection refused",
    "Name or service not known", "IncompleteRead(60 bytes read, 10 more expected)")."""
    reason, cause = str(error), error
    for _ in range(16):  # requests -> urllib3 -> socket: a few links, never a cycle in practice
        if getattr(cause, "strerror", None):
            return cause.strerror
        inner = [getattr(cause, "reason", None), cause.__cause__, cause.__context__, *cause.args]
        cause = next((link for link in inner if isinstance(link, BaseException)), None)
        if cause is None:
            return reason
        reason = str(cause)
    return reason
