"""CPU threads for the elementwise work of a training step (Adam's update, the Bernoulli likelihood).

NumPy releases the GIL inside its ufuncs, so blocks of rows handed to different Python threads are
computed side by side. The matrix products use BLAS's own threads; minivae/__init__.py says how the
two share the cores. Host side only: a GPU backend uses one thread (one pass is one kernel there).
NumPy's floating-point error settings (``np.errstate``) hold per thread: each block runs under the
calling thread's, so a caller that silences overflow warnings silences them in every block.
"""

import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np


def cpu_thread_count():
    """The threads CPU work may use: ``OPENBLAS_NUM_THREADS`` or ``OMP_NUM_THREADS`` when set to a
    positive integer (so that minivae's threads and BLAS's agree), else the CPUs this process may run on."""
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(name, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class RowThreads:
    """Runs a function on blocks of rows of some arrays, one block per thread, up to ``count`` at once.

    The calling thread computes the first block itself; ``count - 1`` worker threads, started on
    first use (again in a forked child), compute the others.
    """

    # Arrays stay whole below this many elements per thread. Handing a block to another thread and
    # waiting for it costs ~60 us (two thread wake-ups, measured on a 2-core VM); the work split here
    # (Adam, the Bernoulli likelihood) makes 10-13 passes, which over 32,768 float32 values take
    # ~150 us: about where half of it saved pays for the hand-off.
    min_elements_per_thread = 32768

    def __init__(self, count):
        if int(count) < 1:
            raise ValueError(f"threads must be >= 1, got {count!r}")
        self.count = int(count)
        self._pool = None
        self._pool_pid = None  # the process that started the pool: a forked child needs its own
        self._pool_lock = threading.Lock()
        self._local = threading.local()  # .is_worker: True in this object's worker threads

    def run(self, function, *arrays):
        """Call ``function(*pieces)`` on matching blocks of rows of ``arrays`` (all with the same
        first dimension); returns None once every block is done (also when one raises: the first
        error is raised then).

        For work that treats each row on its own (elementwise, or reductions along a row) and
        writes its results into some of ``arrays``: the result is then bit-for-bit that of
        ``function(*arrays)``, for any number of threads. Arrays with fewer than
        ``min_elements_per_thread`` values per thread are cut into fewer blocks (one block:
        ``function(*arrays)`` on this thread), and so is a call made from inside a block.
        """
        rows = _common_rows(arrays)
        blocks = min(self.count, rows, arrays[0].size // self.min_elements_per_thread)
        if blocks <= 1 or getattr(self._local, "is_worker", False):
            function(*arrays)
            return
        edges = [rows * k // blocks for k in range(blocks + 1)]
        pieces = [[a[start:stop] for a in arrays] for start, stop in zip(edges[:-1], edges[1:])]
        pool = self._worker_pool()
        errstate = np.geterr()  # np.errstate is per thread: the workers take the caller's
        others = [pool.submit(_with_errstate, errstate, function, *piece) for piece in pieces[1:]]
        try:
            function(*pieces[0])
        finally:
            wait(others)  # no block may still be writing once this returns or raises
        for other in others:
            other.result()

    def _worker_pool(self):
        with self._pool_lock:
            if self._pool is None or self._pool_pid != os.getpid():
                self._pool = ThreadPoolExecutor(self.count - 1, thread_name_prefix="minivae",
                                                initializer=self._mark_worker)
                self._pool_pid = os.getpid()
            return self._pool

    def _mark_worker(self):
        self._local.is_worker = True


def _with_errstate(errstate, function, *arrays):
    """``function(*arrays)`` under NumPy's floating-point error settings ``errstate`` (``np.geterr()``)."""
    with np.errstate(**errstate):
        function(*arrays)


def _common_rows(arrays):
    """The first dimension shared by every array; ValueError when they differ or one is 0-d."""
    shapes = [tuple(a.shape) for a in arrays]
    if not shapes or any(len(shape) == 0 or shape[0] != shapes[0][0] for shape in shapes):
        raise ValueError(f"split_rows needs arrays with one common first dimension, got shapes {shapes}")
    return shapes[0][0]
