"""Tests of minivae.data.fetch: downloads through pooch, each file verified before it is kept.

Nothing here touches the network: every file is made by the test, and mirrors are HTTP servers on
127.0.0.1 running in a thread of this process (data_files.LocalMirrors). Tests of failures a retry
might mend pass ``retries=0`` (pooch waits 1 s before a retry); one slow test checks the retry.
"""

import dataclasses
import gzip
import hashlib
import os
import socket
import time

import numpy as np
import pytest
from data_files import (TRAIN_IMAGES, LocalMirrors, closed_port_url, isolated_cache, quiet,
                        sha256_of_decompressed, tiny_gz_files, tiny_spec, write_frey)

from minivae import data


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No MINIVAE_DATA, and a user cache inside ``tmp_path``; returns the cache root."""
    return isolated_cache(monkeypatch, tmp_path)


@pytest.fixture
def mirrors():
    """Local mirrors, stopped after the test: ``mirrors.start({path: bytes})`` returns a base URL."""
    local = LocalMirrors()
    yield local
    local.close()


@pytest.fixture
def serve(mirrors):
    """``serve({path: bytes}, overstate=0)``: the base URL of a new local mirror."""
    return mirrors.start


# --------------------------------------------------------------------------------------- downloads

def test_download_verifies_and_caches(clean_env, monkeypatch, serve):
    served = tiny_gz_files()
    mirror = serve(served)
    monkeypatch.setitem(data.DATASETS, "tiny", tiny_spec([mirror], sha256_of_decompressed(served)))
    lines = []
    dataset = data.load_dataset("tiny", log=lines.append, system_dirs={})
    cache = clean_env / "minivae" / "tiny"
    assert dataset.source == str(cache)
    assert sorted(os.listdir(cache)) == sorted(served)
    assert all((cache / name).read_bytes() == body for name, body in served.items())
    np.testing.assert_array_equal(dataset.test_y, np.arange(3))
    assert sum(line.startswith("downloading " + mirror) for line in lines) == 4
    assert f"  saved {cache / TRAIN_IMAGES}.gz: {len(served[TRAIN_IMAGES + '.gz']):,} bytes, verified" in lines
    served.clear()  # a second load reads the cache, not the (now empty) mirror
    assert data.load_dataset("tiny", log=quiet, system_dirs={}).source == str(cache)


def test_download_checksum_of_the_downloaded_bytes(clean_env, monkeypatch, serve):
    served = tiny_gz_files()
    checksums = {name[:-3]: data.Checksum("md5", hashlib.md5(body).hexdigest(), "download")
                 for name, body in served.items()}
    monkeypatch.setitem(data.DATASETS, "tiny", tiny_spec([serve(served)], checksums))
    assert len(data.load_dataset("tiny", log=quiet, system_dirs={}).train_x) == 5


def test_wrong_checksum_caches_nothing(clean_env, monkeypatch, serve):
    served = tiny_gz_files()
    wrong = {name: data.Checksum("sha256", "0" * 64, "decompressed") for name in data.IDX_FILES}
    mirror = serve(served)
    monkeypatch.setitem(data.DATASETS, "tiny", tiny_spec([mirror], wrong))
    with pytest.raises(data.DatasetUnavailable) as raised:
        data.load_dataset("tiny", log=quiet, system_dirs={})
    assert f"{mirror}{TRAIN_IMAGES}.gz: the sha256 of the decompressed bytes is" in str(raised.value)
    assert list((clean_env / "minivae" / "tiny").iterdir()) == []


def test_download_failing_the_structure_check_caches_nothing(clean_env, monkeypatch, serve):
    served = tiny_gz_files()
    served[TRAIN_IMAGES + ".gz"] = gzip.compress(gzip.decompress(served[TRAIN_IMAGES + ".gz"])[:-1])
    mirror = serve(served)  # the checksum matches the truncated file: only the IDX check can catch it
    monkeypatch.setitem(data.DATASETS, "tiny", tiny_spec([mirror], sha256_of_decompressed(served)))
    with pytest.raises(data.DatasetUnavailable, match="truncated: expected 60 bytes of data, found 59"):
        data.load_dataset("tiny", log=quiet, system_dirs={})
    assert list((clean_env / "minivae" / "tiny").iterdir()) == []


def test_download_shorter_than_its_content_length_caches_nothing(clean_env, monkeypatch, serve):
    mirror = serve(tiny_gz_files(), overstate=10)
    monkeypatch.setitem(data.DATASETS, "tiny", tiny_spec([mirror]))
    with pytest.raises(data.DatasetUnavailable, match=f"{mirror}{TRAIN_IMAGES}.gz: the connection broke "
                                                      f"before the whole file arrived .*10 more expected"):
        data.load_dataset("tiny", log=quiet, system_dirs={}, retries=0)
    assert list((clean_env / "minivae" / "tiny").iterdir()) == []


def test_failed_mirrors_fall_back_to_the_next(clean_env, monkeypatch, serve):
    served = tiny_gz_files()
    refusing, missing, good = closed_port_url(), serve({}), serve(served)
    monkeypatch.setitem(data.DATASETS, "tiny",
                        tiny_spec([refusing, missing, good], sha256_of_decompressed(served)))
    lines = []
    dataset = data.load_dataset("tiny", log=lines.append, system_dirs={})
    assert len(dataset.train_x) == 5
    failures = [line for line in lines if line.startswith("  failed: ")]
    assert len(failures) == 2 * len(data.IDX_FILES)
    assert any(refusing in line and "refused" in line.lower() for line in failures)
    assert any(missing in line and "HTTP 404" in line for line in failures)


def test_every_mirror_failing_lists_each_attempt_and_fails_fast(clean_env, monkeypatch, serve):
    refusing, missing = closed_port_url(), serve({})
    monkeypatch.setitem(data.DATASETS, "tiny", tiny_spec([refusing, missing]))
    started = time.monotonic()
    with pytest.raises(data.DatasetUnavailable) as raised:
        data.load_dataset("tiny", log=quiet, system_dirs={}, timeout=5)
    assert time.monotonic() - started < 3
    message = str(raised.value)  # a refused connection and a 404 are not retried (no 1 s wait)
    assert f"{refusing}{TRAIN_IMAGES}.gz: Connection refused (1 try)" in message
    assert f"{missing}{TRAIN_IMAGES}.gz: HTTP 404 Not Found (1 try)" in message
    assert str(clean_env / "minivae" / "tiny") + ": no such folder" in message
    assert list((clean_env / "minivae" / "tiny").iterdir()) == []


def test_a_silent_server_times_out(clean_env, monkeypatch):
    with socket.socket() as silent:  # accepts connections (backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/"
        monkeypatch.setitem(data.DATASETS, "tiny", tiny_spec([url]))
        started = time.monotonic()
        with pytest.raises(data.DatasetUnavailable, match="timed out"):
            data.load_dataset("tiny", log=quiet, system_dirs={}, timeout=0.3, retries=0)
    assert time.monotonic() - started < 3


def test_a_wrong_digest_of_the_served_bytes_is_one_line_and_caches_nothing(clean_env, monkeypatch, serve):
    """A digest of the bytes as served is pooch's ``known_hash``: pooch checks it, minivae says so in one line."""
    served = tiny_gz_files()
    wrong = {name: data.Checksum("md5", "0" * 32, "download") for name in data.IDX_FILES}
    mirror = serve(served)
    monkeypatch.setitem(data.DATASETS, "tiny", tiny_spec([mirror], wrong))
    lines = []
    with pytest.raises(data.DatasetUnavailable) as raised:
        data.load_dataset("tiny", log=lines.append, system_dirs={}, retries=0)
    expected = (f"{mirror}{TRAIN_IMAGES}.gz: the md5 of the download bytes is not the published {'0' * 32} "
                f"(1 try); the mirror serves a damaged or different file")
    assert lines[-1] == "  failed: " + expected
    assert expected in str(raised.value).splitlines()[2]
    assert list((clean_env / "minivae" / "tiny").iterdir()) == []


@pytest.mark.parametrize("switch", ["argument", "environment"])
def test_downloads_switched_off_never_ask_a_mirror(clean_env, monkeypatch, mirrors, switch):
    mirror = mirrors.start(tiny_gz_files())
    monkeypatch.setitem(data.DATASETS, "tiny", tiny_spec([mirror]))
    if switch == "environment":
        monkeypatch.setenv("MINIVAE_NO_DOWNLOAD", "1")
    with pytest.raises(data.DatasetUnavailable, match="download of tiny: not attempted"):
        data.load_dataset("tiny", log=quiet, system_dirs={}, download=switch != "argument")
    assert mirrors.requests == []
    assert not (clean_env / "minivae" / "tiny").exists()


@pytest.mark.parametrize("progressbar", [None, False, True])
def test_stderr_shows_a_progress_bar_when_asked_and_nothing_else(clean_env, monkeypatch, serve, capfd,
                                                                progressbar):
    """pooch's own log lines are held back; its bar is drawn with True, or with None on a terminal."""
    served = tiny_gz_files()
    monkeypatch.setitem(data.DATASETS, "tiny", tiny_spec([serve(served)], sha256_of_decompressed(served)))
    data.load_dataset("tiny", log=quiet, system_dirs={}, progressbar=progressbar)
    err = capfd.readouterr().err
    if progressbar:
        assert err.count("100%|") == len(served) and "B/s]" in err  # one finished bar per file
    else:
        assert err == ""


@pytest.mark.slow
def test_a_failed_transfer_is_retried_on_the_same_mirror(clean_env, monkeypatch, mirrors):
    """HTTP 500 on the first request of a file: no retry fails; one retry (after pooch's 1 s wait) gets it."""
    served = tiny_gz_files()
    first = TRAIN_IMAGES + ".gz"
    mirror = mirrors.start(served, fail_once={first})
    monkeypatch.setitem(data.DATASETS, "tiny", tiny_spec([mirror], sha256_of_decompressed(served)))
    with pytest.raises(data.DatasetUnavailable, match=f"{mirror}{first}: HTTP 500 .*\\(1 try\\)"):
        data.load_dataset("tiny", log=quiet, system_dirs={}, retries=0)
    assert mirrors.requests == [first]
    mirrors.requests.clear()
    monkeypatch.setitem(data.DATASETS, "tiny", tiny_spec([mirrors.start(served, fail_once={first})],
                                                         sha256_of_decompressed(served)))
    assert len(data.load_dataset("tiny", log=quiet, system_dirs={}, retries=1).train_x) == 5
    assert mirrors.requests == [first, *served]


# --------------------------------------------------------------------- Frey Face, default dataset

def test_frey_download_is_checked_for_structure(clean_env, monkeypatch, serve, tmp_path):
    folder, _ = write_frey(tmp_path / "src", images=210)
    good = (folder / "frey_rawface.mat").read_bytes()
    mirrors = (serve({"frey_rawface.mat": b"not a mat file" * 20}), serve({"frey_rawface.mat": good}))
    monkeypatch.setitem(data.DATASETS, "frey", dataclasses.replace(data.DATASETS["frey"], mirrors=mirrors))
    lines = []
    dataset = data.load_dataset("frey", log=lines.append)
    assert dataset.test_x.shape == (200, 560)
    assert any(mirrors[0] in line and "not a readable MATLAB" in line for line in lines)
    assert os.listdir(clean_env / "minivae" / "frey") == ["frey_rawface.mat"]


def test_default_with_no_mnist_and_no_fashion_copy_trains_on_the_packaged_subset(tmp_path, clean_env,
                                                                                   monkeypatch, serve):
    fashion_mirror = serve(tiny_gz_files())  # a working mirror: the fallback must not use it
    monkeypatch.setitem(data.DATASETS, "mnist", tiny_spec([closed_port_url()], name="mnist"))
    monkeypatch.setitem(data.DATASETS, "fashion-mnist", tiny_spec([fashion_mirror], name="fashion-mnist"))
    lines = []
    dataset = data.resolve_default_dataset(log=lines.append,
                                           system_dirs={"fashion-mnist": (str(tmp_path / "none"),)})
    assert dataset.name == "fashion-mnist-small" and dataset.source == os.path.join(data.PACKAGED_ROOT,
                                                                                    "fashion-mnist-small")
    assert (len(dataset.train_x), len(dataset.test_x)) == (10000, 2000)
    notices = [line for line in lines if "fashion-mnist-small" in line]
    assert len(notices) == 1 and notices[0].startswith("MNIST is not on this machine and could not be downloaded")
    assert not any(fashion_mirror in line for line in lines)
