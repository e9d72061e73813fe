"""Downloads through pooch: every file fetched from the registry's mirrors, verified, then cached.

For each file the mirrors are tried in order. pooch streams the file into a staging folder inside
the cache folder (``tempfile``'s name, never the file's own), checks the digest of the bytes as
served when the registry has one (``known_hash``), retries a failed or corrupt transfer
``retries`` times (waiting 1 s, 2 s, ...), and draws a progress bar on a terminal; a failure no
retry can mend (no such host, a refused connection, HTTP 4xx) ends the tries at once. minivae then
checks what pooch cannot: a digest of the decompressed bytes and the file's structure (IDX, or
Frey Face's .mat). Only a file that passed every check is written under its own name in the cache
(atomically, ``minivae.fileio``): nothing unverified is ever kept.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
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
    network (no host name resolves) gives up after one round of the mirrors, without waiting.
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
        downloader = _Downloader(pooch.HTTPDownloader(progressbar=progressbar, timeout=timeout))
        try:
            with tempfile.TemporaryDirectory(prefix=".download-", dir=folder) as staging:
                fetcher = pooch.create(path=staging, base_url=mirror, registry={served: _known_hash(checksum)},
                                       retry_if_failed=retries)
                with _pooch_quiet(pooch):
                    path = fetcher.fetch(served, downloader=downloader)
                data = read_bytes(path)
                _verify_download(data, url, checksum, spec)
                with atomic_write(target) as handle:
                    handle.write(data)
            log(f"  saved {target}: {len(data):,} bytes, verified")
            return []
        except (OSError, ValueError, DataError, _Unmendable) as error:  # requests' errors are OSErrors
            failure = _describe_failure(url, error, checksum, timeout, downloader.tries)
            log(f"  failed: {failure}")
            failures.append(failure)
    return failures


class _Unmendable(Exception):
    """A failure no retry can mend; pooch lets it through at once (it retries only its own two kinds)."""

    def __init__(self, error):
        super().__init__(str(error))
        self.error = error


class _Downloader:
    """pooch's HTTP downloader, counting its tries, and ending pooch's retries at once on a failure no
    retry can mend: no such host, a refused connection, an HTTP 4xx answer (but 408 and 429)."""

    def __init__(self, http):
        self.http = http
        self.tries = 0

    def __call__(self, url, output_file, pooch_instance):
        import requests

        self.tries += 1
        try:
            return self.http(url, output_file, pooch_instance)
        except requests.HTTPError as error:
            status = error.response.status_code if error.response is not None else 0
            if 400 <= status < 500 and status not in (408, 429):
                raise _Unmendable(error) from error
            raise
        except requests.ConnectionError as error:
            if isinstance(_innermost(error), (socket.gaierror, ConnectionRefusedError)):
                raise _Unmendable(error) from error
            raise


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


def _describe_failure(url, error, checksum, timeout, tries):
    """One line saying why downloading ``url`` failed (after ``tries`` tries), starting with the URL."""
    import requests

    if isinstance(error, DataError):
        return str(error)  # already starts with the URL
    if isinstance(error, _Unmendable):
        error = error.error
    tries = f"{tries} {'try' if tries == 1 else 'tries'}"
    if isinstance(error, requests.HTTPError) and error.response is not None:
        return f"{url}: HTTP {error.response.status_code} {error.response.reason} ({tries})"
    if isinstance(error, requests.Timeout):
        return f"{url}: timed out, no answer within {timeout:g} s ({tries})"
    if isinstance(error, requests.ConnectionError):
        return f"{url}: {_reason(error)} ({tries})"
    if isinstance(error, requests.exceptions.ChunkedEncodingError):
        return f"{url}: the connection broke before the whole file arrived ({_reason(error)}; {tries}); try again"
    if isinstance(error, ValueError) and checksum is not None and checksum.of == "download":
        return (f"{url}: the {checksum.algorithm} of the download bytes is not the published "
                f"{checksum.digest} ({tries}); {MIRROR_FIX}")
    return f"{url}: {type(error).__name__}: {error}"


def _causes(error):
    """``error`` and the errors behind it, outermost first: requests -> urllib3 -> socket."""
    for _ in range(16):  # a few links in practice; the bound guards against a cycle
        yield error
        links = [getattr(error, "reason", None), error.__cause__, error.__context__, *error.args]
        error = next((link for link in links if isinstance(link, BaseException)), None)
        if error is None:
            return


def _innermost(error):
    """The deepest error behind ``error`` (a socket error such as ``gaierror``, or ``error`` itself)."""
    return list(_causes(error))[-1]


def _reason(error):
    """What the errors behind a requests error say in plain words: the first ``strerror`` ("Connection
    refused", "Name or service not known"), else the innermost message ("IncompleteRead(...)")."""
    for cause in _causes(error):
        if getattr(cause, "strerror", None):
            return cause.strerror
    return str(_innermost(error))
