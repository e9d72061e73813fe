"""The array backend: which array module (``xp``) the model computes with, in which dtype, with
which seeded random generator.

NumPy runs on the CPU; CuPy runs the same code on a CUDA GPU. This is the only module that imports
CuPy. Compute modules (layers, gaussian, likelihoods, model, optim) never import numpy or cupy
themselves: they use ``backend.xp`` and ``backend.special`` of the Backend they were built with.
"""

import os
import warnings

import numpy as np
import scipy.special

from .errors import BackendUnavailable
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
        special: ``scipy.special`` or ``cupyx.scipy.special``.
        dtype: the floating dtype every array of the model is created in.
        rng: a ``Generator`` of ``xp.random``, seeded once; a seed reproduces a NumPy run bit for bit.
        kernels: fused elementwise kernels computing the same formulas as the plain ``xp`` code in
            one pass each (CuPy: see ``cupy_kernels``; NumPy: ``cpu_kernels``), or None to use the plain code.
        threads: how many CPU threads ``split_rows`` may use at once (1 on a GPU: there one pass is
            one kernel already).
        row_threads: the ``RowThreads`` behind ``split_rows`` (shared by ``with_seed`` copies).
    """

    def __init__(self, name, xp, special, dtype="float32", seed=0, kernels=None, threads=1, row_threads=None):
        if str(dtype) not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        self.name = name
        self.xp = xp
        self.special = special
        self.dtype = xp.dtype(str(dtype))
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
        """The random generator's state as a JSON-serialisable dict (NumPy only)."""
        if self.name != "numpy":
            raise BackendUnavailable(f"saving the random state of the {self.name} backend is not supported")
        return self.rng.bit_generator.state

    def set_rng_state(self, state):
        """Restore a state returned by ``rng_state`` (NumPy only)."""
        if self.name != "numpy":
            raise BackendUnavailable(f"restoring the random state of the {self.name} backend is not supported")
        self.rng.bit_generator.state = state


def numpy_backend(dtype="float32", seed=0, threads=None):
    """The CPU backend: NumPy with scipy.special, on ``threads`` threads (default ``cpu_thread_count()``),
    with the fused Numba kernels of ``cpu_kernels`` when they are on and installed."""
    row_threads = RowThreads(cpu_thread_count() if threads is None else threads)
    return Backend("numpy", np, scipy.special, dtype=dtype, seed=seed, kernels=cpu_kernels(row_threads),
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

    return Backend("cupy", cupy, cupyx.scipy.special, dtype=dtype, seed=seed, kernels=cupy_kernels(cupy))


def cupy_kernels(cupy):
    """Fused CuPy ElementwiseKernels, one pass each, for the elementwise work of a training step.
    Each computes exactly the formulas of the plain ``xp`` code it replaces (its reference in the
    tests, which compare them wherever a GPU is present); ``T`` is float32 or float64.

    - ``bernoulli_nll_and_grad(l, x) -> (nll terms, dlogits)``: eq. (8) and (10), softplus as
      (l + |l|)/2 + log1p(exp(-|l|)), sigmoid as exp(l - softplus) (likelihoods.Bernoulli).
    - ``reparameterize(mu, logvar, eps) -> z``: eq. (5), broadcasting over the L samples of eps.
    - ``kl_terms(mu, logvar) -> KL terms``: eq. (7) before its sum over j.
    - ``head_gradient(sum_l dz, sum_l dz*eps, mu, logvar) -> (dmu, dlogvar)``: eq. (18).
    """
    from types import SimpleNamespace

    kernel = cupy.ElementwiseKernel
    return SimpleNamespace(
        bernoulli_nll_and_grad=kernel(
            "T l, T x", "T nll, T dlogits",
            "T a = fabs(l); T softplus = (l + a) * (T)0.5 + log1p(exp(-a));"
            " nll = softplus - x * l; dlogits = exp(l - softplus) - x;",
            "minivae_bernoulli_nll_and_grad"),
        reparameterize=kernel(
            "T mu, T logvar, T eps", "T z", "z = mu + eps * exp((T)0.5 * logvar);", "minivae_reparameterize"),
        kl_terms=kernel(
            "T mu, T logvar", "T kl", "kl = (T)-0.5 * ((T)1 + logvar - mu * mu - exp(logvar));", "minivae_kl_terms"),
        head_gradient=kernel(
            "T dz_sum, T dz_eps_sum, T mu, T logvar", "T dmu, T dlogvar",
            "T std = exp((T)0.5 * logvar); dmu = dz_sum + mu;"
            " dlogvar = dz_eps_sum * (T)0.5 * std + (T)0.5 * (exp(logvar) - (T)1);",
            "minivae_head_gradient"),
    )


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
