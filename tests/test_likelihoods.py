"""Decoder likelihoods: gradients against finite differences; values against scipy.stats; stability."""

import numpy as np
import pytest
import scipy.stats
from hypothesis import given
from hypothesis import strategies as st

from minivae.gradcheck import DEFAULT_TOLERANCE, gradient_error
from minivae.likelihoods import Bernoulli, Gaussian, make_likelihood

batch = st.integers(1, 6)
width = st.integers(1, 9)
seeds = st.integers(0, 2**31 - 1)


def _likelihood(name, backend):
    return make_likelihood(name, backend, variance=0.7)


@pytest.mark.parametrize("name", ["bernoulli", "gaussian"])
@given(n=batch, d=width, seed=seeds)
def test_likelihood_gradient(make_backend, name, n, d, seed):
    backend = make_backend("float64", seed)
    likelihood = _likelihood(name, backend)
    out = backend.standard_normal((n, d)) * 3
    x = backend.uniform((n, d))  # grey levels in [0, 1] (valid for both likelihoods)
    dnll = backend.standard_normal((n,))
    nll, dout = likelihood.nll_and_grad(out, x)
    assert float(abs(nll - likelihood.nll(out, x)).max()) <= 1e-12 * float(abs(nll).max())
    # nll_and_grad gives d(sum nll)/dout; scaling each row by dnll gives the contracted gradient
    assert gradient_error(lambda: likelihood.nll(out, x), out, dout * dnll[:, None], dnll) <= DEFAULT_TOLERANCE


def test_bernoulli_nll_matches_scipy(make_backend):
    backend = make_backend("float64", 1)
    logits = backend.standard_normal((5, 7)) * 4
    x = (backend.uniform((5, 7)) < 0.5) * 1.0
    ours = backend.to_numpy(Bernoulli(backend).nll(logits, x))
    p = scipy.special.expit(backend.to_numpy(logits))
    expected = -scipy.stats.bernoulli.logpmf(backend.to_numpy(x), p).sum(axis=1)
    np.testing.assert_allclose(ours, expected, rtol=1e-10)


def test_bernoulli_nll_of_grey_levels_is_binary_cross_entropy(make_backend):
    backend = make_backend("float64", 2)
    logits = backend.standard_normal((3, 4))
    x = backend.uniform((3, 4))
    ours = backend.to_numpy(Bernoulli(backend).nll(logits, x))
    p, xh = scipy.special.expit(backend.to_numpy(logits)), backend.to_numpy(x)
    np.testing.assert_allclose(ours, -(xh * np.log(p) + (1 - xh) * np.log1p(-p)).sum(axis=1), rtol=1e-10)


def test_gaussian_nll_matches_scipy(make_backend):
    backend = make_backend("float64", 3)
    y, x = backend.standard_normal((4, 6)), backend.standard_normal((4, 6))
    ours = backend.to_numpy(Gaussian(backend, variance=0.25).nll(y, x))
    expected = -scipy.stats.norm.logpdf(backend.to_numpy(x), backend.to_numpy(y), 0.5).sum(axis=1)
    np.testing.assert_allclose(ours, expected, rtol=1e-12)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@given(logit=st.floats(-1e4, 1e4), pixel=st.sampled_from([0.0, 0.3, 1.0]))
def test_bernoulli_is_finite_and_exact_at_extreme_logits(make_backend, dtype, logit, pixel):
    backend = make_backend(dtype)
    xp = backend.xp
    logits = backend.to_device(np.array([[logit, -logit]]))
    x = backend.to_device(np.array([[pixel, pixel]]))
    nll, dlogits = Bernoulli(backend).nll_and_grad(logits, x)
    assert bool(xp.isfinite(nll).all()) and bool(xp.isfinite(dlogits).all())
    assert nll.dtype == dlogits.dtype == backend.dtype
    assert float(dlogits.min()) >= -1 and float(dlogits.max()) <= 1
    if abs(logit) >= 100:  # softplus(l) = l or 0 to float precision
        expected = max(logit, 0) - pixel * logit + max(-logit, 0) + pixel * logit
        assert float(nll[0]) == pytest.approx(expected, rel=1e-6)


def test_unknown_likelihood_and_bad_variance_are_refused(make_backend):
    with pytest.raises(ValueError, match="unknown likelihood 'poisson'"):
        make_likelihood("poisson", make_backend())
    for variance in (0.0, -1.0, float("inf"), float("nan")):  # inf: issue 13, item 10
        with pytest.raises(ValueError, match="variance must be a finite number > 0"):
            Gaussian(make_backend(), variance=variance)


def test_softplus_does_not_overflow_at_the_largest_float32_logits(make_backend):
    """issue 13, item 11: max(l, 0) written (l + |l|) / 2 overflowed for float32 logits above ~1.7e38."""
    backend = make_backend("float32")
    largest = float(np.finfo(np.float32).max)
    logits = backend.to_device(np.array([[largest, -largest, 2e38, 0.0]]))
    x = backend.to_device(np.array([[1.0, 0.0, 1.0, 0.5]]))
    nll, dlogits = Bernoulli(backend).nll_and_grad(logits, x)
    assert bool(backend.xp.isfinite(nll).all()) and bool(backend.xp.isfinite(dlogits).all())
    assert float(nll[0]) == pytest.approx(np.log(2), rel=1e-6)  # only the logit 0 costs anything
