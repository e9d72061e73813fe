"""Small dataset files made by the tests of minivae.data, and local mirrors to serve them (a helper
module, not a test file). Nothing here touches the network: mirrors are HTTP servers on 127.0.0.1
running in a thread of this process."""

import gzip
import hashlib
import http.server
import socket
import struct
import threading

import numpy as np
import scipy.io

from minivae import data

TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS = data.IDX_FILES


def quiet(line):
    """A ``log`` that drops the line."""


def isolated_cache(monkeypatch, tmp_path):
    """No MINIVAE_DATA, and a user cache inside ``tmp_path``; returns the cache root."""
    monkeypatch.delenv("MINIVAE_DATA", raising=False)
    cache_root = tmp_path / "xdg-cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache_root))
    return cache_root


def idx_bytes(array):
    """The IDX encoding of ``array``, written by hand (independent of ``write_idx``)."""
    code = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(np.int16): 0x0B,
            np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D, np.dtype(np.float64): 0x0E}[array.dtype]
    header = bytes((0, 0, code, array.ndim)) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def small_images(count, rows=4, columns=3, seed=0):
    """``count`` random uint8 images of ``rows`` x ``columns`` pixels."""
    return np.random.default_rng(seed).integers(0, 256, size=(count, rows, columns), dtype=np.uint8)


def write_idx_dataset(folder, train_count=5, test_count=3, rows=4, columns=3, gz=False):
    """Write four MNIST-named IDX files of small random images into ``folder``; return the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    rng = np.random.default_rng(train_count)
    arrays = {
        TRAIN_IMAGES: small_images(train_count, rows, columns, seed=1),
        TRAIN_LABELS: rng.integers(0, 10, size=train_count, dtype=np.uint8),
        TEST_IMAGES: small_images(test_count, rows, columns, seed=2),
        TEST_LABELS: rng.integers(0, 10, size=test_count, dtype=np.uint8),
    }
    for name, array in arrays.items():
        data.write_idx(folder / (name + suffix), array)
    return folder


def overwrite(folder, name, array):
    """Replace file ``name`` of ``folder`` with ``array`` (encoded by hand: it may be empty)."""
    (folder / name).write_bytes(idx_bytes(array))


def write_frey(folder, images):
    """Write ``frey_rawface.mat`` with ``ff`` of shape (560, images), uint8; return (folder, ff)."""
    folder.mkdir(parents=True, exist_ok=True)
    ff = np.random.default_rng(3).integers(0, 256, size=(560, images), dtype=np.uint8)
    scipy.io.savemat(folder / "frey_rawface.mat", {"ff": ff})
    return folder, ff


def tiny_spec(mirrors, checksums=None, name="tiny"):
    """A registry entry for a small MNIST-like dataset served by the tests."""
    return data.DatasetSpec(name=name, files=data.IDX_FILES, mirrors=tuple(mirrors), download_suffix=".gz",
                            checksums=checksums or {}, file_format="idx", image_shape=(4, 3),
                            train_count=5, test_count=3, likelihood_hint="bernoulli")


def tiny_gz_files():
    """The four files of the tiny dataset as a mirror serves them: ``{name + '.gz': bytes}``."""
    arrays = {
        TRAIN_IMAGES: small_images(5, seed=1),
        TRAIN_LABELS: np.arange(5, dtype=np.uint8),
        TEST_IMAGES: small_images(3, seed=2),
        TEST_LABELS: np.arange(3, dtype=np.uint8),
    }
    return {name + ".gz": gzip.compress(idx_bytes(array), mtime=0) for name, array in arrays.items()}


def sha256_of_decompressed(served):
    """Correct "decompressed" SHA-256 checksums of the served ``.gz`` files."""
    return {name[:-3]: data.Checksum("sha256", hashlib.sha256(gzip.decompress(body)).hexdigest(),
                                     "decompressed")
            for name, body in served.items()}


def closed_port_url():
    """A URL on 127.0.0.1 whose port was just bound and closed, so connections are refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


class LocalMirrors:
    """HTTP servers on 127.0.0.1: ``start({path: bytes})`` returns the base URL of a new one.

    ``overstate`` makes a server declare that many more bytes in Content-Length than it sends;
    ``fail_once`` names paths whose first request it answers with HTTP 500. ``requests`` lists
    every path asked for (of all servers), in order. ``close()`` stops them all.
    """

    def __init__(self):
        self.servers = []
        self.requests = []

    def start(self, files, overstate=0, fail_once=()):
        log, failed = self.requests, set()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                path = self.path.lstrip("/")
                log.append(path)
                body = files.get(path)
                if body is None or (path in fail_once and path not in failed):
                    failed.add(path)
                    self.send_error(404 if body is None else 500)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body) + overstate))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/"

    def close(self):
        for server in self.servers:
            server.shutdown()
            server.server_close()
