"""The fused elementwise kernels a backend offers (CuPy's, and the device guard's stand-ins) against
the plain xp code they replace: the same formulas, so the same numbers to rounding."""

import pytest

from minivae.gaussian import head_gradient, kl_divergence, reparameterize
from minivae.likelihoods import Bernoulli


def _close(backend, a, b):
    rtol = 1e-12 if backend.dtype.name == "float64" else 2e-6
    a, b = backend.to_numpy(a), backend.to_numpy(b)
    scale = max(float(abs(b).max()), 1.0)
    assert float(abs(a - b).max()) <= rtol * scale


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("n_samples", [1, 3])
def test_fused_kernels_match_the_plain_code(make_backend, dtype, n_samples):
    backend = make_backend(dtype, 4)
    kernels = backend.kernels
    if kernels is None:
        assert backend.name in ("numpy", "device-guard")  # only CuPy-like backends bring kernels
        return
    xp = backend.xp
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
