"""The whole VAE: the ELBO's gradient with respect to every parameter against finite differences (eps
held fixed), dtype agreement, reproducibility."""

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from kinks import KINK_MARGIN
from minivae.gradcheck import DEFAULT_TOLERANCE, gradient_error, relu_input_margin
from minivae.model import VAE

widths = st.integers(1, 9)


@given(n=st.integers(1, 6), d=widths, hidden=st.lists(widths, min_size=1, max_size=2), j=widths,
       n_samples=st.integers(1, 3), likelihood=st.sampled_from(["bernoulli", "gaussian"]),
       activation=st.sampled_from(["relu", "tanh", "sigmoid"]), seed=st.integers(0, 2**31 - 1))
def test_vae_loss_gradient_for_every_parameter(make_backend, n, d, hidden, j, n_samples, likelihood, activation,
                                               seed):
    backend = make_backend("float64", seed)
    variance = 0.5 if likelihood == "gaussian" else 1.0
    model = VAE(d, hidden, j, activation=activation, likelihood=likelihood, variance=variance, n_samples=n_samples,
                backend=backend)
    x = backend.uniform((n, d))
    eps = model.draw_eps(n)
    assume(relu_input_margin(model, x, eps) > KINK_MARGIN)
    model.loss_and_backward(x, eps)
    dtotal = float(backend.standard_normal(()))  # a random upstream gradient of the scalar loss

    def f():
        return model.elbo_terms(x, eps)

    def total():
        reconstruction, kl = f()
        return (reconstruction + kl).sum()

    for p in model.parameters():
        assert gradient_error(total, p.data, p.grad * dtotal, dtotal) <= DEFAULT_TOLERANCE, p.name


def test_loss_terms_agree_with_elbo_terms(make_backend):
    backend = make_backend("float64", 4)
    model = VAE(6, (5,), 3, n_samples=2, backend=backend)
    x = backend.uniform((4, 6))
    eps = model.draw_eps(4)
    terms = model.loss_and_backward(x, eps)
    reconstruction, kl = model.elbo_terms(x, eps)
    assert float(terms.reconstruction) == pytest.approx(float(reconstruction.sum()), rel=1e-12)
    assert float(terms.kl) == pytest.approx(float(kl.sum()), rel=1e-12)
    assert float(terms.total) == pytest.approx(float(terms.reconstruction + terms.kl), rel=1e-12)


def test_default_model_matches_the_pytorch_example(make_backend):
    model = VAE(backend=make_backend("float32"))
    shapes = {p.name: tuple(p.data.shape) for p in model.parameters()}
    assert shapes == {"encoder.0.W": (784, 400), "encoder.0.b": (400,), "encoder.2.W": (400, 40),
                      "encoder.2.b": (40,), "decoder.0.W": (20, 400), "decoder.0.b": (400,),
                      "decoder.2.W": (400, 784), "decoder.2.b": (784,)}
    assert sum(int(np.prod(s)) for s in shapes.values()) == 652_824  # as the PyTorch example's model
    assert all(p.data.dtype == np.float32 for p in model.parameters())


def test_float32_and_float64_agree_to_float32_precision(make_backend):
    models, losses = [], []
    for dtype in ("float32", "float64"):
        backend = make_backend(dtype, 123)
        model = VAE(30, (20,), 4, backend=backend)
        x = backend.to_device(np.random.default_rng(0).random((8, 30)))
        eps = backend.to_device(np.random.default_rng(1).standard_normal((1, 8, 4)))
        if models:  # the float64 model starts from the float32 model's (rounded) weights
            for p32, p64 in zip(models[0].parameters(), model.parameters()):
                p64.data[...] = backend.to_device(models[0].backend.to_numpy(p32.data))
        losses.append(model.loss_and_backward(x, eps))
        models.append(model)
    for a, b in zip(*losses):
        assert float(a) == pytest.approx(float(b), rel=1e-5)
        assert a.dtype == np.float32 and b.dtype == np.float64
    for p32, p64 in zip(models[0].parameters(), models[1].parameters()):
        g32, g64 = (m.backend.to_numpy(p.grad) for m, p in ((models[0], p32), (models[1], p64)))
        np.testing.assert_allclose(g32, g64, rtol=1e-3, atol=1e-4 * np.abs(g64).max())


def test_a_seed_reproduces_a_run_bit_for_bit(make_backend):
    from minivae.optim import Adam

    def run(seed):
        backend = make_backend("float32", seed)
        model = VAE(12, (10,), 3, backend=backend)
        optimizer = Adam(model.parameters())
        x = backend.uniform((16, 12))
        totals = []
        for _ in range(5):
            totals.append(float(model.loss_and_backward(x).total))
            optimizer.step()
        return totals, [backend.to_numpy(p.data) for p in model.parameters()]

    first, second, other = run(5), run(5), run(6)
    assert first[0] == second[0]
    assert all((a == b).all() for a, b in zip(first[1], second[1]))
    assert first[0] != other[0]


def test_forward_does_not_mutate_input_and_keeps_dtype(make_backend):
    for dtype in ("float32", "float64"):
        backend = make_backend(dtype, 0)
        model = VAE(10, (8,), 2, n_samples=2, backend=backend)
        x = backend.uniform((3, 10))
        x_before = x.copy()
        terms = model.loss_and_backward(x)
        assert (x == x_before).all()
        assert all(t.dtype == backend.dtype for t in terms)
        assert all(p.grad.dtype == backend.dtype for p in model.parameters())
        for out in (model.reconstruct(x), model.reconstruct(x, use_mean=False), model.sample(4), *model.encode(x)):
            assert out.dtype == backend.dtype


def test_bernoulli_outputs_are_probabilities_and_shapes_are_right(make_backend):
    backend = make_backend("float32", 0)
    model = VAE(10, (8,), 2, backend=backend)
    x = backend.uniform((3, 10))
    mu, logvar = model.encode(x)
    assert mu.shape == logvar.shape == (3, 2)
    for out in (model.reconstruct(x), model.sample(5)):
        assert out.shape[1] == 10
        assert float(out.min()) >= 0 and float(out.max()) <= 1


def test_training_lowers_the_loss(make_backend):
    from minivae.optim import Adam

    backend = make_backend("float32", 0)
    rng = np.random.default_rng(0)
    prototypes = (rng.random((4, 64)) < 0.5).astype(np.float32)
    data = backend.to_device(prototypes[rng.integers(0, 4, 256)])
    model = VAE(64, (32,), 2, backend=backend)
    optimizer = Adam(model.parameters(), lr=3e-3)
    first = float(model.loss_and_backward(data).total) / 256
    for _ in range(150):
        model.loss_and_backward(data)
        optimizer.step()
    last = float(model.loss_and_backward(data).total) / 256
    assert last < 0.5 * first


@pytest.mark.parametrize("kwargs, message", [
    ({"latent_dim": 0}, "latent_dim=0 must be an integer >= 1"),
    ({"hidden": (4, 0)}, r"hidden=\(4, 0\) holds 0: each item must be an integer >= 1"),
    ({"n_samples": 0}, "n_samples=0 must be an integer >= 1"),
    ({"activation": "gelu"}, "activation='gelu' must be one of relu, tanh, sigmoid"),
    # issue 13, item 10: nothing accepted silently
    ({"hidden": (), "activation": "bogus"}, "activation='bogus' must be one of"),
    ({"hidden": (5.9,)}, r"hidden=\(5.9,\) holds 5.9"),
    ({"n_samples": 2.7}, "n_samples=2.7 must be an integer"),
    ({"latent_dim": True}, "latent_dim=True must be an integer"),
    ({"likelihood": "gaussian", "variance": float("inf")}, "variance=inf must be 'learned' or a finite number > 0"),
    ({"likelihood": "poisson"}, "likelihood='poisson' must be one of bernoulli, gaussian"),
    ({"architecture": "resnet"}, "architecture='resnet' must be one of mlp, conv"),
    # issue 26: a variance the likelihood has no use for was accepted and recorded
    ({"likelihood": "bernoulli", "variance": "learned"},
     "^VAE: variance='learned' does not apply to the bernoulli likelihood, which has no variance$"),
    ({"likelihood": "continuous-bernoulli", "variance": 0.5}, "variance=0.5 does not apply to the continuous-bernoulli"),
    ({"architecture": "conv", "input_dim": 16, "image_shape": (4, 4), "channels": (2, 0)},
     r"channels=\(2, 0\) holds 0: each item must be an integer >= 1"),
])
def test_bad_model_settings_are_refused(make_backend, kwargs, message):
    with pytest.raises(ValueError, match=message):
        VAE(**{"input_dim": 5, **kwargs}, backend=make_backend())


def test_a_linear_encoder_and_decoder_are_allowed():
    """hidden=() is a model without hidden layers (one Linear each way), not an error."""
    model = VAE(input_dim=5, hidden=(), latent_dim=2)
    assert [layer.W.data.shape for layer in model.encoder.layers] == [(5, 4)]


@pytest.mark.parametrize("make_x, error, message", [
    (lambda b: b.to_device(np.ones((0, 5))), ValueError, r"shape \(B >= 1, 5\), got shape \(0, 5\)"),
    (lambda b: b.to_device(np.ones(5)), ValueError, r"got shape \(5,\)"),
    (lambda b: b.to_device(np.ones((3, 4))), ValueError, r"got shape \(3, 4\)"),
    (lambda b: b.xp.asarray(np.ones((3, 5))), TypeError, "dtype float64, the model computes in float32"),
    (lambda b: b.xp.asarray(np.full((3, 5), 255, dtype=np.uint8)), TypeError, "dtype uint8"),
], ids=["empty", "1-d", "width", "float64", "uint8"])
def test_a_bad_batch_is_refused_in_one_clear_error(make_backend, make_x, error, message):
    """issue 13, item 10: float64 data into a float32 model used to compute in float64 silently; an
    empty batch or a 1-D x gave a raw NumPy error."""
    backend = make_backend("float32")
    model = VAE(input_dim=5, hidden=(4,), latent_dim=2, backend=backend)
    x = make_x(backend)
    for call in (model.loss_and_backward, model.elbo_terms, model.encode, model.reconstruct):
        with pytest.raises(error, match=message):
            call(x)


@pytest.mark.parametrize("likelihood", ["bernoulli", "continuous-bernoulli"])
def test_pixels_of_0_to_255_are_refused_by_the_likelihoods_on_0_1(likelihood):
    """issue 13, item 10: uint8-scaled pixels as floats gave a loss of ~9e12; issue 26: the continuous
    Bernoulli took data outside [0, 1] (its loss of x*3-1 was -0.81)."""
    model = VAE(input_dim=5, hidden=(4,), latent_dim=2, likelihood=likelihood)
    title = {"bernoulli": "Bernoulli", "continuous-bernoulli": "continuous Bernoulli"}[likelihood]
    for x in (np.full((3, 5), 255.0), np.linspace(-1, 2, 15).reshape(3, 5), np.full((3, 5), np.nan)):
        x = model.backend.to_device(x)
        for call in (model.loss_and_backward, model.elbo_terms, model.forward):
            with pytest.raises(ValueError, match=rf"^x holds values in \[.*\]; the {title} likelihood needs them in "
                                                 r"\[0, 1\] \(divide pixels of 0..255 by 255\)$"):
                call(x)
    gaussian = VAE(input_dim=5, hidden=(4,), latent_dim=2, likelihood="gaussian")
    assert np.isfinite(float(gaussian.loss_and_backward(model.backend.to_device(np.full((3, 5), 255.0))).total))


def test_checked_data_skip_the_checks_and_give_the_same_numbers(make_backend):
    """Input is checked once: ``checked=True`` (the trainer's data, checked at load) skips the pass over x,
    and changes nothing else."""
    backend = make_backend("float64", 3)
    model = VAE(6, (5,), 2, n_samples=2, backend=backend)
    x, eps = backend.uniform((4, 6)), model.draw_eps(4)
    calls = []
    model.likelihood.check_data = lambda data: calls.append(data.shape)  # an instance attribute: this model only
    once = [(4, 6)] if backend.name == "numpy" else []  # the range is checked on the CPU only
    first = model.loss_and_backward(x, eps)
    grads = [p.grad.copy() for p in model.parameters()]
    assert calls == once  # once per step, not once per internal call
    second = model.loss_and_backward(x, eps, checked=True)
    assert calls == once
    assert [float(t) for t in first] == [float(t) for t in second]
    assert all((p.grad == g).all() for p, g in zip(model.parameters(), grads))


@pytest.mark.parametrize("objective", ["elbo", "iwae"])
def test_forward_and_backward_are_the_one_path(make_backend, objective):
    """``loss_and_backward`` is ``forward`` then ``backward``; a cache can be walked back twice with the
    same result; a forward that did not keep the likelihood's gradient (or decoded z = mu) cannot."""
    backend = make_backend("float64", 8)
    model = VAE(6, (5,), 2, n_samples=3, objective=objective, backend=backend)
    x, eps = backend.uniform((4, 6)), model.draw_eps(4)
    summed = model.loss_and_backward(x, eps)
    expected = [backend.to_numpy(p.grad).copy() for p in model.parameters()]
    terms, cache = model.forward(x, eps)
    assert terms.loss.shape == terms.reconstruction.shape == terms.kl.shape == (4,)
    assert terms.log_weights.shape == (3, 4)
    assert float(terms.loss.sum()) == float(summed.total)
    for _ in range(2):
        model.backward(cache)
        assert all((backend.to_numpy(p.grad) == g).all() for p, g in zip(model.parameters(), expected))
    for kwargs in ({"for_backward": False}, {"use_mean": True}):
        terms, cache = model.forward(x, eps, **kwargs)
        with pytest.raises(ValueError, match="backward needs a forward that sampled z"):
            model.backward(cache)
    assert terms.loss is None and terms.log_weights is None  # z = mu: no sample, no bound
