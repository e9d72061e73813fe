"""The IWAE objective and the KL weight (sections 21 and 22 of docs/derivation.md): gradients end to end
through the model against finite differences, the bound against scipy.stats densities, the stable
log-mean-exp, and mutations of the backward caught."""

import math

import numpy as np
import pytest
import scipy.special
import scipy.stats
from hypothesis import assume, given
from hypothesis import strategies as st

from kinks import KINK_MARGIN
from minivae import estimators, gaussian, model as model_module, objectives
from minivae.backend import get_backend
from minivae.gaussian import reparameterize
from minivae.gradcheck import DEFAULT_TOLERANCE, check_model, gradient_error, relu_input_margin
from minivae.model import VAE

LIKELIHOODS = [("bernoulli", 1.0), ("gaussian", 0.5), ("continuous-bernoulli", 1.0), ("gaussian", "learned")]


def _model_and_batch(backend, likelihood, variance, n, d, hidden, j, k, objective):
    model = VAE(d, (hidden,), j, likelihood=likelihood, variance=variance, n_samples=k, objective=objective,
                backend=backend)
    x = backend.uniform((n, d))
    eps = model.draw_eps(n)
    return model, x, eps, relu_input_margin(model, x, eps)


def _worst_error(model, x, eps, kl_weight=1.0):
    model.loss_and_backward(x, eps, kl_weight)
    dtotal = float(model.backend.standard_normal(()))  # a random upstream gradient of the scalar loss
    return max(gradient_error(lambda: model.objective_terms(x, eps, kl_weight).total, p.data, p.grad * dtotal, dtotal)
               for p in model.parameters())


@pytest.mark.parametrize("likelihood, variance", LIKELIHOODS)
@given(n=st.integers(1, 4), d=st.integers(1, 6), hidden=st.integers(1, 6), j=st.integers(1, 3),
       k=st.integers(1, 4), seed=st.integers(0, 2**31 - 1))
def test_iwae_gradient_for_every_parameter(make_backend, likelihood, variance, n, d, hidden, j, k, seed):
    model, x, eps, margin = _model_and_batch(make_backend("float64", seed), likelihood, variance, n, d, hidden, j,
                                             k, "iwae")
    assume(margin > KINK_MARGIN)
    assert _worst_error(model, x, eps) <= DEFAULT_TOLERANCE


@given(n=st.integers(1, 4), d=st.integers(1, 6), k=st.integers(1, 3), likelihood=st.sampled_from(LIKELIHOODS),
       beta=st.one_of(st.just(1.0), st.floats(0.0, 4.0)), seed=st.integers(0, 2**31 - 1))
def test_kl_weighted_elbo_gradient_for_every_parameter(make_backend, n, d, k, likelihood, beta, seed):
    """The ELBO objective (beta = 1: eq. (3)) with every likelihood, new ones included, end to end."""
    model, x, eps, margin = _model_and_batch(make_backend("float64", seed), *likelihood, n, d, 5, 2, k, "elbo")
    assume(margin > KINK_MARGIN)
    assert _worst_error(model, x, eps, beta) <= DEFAULT_TOLERANCE
    terms = model.objective_terms(x, eps, beta)
    assert float(terms.total) == pytest.approx(float(terms.reconstruction + beta * terms.kl), rel=1e-12, abs=1e-12)


def test_the_iwae_bound_matches_scipy_densities():
    """Eq. (43) against a direct float64 log-mean-exp of scipy.stats log-densities (log q from the
    full Gaussian density of eq. (21), not the simplified eq. (44))."""
    backend = get_backend("numpy", dtype="float64", seed=7)
    model = VAE(6, (5,), 3, n_samples=4, objective="iwae", backend=backend)
    x = (backend.uniform((3, 6)) < 0.5) * 1.0
    eps = model.draw_eps(3)
    mu, logvar = model.encode(x)
    z = (mu + eps * np.exp(0.5 * logvar))  # (K, B, J)
    logits = model.decoder.forward(z.reshape(-1, 3)).reshape(4, 3, 6)
    log_px = scipy.stats.bernoulli.logpmf(x, scipy.special.expit(logits)).sum(axis=-1)
    log_pz = scipy.stats.norm.logpdf(z).sum(axis=-1)
    log_qz = scipy.stats.norm.logpdf(z, mu, np.exp(0.5 * logvar)).sum(axis=-1)
    direct = np.log(np.mean(np.exp(log_px + log_pz - log_qz), axis=0))  # small model: no underflow
    assert float(model.objective_terms(x, eps).total) == pytest.approx(-direct.sum(), rel=1e-12)


def test_iwae_with_one_sample_is_the_elbo_with_a_sampled_kl(make_backend):
    backend = make_backend("float64", 3)
    model, x, eps, _ = _model_and_batch(backend, "bernoulli", 1.0, 4, 5, 4, 2, 1, "iwae")
    mu, logvar = model.encode(x)
    z = reparameterize(backend.xp, mu, logvar, eps)
    nll = backend.to_numpy(model.likelihood.nll(model.decoder.forward(z), x))
    z, mu, logvar = (backend.to_numpy(a) for a in (z, mu, logvar))
    sampled_kl = (scipy.stats.norm.logpdf(z, mu, np.exp(0.5 * logvar)) - scipy.stats.norm.logpdf(z)).sum(axis=-1)
    assert float(model.objective_terms(x, eps).total) == pytest.approx(float((nll + sampled_kl).sum()), rel=1e-12)


def test_iwae_loss_is_below_the_average_of_its_samples_elbos(make_backend):
    """Jensen for the samples drawn: log mean w >= mean log w, so eq. (43)'s loss is at most the loss of
    the same samples' one-sample ELBOs (with the KL sampled too)."""
    backend = make_backend("float64", 5)
    model, x, eps, _ = _model_and_batch(backend, "bernoulli", 1.0, 6, 8, 6, 3, 5, "iwae")
    iwae = float(model.objective_terms(x, eps).total)
    per_sample = [float(model.objective_terms(x, eps[k:k + 1]).total) for k in range(5)]  # K = 1 each
    assert iwae <= np.mean(per_sample) + 1e-12
    assert iwae < np.mean(per_sample) - 1e-6  # strictly, for weights that differ


def test_log_mean_exp_is_stable_and_shared_with_the_estimators(make_backend):
    backend = make_backend("float64")
    xp = backend.xp
    assert estimators.logsumexp is objectives.logsumexp  # one implementation
    a = np.array([[-1e4, 3.0], [-1e4 - 1, 700.0], [-1e4 + 2, 1e3]])
    ours = backend.to_numpy(objectives.log_mean_exp(xp, backend.to_device(a)))
    np.testing.assert_allclose(ours, scipy.special.logsumexp(a, axis=0) - np.log(3), rtol=1e-14)
    weights = backend.to_numpy(objectives.normalized_weights(xp, backend.to_device(a)))
    np.testing.assert_allclose(weights.sum(axis=0), 1.0, rtol=1e-14)
    np.testing.assert_allclose(weights, scipy.special.softmax(a, axis=0), rtol=1e-12)


def test_kl_weight_ramps_from_zero_to_beta():
    assert objectives.kl_weight_at(0.5, 0, 1, 0.0) == 0.5
    assert objectives.kl_weight_at(2.0, 4, 1, 0.0) == 0.0
    assert objectives.kl_weight_at(2.0, 4, 2, 0.5) == pytest.approx(2.0 * 1.5 / 4)
    assert objectives.kl_weight_at(2.0, 4, 5, 0.0) == 2.0
    assert objectives.kl_weight_at(2.0, 4, 9, 0.3) == 2.0


def test_check_model_checks_the_iwae_objective_in_float32(make_backend):
    backend = make_backend("float32", 2)
    model = VAE(7, (6,), 2, n_samples=3, objective="iwae", likelihood="continuous-bernoulli", activation="tanh",
                backend=backend)
    x = backend.uniform((3, 7))
    rows = check_model(model, x, model.draw_eps(3), tolerance=1e-4)
    assert all(row.ok for row in rows) and len(rows) == len(model.parameters())


def test_an_unknown_objective_is_refused(make_backend):
    with pytest.raises(ValueError, match="objective='vi' must be one of elbo, iwae"):
        VAE(4, (3,), 2, objective="vi", backend=make_backend())


def test_the_iwae_takes_no_kl_weight_in_the_library(make_backend):
    """issue 21: ``loss_and_backward(x, kl_weight=0.5)`` of an IWAE model returned the plain IWAE loss."""
    model = VAE(4, (3,), 2, objective="iwae", n_samples=5, backend=make_backend())
    x = model.backend.uniform((2, 4))
    for call in (lambda: model.loss_and_backward(x, kl_weight=0.5), lambda: model.objective_terms(x, None, 0.0),
                 lambda: model.forward(x, kl_weight=2.0)):
        with pytest.raises(ValueError, match=r"^the iwae objective takes no KL weight \(kl_weight=.*eq. \(42\)\)$"):
            call()
    assert np.isfinite(float(model.loss_and_backward(x, kl_weight=1.0).total))
    assert objectives.combination_problem("iwae", 1.0, 2) is not None  # a warm-up of a weight it has not
    assert objectives.combination_problem("iwae", 1.0) is None
    assert objectives.combination_problem("elbo", 0.0, 3) is None


@pytest.mark.parametrize("kl_weight", [math.nan, math.inf, -math.inf, -1.0, "0.5", None, True])
def test_a_kl_weight_that_is_not_a_finite_number_at_least_0_is_refused(make_backend, kl_weight):
    """issue 26: the library took kl_weight=-1, and nan or inf gave NaN gradients without a word."""
    model = VAE(4, (3,), 2, n_samples=2, backend=make_backend())
    x = model.backend.uniform((2, 4))
    with pytest.raises(ValueError, match=r"^kl_weight=.* must be a finite number >= 0$"):
        model.loss_and_backward(x, kl_weight=kl_weight)
    assert objectives.combination_problem("elbo", kl_weight) == f"kl_weight={kl_weight!r} must be a finite number >= 0"


# ------------------------------------------------------------------------------------------------
# Mutations
# ------------------------------------------------------------------------------------------------

_importance_log_weights = objectives.importance_log_weights
_head_gradient = gaussian.head_gradient
_iwae_backward = objectives.IWAE.backward
_elbo_backward = objectives.ELBO.backward


def _weights_not_normalised(xp, log_weights):
    return xp.exp(log_weights)


def _log_q_without_logvar(xp, nll, z, eps, logvar):
    return _importance_log_weights(xp, nll, z, eps, logvar * 0)


def _kl_weight_ignored(xp, dz, mu, logvar, eps, kernels=None, kl_weight=1.0, dlogvar_direct=None):
    return _head_gradient(xp, dz, mu, logvar, eps, None, 1.0, dlogvar_direct)


MUTATIONS = {
    "IWAE weights not normalised": ("iwae", objectives, "normalized_weights", _weights_not_normalised),
    "IWAE log q without its logvar term": ("iwae", model_module, "importance_log_weights", _log_q_without_logvar),
    "IWAE backward without log q's -0.5": ("iwae", objectives, "IWAE_DLOGVAR", 0.0),
    "IWAE backward without log p's z": (
        "iwae", objectives.IWAE, "backward", lambda self, *args: _iwae_backward(self, *args)._replace(z=None)),
    "KL weight ignored by the backward": ("elbo", model_module, "head_gradient", _kl_weight_ignored),
    "ELBO backward without the 1/L": (
        "elbo", objectives.ELBO, "backward", lambda self, *args: _elbo_backward(self, *args)._replace(nll=1.0)),
}


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_each_mutation_is_caught(monkeypatch, mutation):
    objective, owner, attribute, replacement = MUTATIONS[mutation]
    backend = get_backend("numpy", dtype="float64", seed=0)
    model, x, eps, _ = _model_and_batch(backend, "bernoulli", 1.0, 3, 5, 4, 2, 3, objective)
    monkeypatch.setattr(owner, attribute, replacement)
    if mutation == "IWAE log q without its logvar term":  # the forward is wrong: the independent truth sees it
        with pytest.raises(AssertionError):
            test_the_iwae_bound_matches_scipy_densities()
        return
    assert _worst_error(model, x, eps, 0.3 if objective == "elbo" else 1.0) > 1e-2
