"""The gradient checks have teeth: each deliberate mutation of a backward is caught."""

import numpy as np
import pytest

from minivae import gaussian, layers, likelihoods
from minivae.gradcheck import DEFAULT_TOLERANCE, gradient_error, numerical_gradient, relative_error, relu_input_margin
from minivae.model import VAE


def test_numerical_gradient_of_a_known_function():
    x = np.array([[1.0, -2.0], [0.5, 3.0]])
    dout = np.array([[0.3, -1.1], [2.0, 0.7]])
    numeric = numerical_gradient(lambda: x ** 3, x, dout)
    np.testing.assert_allclose(numeric, 3 * x ** 2 * dout, rtol=1e-8)
    assert (x == np.array([[1.0, -2.0], [0.5, 3.0]])).all()  # restored


def test_relative_error_metric():
    a = np.array([3.0, 4.0])
    assert relative_error(a, a) == 0.0
    assert relative_error(a, np.array([3.0, 4.5])) == pytest.approx(0.5 / np.linalg.norm([3.0, 4.5]))
    assert relative_error(np.zeros(2), np.zeros(2)) == 0.0


def _worst_vae_error(backend):
    # hidden width 4 = 2 * latent size: the encoder head's W is square, so a missing transpose runs
    vae = VAE(5, (4,), 2, n_samples=2, backend=backend)
    x = backend.uniform((3, 5))
    eps = vae.draw_eps(3)
    vae.loss_and_backward(x, eps)

    def total():
        reconstruction, kl = vae.elbo_terms(x, eps)
        return (reconstruction + kl).sum()

    return max(gradient_error(total, p.data, p.grad, 1.0) for p in vae.parameters())


_reparameterize_backward = gaussian.reparameterize_backward
_linear_backward = layers.Linear.backward
_bernoulli_nll_and_grad = likelihoods.Bernoulli.nll_and_grad


def _dlogvar_without_its_half(xp, dz, logvar, eps):
    dmu, dlogvar = _reparameterize_backward(xp, dz, logvar, eps)
    return dmu, dlogvar * 2


def _kl_gradient_with_exp_half_logvar(xp, mu, logvar, dkl=None):
    return mu.copy(), 0.5 * (xp.exp(0.5 * logvar) - 1)


def _linear_dx_missing_transpose(self, dy):
    """dy @ W instead of dy @ W^T: shape errors reveal it, except in a square layer."""
    dx = _linear_backward(self, dy)
    square = self.W.data.shape[0] == self.W.data.shape[1]
    return dy @ self.W.data if square and self.needs_input_grad else dx


def _linear_db_mean_instead_of_sum(self, dy):
    dx = _linear_backward(self, dy)
    self.b.grad[...] = dy.mean(axis=0)
    return dx


def _relu_without_its_mask(self, dy):
    self._saved()
    return dy


def _bernoulli_gradient_sign_flipped(self, logits, x):
    nll, dlogits = _bernoulli_nll_and_grad(self, logits, x)
    return nll, -dlogits


MUTATIONS = {
    "dlogvar without its 0.5": (gaussian, "reparameterize_backward", _dlogvar_without_its_half),
    "KL gradient with exp(0.5 logvar)": (gaussian, "kl_divergence_backward", _kl_gradient_with_exp_half_logvar),
    "Linear dx missing a transpose": (layers.Linear, "backward", _linear_dx_missing_transpose),
    "Linear db a mean": (layers.Linear, "backward", _linear_db_mean_instead_of_sum),
    "ReLU backward without its mask": (layers.ReLU, "backward", _relu_without_its_mask),
    "Bernoulli gradient sign flipped": (likelihoods.Bernoulli, "nll_and_grad", _bernoulli_gradient_sign_flipped),
}


def test_the_unmutated_model_passes(make_backend):
    assert _worst_vae_error(make_backend("float64", 0)) <= DEFAULT_TOLERANCE


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_each_mutation_is_caught(make_backend, monkeypatch, mutation):
    owner, attribute, replacement = MUTATIONS[mutation]
    monkeypatch.setattr(owner, attribute, replacement)
    backend = make_backend("float64", 0)
    backend.kernels = None  # the mutations are of the plain code (test_kernels ties the fused kernels to it)
    assert _worst_vae_error(backend) > 1e-2


def test_relu_input_margin_is_read_from_the_models_own_forward(make_backend):
    """``gradcheck.relu_input_margin`` records the ReLU inputs of ``VAE.forward`` (no copy of the path):
    the pre-activations written out here by hand give the same smallest |input|, and afterwards no layer
    keeps the recording."""
    backend = make_backend("float64", 1)
    model = VAE(5, (4,), 2, backend=backend)
    x, eps = backend.uniform((3, 5)), model.draw_eps(3)
    to_numpy = backend.to_numpy
    W1, b1, W2, b2, W3, b3 = (to_numpy(p.data) for p in model.parameters()[:6])
    a1 = to_numpy(x) @ W1 + b1
    head = np.maximum(a1, 0) @ W2 + b2
    z = head[:, :2] + to_numpy(eps)[0] * np.exp(0.5 * head[:, 2:])
    a3 = z @ W3 + b3
    assert relu_input_margin(model, x, eps) == pytest.approx(min(np.abs(a1).min(), np.abs(a3).min()), rel=1e-12)
    assert not any("forward" in vars(layer) for layer in model.encoder.layers + model.decoder.layers)
