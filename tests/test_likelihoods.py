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
    return make_likelihood(name, backend, variance=0.7 if name == "gaussian" else None)


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


def test_the_registry_holds_each_likelihood_once_with_what_it_declares(make_backend):
    """One registry (issue 21): each class declares its name, the variance it takes, its outputs per
    value, its data range and its equations; (gaussian, number) and (gaussian, learned) are two entries."""
    from minivae.likelihoods import LEARNED, LIKELIHOODS, NUMBER, REGISTRY, likelihood_class

    assert LIKELIHOODS == ("bernoulli", "gaussian", "continuous-bernoulli")
    assert sorted(REGISTRY) == sorted([("bernoulli", None), ("gaussian", NUMBER), ("gaussian", LEARNED),
                                       ("continuous-bernoulli", None)])
    for (name, kind), cls in REGISTRY.items():
        assert (cls.name, cls.variance_kind) == (name, kind)
        assert set(cls.equations) == {"nll", "gradient", "mean"} and cls.outputs_per_value in (1, 2)
    supports = {name: cls.support for (name, _), cls in REGISTRY.items()}
    assert supports == {"bernoulli": (0.0, 1.0), "continuous-bernoulli": (0.0, 1.0), "gaussian": None}
    assert likelihood_class("gaussian", LEARNED).outputs_per_value == 2
    assert likelihood_class("gaussian", None) is likelihood_class("gaussian", 0.3) is Gaussian
    assert likelihood_class("bernoulli", 1.0) is likelihood_class("bernoulli") is Bernoulli  # 1.0: configs' default
    assert make_likelihood("gaussian", make_backend()).variance == 1.0


@pytest.mark.parametrize("name, variance, message", [
    ("bernoulli", "learned", "variance='learned' does not apply to the bernoulli likelihood, which has no variance"),
    ("continuous-bernoulli", 0.5, "variance=0.5 does not apply to the continuous-bernoulli likelihood, which has no"),
    ("gaussian", -1.0, "the Gaussian likelihood's variance must be a finite number > 0, got -1.0"),
])
def test_a_variance_the_likelihood_does_not_take_is_refused(make_backend, name, variance, message):
    """issue 26: `VAE(likelihood="bernoulli", variance="learned")` trained a plain Bernoulli model."""
    with pytest.raises(ValueError, match=f"^{message}"):
        make_likelihood(name, make_backend(), variance)


def test_the_data_range_check_is_the_classs(make_backend):
    """Driven by each class's support, not by the name "bernoulli": the continuous Bernoulli is checked too."""
    backend = make_backend("float64")
    inside, outside = np.array([[0.0, 0.5, 1.0]]), np.array([[0.0, 1.5, 1.0]])
    for name in ("bernoulli", "continuous-bernoulli"):
        make_likelihood(name, backend).check_data(inside)
        with pytest.raises(ValueError, match=r"x holds values in \[0, 1.5\]"):
            make_likelihood(name, backend).check_data(outside)
    make_likelihood("gaussian", backend).check_data(outside * 255 - 3)  # any real number
    make_likelihood("gaussian", backend, "learned").check_data(outside * 255 - 3)
