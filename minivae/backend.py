"""The array backend: which array module (``xp``) the model computes with, in which dtype, with
which seeded random generator.

NumPy runs on the CPU; CuPy runs the same code on a CUDA GPU. This is the only module that imports
CuPy. Compute modules (layers, gaussian, likelihoods, model, optim) never import numpy or cupy
themselves: they use ``backend.xp`` and ``backend.special`` of the Backend they were built with.
"""

import os
import warnings

import numpy as np

from .errors import BackendUnavailable
from .kernels import cuda as cuda_kernels
from .threads import RowThreads, cpu_thread_count

BACKEND_NAMES = ("numpy", "cupy", "auto")
DTYPES = ("float32", "float64")
KERNEL_CHOICES = ("fused", "plain")  # MINIVAE_KERNELS: the CPU backend's elementwise code

_CUPY_INSTALL_HINT = (
    "install CuPy for your CUDA version with `pip install minivae[cuda12]` or `pip install minivae[cuda13]`, "
    "or run on the CPU with --backend numpy"
)


class Backend:
    """One array module, its special functions, a dtype and a seeded random generator.

    Attributes:
        name: "numpy" or "cupy" (or the name of a test double).
        xp: the array module (``numpy`` or ``cupy``).
        special: ``scipy.special`` (imported on first use: ``ScipySpecial``) or ``cupyx.scipy.special``.
        dtype: the floating dtype every array of the model is created in.
        rng: a ``Generator`` of ``xp.random``, seeded once; a seed reproduces a NumPy run bit for bit.
        kernels: fused elementwise kernels computing the same formulas as the plain ``xp`` code in
            one pass each (CuPy: ``minivae.kernels.cuda``; NumPy: ``minivae.kernels.cpu``, see
            ``cpu_kernels``), or None to use the plain code.
        threads: how many CPU threads ``split_rows`` may use at once (1 on a GPU: there one pass is
            one kernel already).
        row_threads: the ``RowThreads`` behind ``split_rows`` (shared by ``with_seed`` copies).
    """

    def __init__(self, name, xp, special, dtype="float32", seed=0, kernels=None, threads=1, row_threads=None):
        try:
            dtype_name = np.dtype(dtype).name if dtype is not None else "None"  # "float32" or np.float32
        except TypeError:
            dtype_name = str(dtype)
        if dtype_name not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        self.name = name
        self.xp = xp
        self.special = special
        self.dtype = xp.dtype(dtype_name)
        self.seed = seed
        self.rng = xp.random.default_rng(seed)
        self.kernels = kernels
        self.row_threads = RowThreads(threads) if row_threads is None else row_threads

    @property
    def threads(self):
        return self.row_threads.count

    def __repr__(self):
        return f"Backend({self.name!r}, dtype={self.dtype.name!r}, seed={self.seed}, threads={self.threads})"

    def with_seed(self, seed):
        """A Backend like this one (same arrays, dtype, threads) with its own generator seeded by ``seed``."""
        return Backend(self.name, self.xp, self.special, dtype=self.dtype.name, seed=seed, kernels=self.kernels,
                       row_threads=self.row_threads)

    def split_rows(self, function, *arrays):
        """``function(*pieces)`` on matching blocks of rows of ``arrays``, one block per CPU thread
        (``RowThreads.run``): for row-by-row work, the same bits as ``function(*arrays)``."""
        self.row_threads.run(function, *arrays)

    def standard_normal(self, shape):
        """Draw N(0, 1) noise of ``shape`` in the backend's dtype (the eps of eq. (5))."""
        return self.rng.standard_normal(shape, dtype=self.dtype)

    def uniform(self, shape):
        """Draw U[0, 1) values of ``shape`` in the backend's dtype."""
        return self.rng.random(shape, dtype=self.dtype)

    def permutation(self, n):
        """A random permutation of ``range(n)`` as a device index array (argsort of uniforms)."""
        return self.xp.argsort(self.rng.random(n))

    def zeros(self, shape):
        return self.xp.zeros(shape, dtype=self.dtype)

    def to_device(self, array):
        """Copy a host (NumPy) array to the backend's device, in the backend's dtype. Explicit, never hidden."""
        return self.xp.asarray(array, dtype=self.dtype)

    def to_numpy(self, array):
        """Copy a backend array (or a 0-d result) back to the host as a NumPy array."""
        if hasattr(array, "get"):
            return array.get()
        return np.asarray(array)

    def synchronize(self):
        """Wait for queued device work to finish (for honest timings); a no-op on the CPU."""
        if self.name == "cupy":
            self.xp.cuda.get_current_stream().synchronize()

    def rng_state(self):
        """The random generator's state: NumPy's ``bit_generator.state`` (a JSON-serialisable dict),
        or, for CuPy's cuRAND generators, whose state is a device array ``_state``,
        ``{"bit_generator": its class name, "device_state": that array copied to the host}``."""
        bit_generator = self.rng.bit_generator
        state = getattr(bit_generator, "state", None)
        if isinstance(state, dict):
            return state
        device_state = getattr(bit_generator, "_state", None)
        if device_state is None:
            raise BackendUnavailable(f"the random state of the {self.name} backend's {type(bit_generator).__name__} "
                                     f"cannot be saved")
        return {"bit_generator": type(bit_generator).__name__, "device_state": self.to_numpy(device_state).copy()}

    def set_rng_state(self, state):
        """Restore a state returned by ``rng_state`` (of a backend of the same kind: BackendUnavailable
        for a NumPy state on CuPy or the other way round; ValueError for one of another generator)."""
        bit_generator = self.rng.bit_generator
        if "device_state" not in state:
            if not isinstance(getattr(bit_generator, "state", None), dict):
                raise BackendUnavailable(f"the {self.name} backend cannot take a NumPy random state")
            bit_generator.state = state
            return
        device_state = getattr(bit_generator, "_state", None)
        if device_state is None:
            raise BackendUnavailable(f"the {self.name} backend cannot take a CuPy random state")
        saved = state["device_state"]
        if state["bit_generator"] != type(bit_generator).__name__ or tuple(saved.shape) != tuple(device_state.shape):
            raise ValueError(f"a {state['bit_generator']} state of shape {tuple(saved.shape)} does not fit this "
                             f"{type(bit_generator).__name__} of shape {tuple(device_state.shape)}")
        device_state[...] = self.xp.asarray(saved.astype(device_state.dtype))


class ScipySpecial:
    """``scipy.special``, imported on first use: its import (~0.2 s) takes longer than the rest of
    minivae's, and neither ``import minivae`` nor a Bernoulli training step needs it (the fused
    kernels compute the sigmoid themselves)."""

    def __getattr__(self, name):
        import scipy.special

        return getattr(scipy.special, name)

    def __repr__(self):
        return "ScipySpecial() (scipy.special, imported on first use)"


def numpy_backend(dtype="float32", seed=0, threads=None):
    """The CPU backend: NumPy with scipy.special, on ``threads`` threads (default ``cpu_thread_count()``),
    with the fused Numba kernels of ``cpu_kernels`` when they are on and installed."""
    row_threads = RowThreads(cpu_thread_count() if threads is None else threads)
    return Backend("numpy", np, ScipySpecial(), dtype=dtype, seed=seed, kernels=cpu_kernels(row_threads),
                   row_threads=row_threads)


def cpu_kernels(row_threads):
    """The fused CPU kernels (minivae/kernels/cpu.py) on ``row_threads``; None, for the plain NumPy
    code, when the environment says ``MINIVAE_KERNELS=plain`` or Numba does not import (said once,
    as a warning). ``MINIVAE_KERNELS=fused`` (or unset) asks for the kernels."""
    choice = os.environ.get("MINIVAE_KERNELS", "fused").strip().lower() or "fused"
    if choice not in KERNEL_CHOICES:
        raise ValueError(f"MINIVAE_KERNELS={choice!r} is not one of {KERNEL_CHOICES}: unset it, or set it to "
                         f"'plain' to run the plain NumPy code")
    if choice == "plain":
        warnings.warn("MINIVAE_KERNELS=plain: minivae runs the plain NumPy code on the CPU, not its fused kernels")
        return None
    try:
        from .kernels.cpu import CpuKernels
    except ImportError as exc:  # also what Numba raises for a NumPy version it does not support
        warnings.warn(f"minivae runs the plain NumPy code on the CPU: its fused kernels need Numba ({exc}); "
                      f"`pip install numba` for them")
        return None
    return CpuKernels(row_threads)


def cupy_backend(dtype="float32", seed=0):
    """The GPU backend: CuPy with cupyx.scipy.special. Raises BackendUnavailable, with one line
    saying what is missing and how to fix it, when CuPy does not import or sees no CUDA device."""
    reason = cupy_unavailable_reason()
    if reason is not None:
        raise BackendUnavailable(f"cannot use the cupy backend: {reason}; {_CUPY_INSTALL_HINT}")
    import cupy
    import cupyx.scipy.special

    return Backend("cupy", cupy, cupyx.scipy.special, dtype=dtype, seed=seed, kernels=cuda_kernels.build(cupy))


def cupy_unavailable_reason():
    """None when CuPy imports and sees at least one CUDA device; otherwise why not, in a few words."""
    try:
        import cupy
    except ImportError as exc:
        return f"CuPy is not installed ({exc})"
    except Exception as exc:  # a broken CUDA install can raise anything at import time
        return f"CuPy failed to import ({type(exc).__name__}: {exc})"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        return f"CuPy is installed but cannot reach a CUDA device ({type(exc).__name__}: {exc})"
    if count == 0:
        return "CuPy is installed but no CUDA device is visible"
    return None


def get_backend(name="auto", dtype="float32", seed=0):
    """Build a Backend by name: "numpy", "cupy", or "auto" (CuPy only when it imports and a CUDA
    device is visible, otherwise NumPy)."""
    if name == "numpy":
        return numpy_backend(dtype, seed)
    if name == "cupy":
        return cupy_backend(dtype, seed)
    if name == "auto":
        if cupy_unavailable_reason() is None:
            return cupy_backend(dtype, seed)
        return numpy_backend(dtype, seed)
    raise ValueError(f"unknown backend {name!r}: choose one of {BACKEND_NAMES}")
