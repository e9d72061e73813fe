"""The Gaussian posterior: gradients against finite differences, and forwards against independent truths
(sample moments, Monte Carlo KL, scipy's normal density)."""

import numpy as np
import scipy.stats
from hypothesis import given
from hypothesis import strategies as st

from minivae.gaussian import (kl_divergence, kl_divergence_backward, kl_per_dimension, reparameterize,
                              reparameterize_backward)
from minivae.gradcheck import DEFAULT_TOLERANCE, gradient_error

batch = st.integers(1, 6)
width = st.integers(1, 9)
n_samples = st.integers(1, 3)
seeds = st.integers(0, 2**31 - 1)


def _posterior(backend, n, j):
    mu = backend.standard_normal((n, j))
    logvar = backend.standard_normal((n, j))
    return mu, logvar


@given(batch, width, n_samples, seeds)
def test_reparameterize_gradients(make_backend, n, j, n_samples, seed):
    backend = make_backend("float64", seed)
    xp = backend.xp
    mu, logvar = _posterior(backend, n, j)
    eps = backend.standard_normal((n_samples, n, j))
    dz = backend.standard_normal((n_samples * n, j))
    dmu, dlogvar = reparameterize_backward(xp, dz, logvar, eps)

    def f():
        return reparameterize(xp, mu, logvar, eps)

    assert gradient_error(f, mu, dmu, dz) <= DEFAULT_TOLERANCE
    assert gradient_error(f, logvar, dlogvar, dz) <= DEFAULT_TOLERANCE


@given(batch, width, seeds)
def test_kl_gradients(make_backend, n, j, seed):
    backend = make_backend("float64", seed)
    xp = backend.xp
    mu, logvar = _posterior(backend, n, j)
    dkl = backend.standard_normal((n,))
    dmu, dlogvar = kl_divergence_backward(xp, mu, logvar, dkl)

    def f():
        return kl_divergence(xp, mu, logvar)

    assert gradient_error(f, mu, dmu, dkl) <= DEFAULT_TOLERANCE
    assert gradient_error(f, logvar, dlogvar, dkl) <= DEFAULT_TOLERANCE
    # dkl=None is the gradient of the sum over the batch
    dmu_sum, dlogvar_sum = kl_divergence_backward(xp, mu, logvar)
    ones = xp.ones((n,))
    assert gradient_error(f, mu, dmu_sum, ones) <= DEFAULT_TOLERANCE
    assert gradient_error(f, logvar, dlogvar_sum, ones) <= DEFAULT_TOLERANCE


def test_reparameterized_samples_have_mean_mu_and_variance_exp_logvar(make_backend):
    """The bug of two public from-scratch VAEs (exp(logvar) used as the standard deviation) fails here."""
    backend = make_backend("float64", 7)
    xp = backend.xp
    mu = backend.to_device(np.array([[0.5, -2.0, 0.0]]))
    logvar = backend.to_device(np.array([[0.0, 1.5, -2.0]]))
    n = 200_000
    z = reparameterize(xp, mu, logvar, backend.standard_normal((n, 1, 3)))
    z = backend.to_numpy(z)
    variance = np.exp(backend.to_numpy(logvar)[0])
    standard_error_of_mean = np.sqrt(variance / n)
    np.testing.assert_array_less(np.abs(z.mean(axis=0) - backend.to_numpy(mu)[0]), 5 * standard_error_of_mean)
    # the sample variance of n normal draws has relative standard error sqrt(2/n) ~ 0.3%
    np.testing.assert_allclose(z.var(axis=0), variance, rtol=0.02)


def test_kl_matches_monte_carlo_estimate(make_backend):
    """Eq. (7) and its terms, eq. (47)'s KL per dimension, against Monte Carlo means of log q - log p
    (scipy's normal densities, eq. (21)), dimension by dimension."""
    backend = make_backend("float64", 11)
    xp = backend.xp
    mu = backend.to_device(np.array([[0.3, -1.2], [2.0, 0.1]]))
    logvar = backend.to_device(np.array([[0.5, -1.0], [-0.3, 1.2]]))
    n = 200_000
    eps = backend.standard_normal((n, 2, 2))
    z = backend.to_numpy(reparameterize(xp, mu, logvar, eps).reshape(n, 2, 2))
    per_dimension = backend.to_numpy(kl_per_dimension(xp, mu, logvar))
    kl_exact = backend.to_numpy(kl_divergence(xp, mu, logvar, backend.kernels))
    mu_host, logvar_host = backend.to_numpy(mu), backend.to_numpy(logvar)
    samples = (scipy.stats.norm.logpdf(z, loc=mu_host, scale=np.exp(0.5 * logvar_host))
               - scipy.stats.norm.logpdf(z))  # (n, B, J)
    kl_mc, kl_standard_error = samples.mean(axis=0), samples.std(axis=0) / np.sqrt(n)
    np.testing.assert_array_less(np.abs(kl_mc - per_dimension), 5 * kl_standard_error)
    np.testing.assert_allclose(kl_exact, per_dimension.sum(axis=1), rtol=1e-12)


def test_kl_of_the_prior_is_zero_and_positive_elsewhere(make_backend):
    backend = make_backend("float64")
    xp = backend.xp
    zeros = backend.zeros((1, 4))
    assert float(kl_divergence(xp, zeros, zeros)[0]) == 0.0
    mu, logvar = _posterior(backend, 5, 4)
    assert float(kl_divergence(xp, mu, logvar).min()) > 0


@given(st.floats(-80, 80), st.floats(-1e3, 1e3))
def test_kl_and_its_gradient_stay_finite_for_extreme_inputs(make_backend, logvar_value, mu_value):
    backend = make_backend("float32")
    xp = backend.xp
    mu = backend.to_device(np.full((2, 3), mu_value))
    logvar = backend.to_device(np.full((2, 3), logvar_value))
    kl = kl_divergence(xp, mu, logvar)
    dmu, dlogvar = kl_divergence_backward(xp, mu, logvar)
    for array in (kl, dmu, dlogvar):
        assert bool(xp.isfinite(array).all())
        assert array.dtype == xp.float32
