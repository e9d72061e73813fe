"""Finite-difference checks of every layer's backward, in float64, with a random upstream gradient."""

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from minivae.gradcheck import DEFAULT_TOLERANCE, gradient_error
from kinks import KINK_MARGIN, relu_input_margin
from minivae.layers import Linear, ReLU, Sequential, Sigmoid, Tanh, mlp

batch = st.integers(1, 6)
width = st.integers(1, 9)
seeds = st.integers(0, 2**31 - 1)


@given(batch, width, width, seeds)
def test_linear_gradients(make_backend, n, n_in, n_out, seed):
    backend = make_backend("float64", seed)
    layer = Linear(n_in, n_out, backend, "lin")
    x = backend.standard_normal((n, n_in))
    dy = backend.standard_normal((n, n_out))
    layer.forward(x)
    dx = layer.backward(dy)

    def f():
        return layer.forward(x)

    assert gradient_error(f, x, dx, dy) <= DEFAULT_TOLERANCE
    assert gradient_error(f, layer.W.data, layer.W.grad, dy) <= DEFAULT_TOLERANCE
    assert gradient_error(f, layer.b.data, layer.b.grad, dy) <= DEFAULT_TOLERANCE


def _activation(kind, backend):
    return {"relu": lambda: ReLU(), "tanh": lambda: Tanh(backend), "sigmoid": lambda: Sigmoid(backend)}[kind]()


@pytest.mark.parametrize("kind", ["relu", "tanh", "sigmoid"])
@given(n=batch, d=width, seed=seeds)
def test_activation_gradients(make_backend, kind, n, d, seed):
    backend = make_backend("float64", seed)
    layer = _activation(kind, backend)
    # in [-4, 4]: beyond, tanh and sigmoid saturate and their true gradient (< 1e-3) drowns in the
    # finite difference's rounding noise; and away from 0, where ReLU is not differentiable
    x = (backend.uniform((n, d)) * 2 - 1) * 4
    assume(float(abs(x).min()) > KINK_MARGIN)
    dy = backend.standard_normal((n, d))
    layer.forward(x)
    dx = layer.backward(dy)
    assert gradient_error(lambda: layer.forward(x), x, dx, dy) <= DEFAULT_TOLERANCE


@pytest.mark.parametrize("kind", ["relu", "tanh", "sigmoid"])
@given(n=batch, sizes=st.lists(width, min_size=2, max_size=4), seed=seeds)
def test_mlp_gradients(make_backend, kind, n, sizes, seed):
    backend = make_backend("float64", seed)
    net = mlp(sizes, kind, backend, "net")
    x = backend.standard_normal((n, sizes[0]))
    dy = backend.standard_normal((n, sizes[-1]))
    assume(relu_input_margin(net, x) > KINK_MARGIN)
    net.forward(x)
    dx = net.backward(dy)

    def f():
        return net.forward(x)

    assert gradient_error(f, x, dx, dy) <= DEFAULT_TOLERANCE
    for p in net.parameters():
        assert gradient_error(f, p.data, p.grad, dy) <= DEFAULT_TOLERANCE, p.name


def test_mlp_names_parameters_like_pytorch_sequential(make_backend):
    net = mlp([5, 4, 3, 2], "relu", make_backend(), "encoder")
    assert [p.name for p in net.parameters()] == [
        "encoder.0.W", "encoder.0.b", "encoder.2.W", "encoder.2.b", "encoder.4.W", "encoder.4.b"]
    assert [tuple(p.data.shape) for p in net.parameters()] == [(5, 4), (4,), (4, 3), (3,), (3, 2), (2,)]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kind", ["relu", "tanh", "sigmoid"])
def test_layers_keep_dtype_and_do_not_mutate_inputs(make_backend, dtype, kind):
    backend = make_backend(dtype, 3)
    net = Sequential([Linear(4, 3, backend, "a"), _activation(kind, backend), Linear(3, 2, backend, "b")])
    x = backend.standard_normal((5, 4))
    dy = backend.standard_normal((5, 2))
    x_before, dy_before = x.copy(), dy.copy()
    y = net.forward(x)
    dx = net.backward(dy)
    assert y.dtype == dx.dtype == backend.dtype
    assert all(p.grad.dtype == backend.dtype for p in net.parameters())
    assert (x == x_before).all() and (dy == dy_before).all()


def test_backward_before_forward_raises(make_backend):
    backend = make_backend()
    for layer in [Linear(2, 2, backend, "lin"), ReLU(), Tanh(backend), Sigmoid(backend)]:
        with pytest.raises(RuntimeError, match="backward called before forward"):
            layer.backward(backend.standard_normal((1, 2)))


def test_backward_overwrites_gradients_in_place(make_backend):
    backend = make_backend()
    layer = Linear(3, 2, backend, "lin")
    grad_array = layer.W.grad
    x = backend.standard_normal((4, 3))
    dy = backend.standard_normal((4, 2))
    layer.forward(x)
    layer.backward(dy)
    first = layer.W.grad.copy()
    layer.backward(dy)  # a second backward writes the same gradient, it does not add to it
    assert layer.W.grad is grad_array
    assert float(abs(layer.W.grad - first).max()) == 0.0


def test_linear_init_matches_pytorch_bounds(make_backend):
    backend = make_backend("float64", 0)
    layer = Linear(400, 300, backend, "lin")
    bound = 1 / 400 ** 0.5
    for p in (layer.W.data, layer.b.data):
        assert float(abs(p).max()) <= bound
        assert float(abs(p).max()) > 0.95 * bound  # uniform over the whole interval, not a narrower one
    assert abs(float(layer.W.data.std()) - bound / 3 ** 0.5) < 0.01 * bound  # std of U(-a, a) is a/sqrt(3)


def test_a_relu_whose_forward_is_replaced_runs_it_even_after_a_linear(make_backend):
    """Sequential fuses a Linear with the ReLU after it where the backend can (the CPU's kernels),
    but a forward or backward replaced on the ReLU (a hook, as gradcheck's recorder of ReLU inputs)
    is called, with the same results."""
    backend = make_backend("float64", 0)
    network = mlp([5, 4, 3], "relu", backend, "n")
    x, dy = backend.standard_normal((6, 5)), backend.standard_normal((6, 3))
    expected = [network.forward(x), network.backward(dy)]
    relu, calls = network.layers[1], []

    def recording(method):
        def recorded(values):
            calls.append(method.__name__)
            return method(values)
        return recorded

    relu.forward, relu.backward = recording(relu.forward), recording(relu.backward)
    results = [network.forward(x), network.backward(dy)]
    assert calls == ["forward", "backward"]
    for a, b in zip(results, expected):
        assert float(abs(a - b).max()) == 0.0
