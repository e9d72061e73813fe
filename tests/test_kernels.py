"""The fused elementwise kernels a backend offers (NumPy's Numba kernels, CuPy's, and the device
guard's stand-ins for CuPy's) against the plain xp code they replace: the same formulas, so the same
numbers to rounding. This file is the default tier's check of every fused kernel (the device-guard
backends of the other tests run in the slow tier)."""

import ast
import inspect
import pathlib

import warnings

import pytest

import device_guard
import minivae
from device_guard import backend_by_name, guard_kernels
from minivae.backend import cpu_kernels, cupy_unavailable_reason
from minivae.conv import col2im, conv_output_size, gathered_col2im
from minivae.gaussian import head_gradient, kl_divergence, reparameterize
from minivae.kernels import cuda
from minivae.likelihoods import Bernoulli


def _close(backend, a, b):
    rtol = 1e-12 if backend.dtype.name == "float64" else 2e-6
    a, b = backend.to_numpy(a), backend.to_numpy(b)
    scale = max(float(abs(b).max()), 1.0)
    assert float(abs(a - b).max()) <= rtol * scale


def _backends_with_kernels():
    """The backends that bring fused kernels here: the device guard's (CuPy's kernels, on NumPy),
    NumPy's Numba kernels unless Numba is missing or MINIVAE_KERNELS=plain, and CuPy's with a GPU.
    (The plain device guard and a NumPy without kernels have nothing to compare: no case for them.)"""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cpu_kernels says why it has none; the list below says it too
        numba_kernels = cpu_kernels(None) is not None
    return (["device-guard-fused"] + (["numpy"] if numba_kernels else [])
            + (["cupy"] if cupy_unavailable_reason() is None else []))


@pytest.mark.parametrize("backend_name", _backends_with_kernels())
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("n_samples", [1, 3])
def test_fused_kernels_match_the_plain_code(backend_name, dtype, n_samples):
    backend = backend_by_name(backend_name)(dtype, 4)
    kernels = backend.kernels
    assert kernels is not None
    xp = backend.xp
    device_guard.CALLS.clear()
    mu, logvar = backend.standard_normal((5, 3)), backend.standard_normal((5, 3)) * 3
    eps = backend.standard_normal((n_samples, 5, 3))
    dz = backend.standard_normal((n_samples * 5, 3))
    _close(backend, reparameterize(xp, mu, logvar, eps, kernels), reparameterize(xp, mu, logvar, eps))
    _close(backend, kl_divergence(xp, mu, logvar, kernels), kl_divergence(xp, mu, logvar))
    _close(backend, head_gradient(xp, dz, mu, logvar, eps, kernels), head_gradient(xp, dz, mu, logvar, eps))
    logits = backend.standard_normal((4, 7)) * 30  # far into both tails
    x = backend.uniform((4, 7))
    fused = Bernoulli(backend).nll_and_grad(logits, x)
    backend.kernels = None
    plain = Bernoulli(backend).nll_and_grad(logits, x)
    for a, b in zip(fused, plain):
        _close(backend, a, b)
    if getattr(kernels, "col2im_gather", None) is not None:  # CuPy's (and the guard's): the same sums, bit for bit
        for image_shape, kernel, stride, padding in (((3, 2, 6, 5), (4, 4), 2, 1), ((2, 3, 5, 7), (3, 2), 1, 0),
                                                     ((2, 2, 7, 8), (5, 3), 3, 2), ((2, 2, 7, 8), (2, 1), 3, 0),
                                                     ((2, 1, 3, 3), (2, 2), 1, 2)):  # stride > kernel, padding >= kernel
            out_size = tuple(conv_output_size(n, k, stride, padding) for n, k in zip(image_shape[2:], kernel))
            cols = backend.standard_normal((out_size[0] * out_size[1] * image_shape[0],
                                            kernel[0] * kernel[1] * image_shape[1]))
            gathered = gathered_col2im(xp, kernels.col2im_gather, cols, image_shape, kernel, stride, padding, out_size)
            added = col2im(xp, cols, image_shape, kernel, stride, padding, out_size)
            assert bool((gathered == added).all()), (image_shape, kernel, stride, padding)
    if backend_name == "device-guard-fused":  # the guard records its kernel calls: every CUDA kernel was compared
        assert {call[1] for call in device_guard.CALLS if call[0] == "kernels"} == set(cuda.SOURCES)


def test_the_guard_offers_the_cuda_kernels_with_their_arities():
    """The device guard's stand-ins are the kernels of minivae.kernels.cuda, name for name, and each
    takes as many inputs as the CUDA kernel declares."""
    guard = vars(guard_kernels())
    assert sorted(guard) == sorted(cuda.SOURCES)
    for name, source in cuda.SOURCES.items():
        n_inputs = len(source.in_params.split(","))
        assert len(inspect.signature(guard[name]._body).parameters) == n_inputs, name


def test_every_kernel_the_library_calls_is_a_cuda_kernel():
    """``kernels.<name>`` in the compute modules names a kernel of minivae.kernels.cuda."""
    used = set()
    for path in pathlib.Path(minivae.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and isinstance(node.value, (ast.Name, ast.Attribute)):
                owner = node.value.id if isinstance(node.value, ast.Name) else node.value.attr
                if owner == "kernels":
                    used.add(node.attr)
    assert used and used <= set(cuda.SOURCES), used - set(cuda.SOURCES)
