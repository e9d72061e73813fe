"""Optimizers against updates computed by hand in closed form."""

import math

import numpy as np
import pytest

from minivae.layers import Parameter
from minivae.optim import SGD, Adam


def _parameter(backend, values, grad_values=None):
    p = Parameter("layer.W", backend.to_device(np.array(values)))
    if grad_values is not None:
        p.grad[...] = backend.to_device(np.array(grad_values))
    return p


def test_adam_first_three_steps_match_the_closed_form(make_backend):
    backend = make_backend("float64")
    theta0 = np.array([0.5, -1.0, 2.0])
    grads = [np.array([0.1, -0.2, 0.3]), np.array([-0.4, 0.5, 0.0]), np.array([0.2, 0.2, -1.0])]
    lr, b1, b2, eps = 0.01, 0.9, 0.999, 1e-8
    p = _parameter(backend, theta0)
    adam = Adam([p], backend=backend, lr=lr, betas=(b1, b2), eps=eps)
    # by hand, eq. (19): m1 = (1-b1) g1, v1 = (1-b2) g1^2, ...
    g1, g2, g3 = grads
    m = [(1 - b1) * g1]
    m.append(b1 * m[0] + (1 - b1) * g2)
    m.append(b1 * m[1] + (1 - b1) * g3)
    v = [(1 - b2) * g1 ** 2]
    v.append(b2 * v[0] + (1 - b2) * g2 ** 2)
    v.append(b2 * v[1] + (1 - b2) * g3 ** 2)
    expected = theta0.copy()
    for t, g in enumerate(grads, start=1):
        p.grad[...] = backend.to_device(g)
        adam.step()
        m_hat, v_hat = m[t - 1] / (1 - b1 ** t), v[t - 1] / (1 - b2 ** t)
        expected = expected - lr * m_hat / (np.sqrt(v_hat) + eps)
        np.testing.assert_allclose(backend.to_numpy(p.data), expected, rtol=1e-13, atol=1e-15)
    assert adam.step_count == 3


def test_adam_first_step_moves_each_weight_by_lr(make_backend):
    backend = make_backend("float64")
    p = _parameter(backend, [1.0, 1.0], [1e-3, -50.0])
    Adam([p], backend=backend, lr=0.1).step()
    # lr * g / (|g| + 1e-8): the first step is lr * sign(g) up to eps / |g| = 1e-5
    np.testing.assert_allclose(backend.to_numpy(p.data), [0.9, 1.1], rtol=2e-6)


def test_adam_weight_decay_adds_l2_gradient(make_backend):
    backend = make_backend("float64")
    p = _parameter(backend, [2.0], [0.5])
    Adam([p], backend=backend, lr=0.1, weight_decay=0.25).step()
    # g = 0.5 + 0.25 * 2 = 1.0 > 0, so the first step is -lr
    np.testing.assert_allclose(backend.to_numpy(p.data), [1.9], rtol=1e-7)
    q = _parameter(backend, [2.0], [-1.0])
    Adam([q], backend=backend, lr=0.1, weight_decay=1.0).step()  # g = -1 + 2 = 1 > 0
    np.testing.assert_allclose(backend.to_numpy(q.data), [1.9], rtol=1e-7)


def test_sgd_momentum_matches_the_closed_form(make_backend):
    backend = make_backend("float64")
    p = _parameter(backend, [1.0])
    sgd = SGD([p], backend=backend, lr=0.1, momentum=0.9)
    buf, theta = 0.0, 1.0
    for t, g in enumerate([1.0, -2.0, 0.5], start=1):
        p.grad[...] = g
        sgd.step()
        buf = g if t == 1 else 0.9 * buf + g  # eq. (20)
        theta -= 0.1 * buf
        assert float(p.data[0]) == pytest.approx(theta, rel=1e-14)
    plain = _parameter(backend, [1.0], [3.0])
    SGD([plain], backend=backend, lr=0.5).step()
    assert float(plain.data[0]) == pytest.approx(-0.5)


@pytest.mark.parametrize("make_optimizer", [lambda ps, be: Adam(ps, lr=0.05, backend=be),
                                            lambda ps, be: SGD(ps, lr=0.05, momentum=0.5, backend=be)])
def test_state_dict_round_trip_continues_identically(make_backend, make_optimizer):
    backend = make_backend("float64", 0)
    grads = [backend.standard_normal((2, 3)) for _ in range(6)]

    def fresh():
        p = Parameter("a.W", backend.to_device(np.ones((2, 3))))
        return p, make_optimizer([p], backend)

    p, opt = fresh()
    for g in grads[:3]:
        p.grad[...] = g
        opt.step()
    saved_data, saved_state = p.data.copy(), opt.state_dict()
    for g in grads[3:]:
        p.grad[...] = g
        opt.step()
    q, opt2 = fresh()
    q.data[...] = saved_data
    opt2.load_state_dict(saved_state)
    for g in grads[3:]:
        q.grad[...] = g
        opt2.step()
    assert (q.data == p.data).all()
    assert opt2.step_count == opt.step_count == 6


def test_load_state_dict_refuses_other_parameters(make_backend):
    backend = make_backend("float64")
    a = Adam([Parameter("a.W", backend.zeros((2,)))], backend=backend)
    b = Adam([Parameter("b.W", backend.zeros((2,)))], backend=backend)
    c = Adam([Parameter("a.W", backend.zeros((3,)))], backend=backend)
    with pytest.raises(ValueError, match="holds parameters"):
        b.load_state_dict(a.state_dict())
    with pytest.raises(ValueError, match="has shape"):
        c.load_state_dict(a.state_dict())


def test_duplicate_parameter_names_are_refused(make_backend):
    backend = make_backend()
    with pytest.raises(ValueError, match="unique"):
        Adam([Parameter("x", backend.zeros((1,))), Parameter("x", backend.zeros((1,)))], backend=backend)


def test_adam_keeps_float32(make_backend):
    backend = make_backend("float32")
    p = _parameter(backend, np.ones(4, dtype=np.float32), np.full(4, 0.1, dtype=np.float32))
    adam = Adam([p], backend=backend)
    adam.step()
    assert p.data.dtype == adam.moments["m"]["layer.W"].dtype == adam.moments["v"]["layer.W"].dtype == np.float32
    assert math.isclose(float(p.data[0]), 1 - 1e-3, rel_tol=1e-5)


def test_optimizer_shares_the_model_buffer_and_writes_through_views(make_backend):
    from minivae.model import VAE

    model = VAE(6, (4,), 2, backend=make_backend("float32", 0))
    adam = Adam(model.parameters())
    assert adam.buffer is model.buffer
    before = [p.data.copy() for p in model.parameters()]
    model.loss_and_backward(model.backend.uniform((3, 6)))
    adam.step()
    assert all(bool((p.data != b).any()) for p, b in zip(model.parameters(), before))
    model.buffer.data[...] = 0  # every parameter is a view into the buffer
    assert all(float(abs(p.data).max()) == 0 for p in model.parameters())


def _model(backend):
    from minivae.model import VAE

    return VAE(input_dim=6, hidden=(5,), latent_dim=2, backend=backend)


def _fill_grads(model, backend):
    model.buffer.grad[...] = backend.to_device(np.linspace(0.1, 1, model.buffer.grad.size))


def test_assigning_p_data_copies_into_the_buffer_and_adam_still_trains_it(make_backend):
    """issue 13, item 2: ``p.data = p.data.copy()`` (loading weights by assignment) used to rebind
    p.data off the buffer, so that Adam's steps left p unchanged, silently."""
    backend = make_backend("float64")
    model = _model(backend)
    adam = Adam(model.parameters())
    W = model.encoder.layers[0].W
    loaded = backend.to_device(np.full(W.data.shape, 0.25))
    W.data = loaded
    W.grad = W.grad * 0 + 1  # the same for grad
    assert float(W.data[0, 0]) == 0.25
    _fill_grads(model, backend)
    adam.step()
    assert float(abs(W.data - 0.25).min()) > 0  # trained: every weight moved by ~lr
    np.testing.assert_array_equal(backend.to_numpy(model.buffer.data[model.buffer.slices[W.name]]),
                                  backend.to_numpy(W.data).reshape(-1))
    with pytest.raises(ValueError, match="parameter encoder.0.W: cannot assign data of shape \\(3,\\)"):
        W.data = backend.to_device(np.zeros(3))
    with pytest.raises(TypeError, match="dtype complex128"):
        W.data = backend.xp.asarray(np.zeros(W.data.shape, dtype=complex))


def test_an_optimizer_of_some_parameters_shares_the_model_buffer(make_backend):
    """issue 13, item 2: ``SGD(model.encoder.parameters())`` used to repack those parameters into a
    buffer of its own, after which the first optimizer no longer updated them and model.buffer no
    longer held them."""
    backend = make_backend("float64")
    model = _model(backend)
    adam = Adam(model.parameters())
    encoder_sgd = SGD(model.encoder.parameters(), lr=0.1)
    assert encoder_sgd.buffer is adam.buffer is model.buffer
    _fill_grads(model, backend)
    before = np.array(backend.to_numpy(model.buffer.data))
    adam.step()
    after_adam = np.array(backend.to_numpy(model.buffer.data))
    assert (after_adam != before).all()  # Adam still moves every parameter, the encoder's too
    for p in model.parameters():
        np.testing.assert_array_equal(backend.to_numpy(p.data).reshape(-1),
                                      after_adam[model.buffer.slices[p.name]])
    encoder_sgd.step()
    after_sgd = np.array(backend.to_numpy(model.buffer.data))
    encoder = [model.buffer.slices[p.name] for p in model.encoder.parameters()]
    decoder = [model.buffer.slices[p.name] for p in model.decoder.parameters()]
    grad = backend.to_numpy(model.buffer.grad)
    for where in encoder:
        np.testing.assert_allclose(after_sgd[where], after_adam[where] - 0.1 * grad[where], rtol=1e-12)
    for where in decoder:
        np.testing.assert_array_equal(after_sgd[where], after_adam[where])


def test_an_optimizer_of_scattered_parameters_updates_exactly_those(make_backend):
    """Parameters that are not side by side in the buffer (the decoder's bias, the encoder's weight)
    are updated in place, and their state round-trips by name."""
    backend = make_backend("float64")
    model = _model(backend)
    chosen = [model.decoder.layers[-1].b, model.encoder.layers[0].W]
    sgd = SGD(chosen, lr=0.5, momentum=0.9)
    assert len(sgd.segments) == 2
    _fill_grads(model, backend)
    before = np.array(backend.to_numpy(model.buffer.data))
    sgd.step()
    after, grad = np.array(backend.to_numpy(model.buffer.data)), backend.to_numpy(model.buffer.grad)
    moved = np.zeros(before.size, dtype=bool)
    for p in chosen:
        moved[model.buffer.slices[p.name]] = True
    np.testing.assert_allclose(after[moved], before[moved] - 0.5 * grad[moved], rtol=1e-12)
    np.testing.assert_array_equal(after[~moved], before[~moved])
    state = sgd.state_dict()
    assert sorted(state["momentum_buffer"]) == sorted(p.name for p in chosen)
    for p in chosen:
        np.testing.assert_array_equal(backend.to_numpy(state["momentum_buffer"][p.name]), backend.to_numpy(p.grad))


def test_parameters_of_two_models_in_one_optimizer_are_refused(make_backend):
    backend = make_backend("float64")
    first, second = _model(backend), _model(backend)
    with pytest.raises(ValueError, match="not all packed in one ParameterBuffer"):
        Adam(first.encoder.parameters()[:1] + second.decoder.parameters()[:1])
