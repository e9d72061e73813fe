"""The continuous Bernoulli and the learned-variance Gaussian (sections 19 and 20 of docs/derivation.md):
gradients against finite differences, values against independent truths (quadrature, mpmath,
scipy.stats), stability at every finite logit, and mutations of each backward caught."""

import math

import mpmath
import numpy as np
import pytest
import scipy.integrate
import scipy.stats
from hypothesis import given
from hypothesis import strategies as st

from minivae import likelihoods
from minivae.gradcheck import DEFAULT_TOLERANCE, gradient_error
from minivae.likelihoods import (MIN_LOGVAR, ContinuousBernoulli, LearnedVarianceGaussian, cb_log_normalizer,
                                 cb_log_normalizer_grad, make_likelihood)

seeds = st.integers(0, 2**31 - 1)
NEW_LIKELIHOODS = [("continuous-bernoulli", 1.0), ("gaussian", "learned")]


def _inputs(backend, name, n, d, scale):
    """Decoder outputs and data for one likelihood: logits spread over scale (continuous Bernoulli),
    or [y | r] with r reaching below the log-variance floor (learned Gaussian)."""
    if name == "continuous-bernoulli":
        return backend.standard_normal((n, d)) * scale, backend.uniform((n, d))
    y = backend.uniform((n, d))
    raw = MIN_LOGVAR * backend.uniform((n, d)) * 1.3 + backend.standard_normal((n, d))  # both sides of the floor
    return backend.xp.concatenate([y, raw], axis=1), backend.uniform((n, d))


@pytest.mark.parametrize("name, variance", NEW_LIKELIHOODS)
@given(n=st.integers(1, 6), d=st.integers(1, 9), scale=st.sampled_from([1e-3, 0.5, 3.0, 30.0]), seed=seeds)
def test_new_likelihood_gradient(make_backend, name, variance, n, d, scale, seed):
    backend = make_backend("float64", seed)
    likelihood = make_likelihood(name, backend, variance)
    out, x = _inputs(backend, name, n, d, scale)
    dnll = backend.standard_normal((n,))  # a random upstream gradient per row
    nll, dout = likelihood.nll_and_grad(out, x)
    assert float(abs(nll - likelihood.nll(out, x)).max()) <= 1e-12 * max(float(abs(nll).max()), 1.0)
    assert gradient_error(lambda: likelihood.nll(out, x), out, dout * dnll[:, None], dnll) <= DEFAULT_TOLERANCE


def test_continuous_bernoulli_nll_outside_0_1_is_infinite():
    """issue 26: the density is 0 outside [0, 1], so the NLL is +inf there (``nll(l=0, x=2)`` was 0); a row
    with one such value is +inf, the others are untouched."""
    likelihood = ContinuousBernoulli(_numpy64())
    logits = np.array([[0.0, 0.3], [0.0, 0.3], [-2.0, 5.0]])
    x = np.array([[2.0, 0.5], [0.2, 0.5], [0.0, -1e-9]])
    inside = likelihood.nll(logits[1:2], x[1:2])
    for nll in (likelihood.nll(logits, x), likelihood.nll_and_grad(logits, x)[0]):
        assert nll[0] == np.inf and nll[2] == np.inf
        assert nll[1] == inside[0] and np.isfinite(inside[0])


@pytest.mark.parametrize("logit", [0.0, 1e-12, 1e-4, -0.3, 0.999, 1.0, -1.001, 4.0, -25.0, 200.0])
def test_continuous_bernoulli_density_integrates_to_one(logit):
    """Eq. (35) is a density on [0, 1] (scipy's adaptive quadrature), and eq. (38) is its mean."""
    likelihood = ContinuousBernoulli(_numpy64())

    def density(x):
        return math.exp(-float(likelihood.nll(np.array([[logit]]), np.array([[x]]))[0]))

    total, _ = scipy.integrate.quad(density, 0.0, 1.0, epsabs=0, epsrel=1e-12, limit=200)
    assert total == pytest.approx(1.0, rel=1e-9)
    mean, _ = scipy.integrate.quad(lambda x: x * density(x), 0.0, 1.0, epsabs=0, epsrel=1e-12, limit=200)
    ours = float(likelihood.mean(np.array([[logit]]))[0, 0])
    assert ours == pytest.approx(mean, rel=1e-9)


def _numpy64():
    from minivae.backend import get_backend

    return get_backend("numpy", dtype="float64")


LOGITS = np.concatenate([[0.0], np.logspace(-30, 3, 120), -np.logspace(-30, 3, 120), np.linspace(-3, 3, 241),
                         [np.nextafter(1.0, 0.0), -np.nextafter(1.0, 2.0), 88.0, -700.0, 1e30]])


def _truth(function, logit):
    mpmath.mp.dps = 120  # enough digits for 1/l - 1/sinh(l) at l = 1e-30
    if logit == 0:
        return math.log(2.0) if function == "log C" else 0.0
    value = mpmath.mpf(float(logit))
    return float(mpmath.log(value / mpmath.tanh(value / 2)) if function == "log C" else 1 / value - 1 / mpmath.sinh(value))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_log_normalizer_and_its_gradient_are_accurate_to_the_dtypes_precision(dtype):
    """Eq. (36), (37) against 120-digit mpmath, across the series switch at |l| = 1: within 16 unit
    roundoffs in float32 and float64 (section 19's bound is 12.4 plus the rounding of each step)."""
    logits = LOGITS.astype(dtype)
    roundoff = np.finfo(dtype).eps / 2
    for function, ours in (("log C", cb_log_normalizer(np, logits)), ("g", cb_log_normalizer_grad(np, logits))):
        assert ours.dtype == logits.dtype
        truth = np.array([_truth(function, float(logit)) for logit in logits])
        error = np.abs(ours.astype(np.float64) - truth) / np.maximum(np.abs(truth), np.finfo(np.float64).tiny)
        assert error.max() <= 16 * roundoff, (function, float(logits[error.argmax()]))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@given(logit=st.floats(-1e30, 1e30), pixel=st.sampled_from([0.0, 0.3, 1.0]))
def test_continuous_bernoulli_is_finite_at_every_logit(make_backend, dtype, logit, pixel):
    backend = make_backend(dtype)
    likelihood = ContinuousBernoulli(backend)
    logits = backend.to_device(np.array([[logit, -logit]]))
    x = backend.to_device(np.array([[pixel, pixel]]))
    nll, dlogits = likelihood.nll_and_grad(logits, x)
    mean = likelihood.mean(logits)
    for array in (nll, dlogits, mean):
        assert bool(backend.xp.isfinite(array).all()) and array.dtype == backend.dtype
    assert float(mean.min()) >= 0 and float(mean.max()) <= 1
    assert float(abs(dlogits - (mean - x)).max()) <= 1e-6  # eq. (37): the gradient is E[x] - x


def test_learned_gaussian_nll_matches_scipy(make_backend):
    backend = make_backend("float64", 3)
    likelihood = LearnedVarianceGaussian(backend)
    y, x = backend.standard_normal((4, 6)), backend.standard_normal((4, 6))
    raw = backend.standard_normal((4, 6))
    ours = backend.to_numpy(likelihood.nll(backend.xp.concatenate([y, raw], axis=1), x))
    logvar = MIN_LOGVAR + np.logaddexp(0.0, backend.to_numpy(raw) - MIN_LOGVAR)  # eq. (39), independently
    expected = -scipy.stats.norm.logpdf(backend.to_numpy(x), backend.to_numpy(y), np.exp(0.5 * logvar)).sum(axis=1)
    np.testing.assert_allclose(ours, expected, rtol=1e-12)


def test_the_log_variance_floor_holds_on_a_constant_pixel(make_backend):
    """A value the decoder predicts exactly pulls r down without end; v stays above the floor, the NLL
    bounded below by 0.5 (log 2pi + v_min), and the gradient of r goes to 0 as r sinks below it."""
    backend = make_backend("float64")
    likelihood = LearnedVarianceGaussian(backend)
    raws = np.array([[0.0, -10.0, -30.0, -100.0, -1000.0]])
    x = np.zeros_like(raws)
    out = backend.to_device(np.concatenate([x, raws], axis=1))
    nll, dout = likelihood.nll_and_grad(out, backend.to_device(x))
    logvar = backend.to_numpy(likelihood.logvar(backend.to_device(raws)))
    assert (logvar >= MIN_LOGVAR).all() and np.all(np.diff(logvar) <= 0) and logvar[0, 2] > MIN_LOGVAR
    assert float(nll[0]) >= 0.5 * raws.size * (math.log(2 * math.pi) + MIN_LOGVAR)
    draw = backend.to_numpy(dout)[0, raws.size:]
    assert (draw[:-1] > 0).all() and 0 <= draw[-1] < 1e-100  # still pushed down, ever more gently


# End to end through the model, for every parameter: tests/test_objectives.py (both objectives, each
# likelihood).


# ------------------------------------------------------------------------------------------------
# Mutations: each broken backward fails the checks above
# ------------------------------------------------------------------------------------------------

def _cb_without_the_normalizer_gradient(self, logits, x):
    return self.bernoulli.nll_and_grad(logits, x)[0] - cb_log_normalizer(self.xp, logits).sum(axis=1), \
        self.bernoulli.nll_and_grad(logits, x)[1]


def _cb_normalizer_gradient_sign_flipped(xp, logits):
    return -_grad(xp, logits)


def _learned_gaussian_without_the_floor_gradient(self, out, x):
    nll, residual, precision, _ = self._nll_parts(out, x)
    dy = residual * precision
    return nll, self.xp.concatenate([dy, 0.5 * (1.0 - residual * dy)], axis=1)


def _learned_gaussian_dy_without_the_precision(self, out, x):
    nll, residual, precision, raw = self._nll_parts(out, x)
    draw = 0.5 * (1.0 - residual * residual * precision) * self.special.expit(raw - self.min_logvar)
    return nll, self.xp.concatenate([residual, draw], axis=1)


_grad = likelihoods.cb_log_normalizer_grad
MUTATIONS = {
    "continuous Bernoulli without dlogC/dl": (
        "continuous-bernoulli", 1.0, ContinuousBernoulli, "nll_and_grad", _cb_without_the_normalizer_gradient),
    "continuous Bernoulli dlogC/dl sign flipped": (
        "continuous-bernoulli", 1.0, likelihoods, "cb_log_normalizer_grad", _cb_normalizer_gradient_sign_flipped),
    "learned variance: floor's sigmoid dropped": (
        "gaussian", "learned", LearnedVarianceGaussian, "nll_and_grad", _learned_gaussian_without_the_floor_gradient),
    "learned variance: dy without exp(-v)": (
        "gaussian", "learned", LearnedVarianceGaussian, "nll_and_grad", _learned_gaussian_dy_without_the_precision),
}


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_each_mutation_is_caught(monkeypatch, mutation):
    name, variance, owner, attribute, replacement = MUTATIONS[mutation]
    monkeypatch.setattr(owner, attribute, replacement)
    backend = _numpy64()
    likelihood = make_likelihood(name, backend, variance)
    out, x = _inputs(backend, name, 4, 6, 3.0)
    dnll = backend.standard_normal((4,))
    _, dout = likelihood.nll_and_grad(out, x)
    assert gradient_error(lambda: likelihood.nll(out, x), out, dout * dnll[:, None], dnll) > 1e-2


def test_a_dropped_series_term_is_caught(monkeypatch):
    """The accuracy test's teeth: with the last series term gone the float64 values near |l| = 1 are off."""
    monkeypatch.setattr(likelihoods, "SINH_SERIES", likelihoods.SINH_SERIES[:-1])
    with pytest.raises(AssertionError):
        test_log_normalizer_and_its_gradient_are_accurate_to_the_dtypes_precision("float64")


def test_section_20_states_v_minus_r_as_eq_39_computes_it():
    """The values of v - r that section 20 of the derivation quotes (issue 26) are those of eq. (39) in
    float64, to the two significant digits printed."""
    import pathlib
    import re

    from minivae.likelihoods import MIN_LOGVAR, softplus

    text = (pathlib.Path(__file__).resolve().parent.parent / "docs" / "derivation.md").read_text()
    section = text[text.index("## 20."):text.index("## 21.")]
    quoted = re.findall(r"\$?([0-9.]+)(?: \\cdot 10\^\{(-?\d+)\})?\$? at \$r = (-?[0-9.]+)\$", section)
    assert len(quoted) == 4
    for mantissa, exponent, r in quoted:
        scale = 10.0 ** int(exponent or 0)
        last_digit = 10.0 ** -len(mantissa.partition(".")[2]) * scale
        exact = float(softplus(np, np.array([MIN_LOGVAR - float(r)]))[0])
        assert abs(float(mantissa) * scale - exact) <= last_digit / 2, (r, mantissa, exponent, exact)
