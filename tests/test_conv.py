"""Conv2d, ConvTranspose2d and Reshape (minivae/conv.py, section 18 of docs/derivation.md).

- the backward against finite differences (eq. (24)) in float64, for Hypothesis-drawn batch, channels,
  height and width (square or not), kernel, stride and padding, including strides that do not divide
  the padded size, on every backend of the ``make_backend`` fixture;
- each forward against an independent direct loop in float64 (eq. (27) and (32));
- the adjoint identity <Conv2d(x), y> = <x, ConvTranspose2d(y)>;
- the mutations the checks must catch: a flipped kernel, col2im without its stride, an off-by-one padding;
- PyTorch's weight layout and initialisation bounds;
- the conv VAE end to end against finite differences, and the sizes it refuses.
"""

import json
import math

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from tiny_data import cli_args, write_dataset

import minivae.conv as conv
from minivae import evaluate, gradcheck, train
from minivae.backend import get_backend
from minivae.checkpoint import load_checkpoint
from minivae.conv import Conv2d, ConvTranspose2d, Reshape, conv_output_size, transpose_output_size
from minivae.gradcheck import DEFAULT_TOLERANCE, check_conv, check_model
from minivae.model import VAE

Geometry = st.fixed_dictionaries({
    "batch_size": st.integers(1, 2), "in_channels": st.integers(1, 2), "out_channels": st.integers(1, 3),
    "height": st.integers(1, 6), "width": st.integers(1, 6), "kernel": st.tuples(st.integers(1, 4), st.integers(1, 4)),
    "stride": st.integers(1, 3), "padding": st.integers(0, 2)})


def fits(g):
    """The kernel fits in the padded input (eq. (25) gives at least one output pixel)."""
    return all(conv_output_size(n, k, g["stride"], g["padding"]) >= 1
               for n, k in zip((g["height"], g["width"]), g["kernel"]))


def transpose_fits(g):
    """Eq. (31) gives at least one output pixel."""
    return all(transpose_output_size(n, k, g["stride"], g["padding"]) >= 1
               for n, k in zip((g["height"], g["width"]), g["kernel"]))


def conv_check(kind, backend, g):
    _, rows = check_conv(kind, backend, g["batch_size"], g["in_channels"], g["out_channels"],
                         (g["height"], g["width"]), g["kernel"], g["stride"], g["padding"])
    return rows


def direct_conv2d(x, W, b, stride, padding):
    """Eq. (27) as four loops over output pixels, on host float64 arrays: the independent truth."""
    B, C, H, Wd = x.shape
    K, _, kh, kw = W.shape
    padded = np.zeros((B, C, H + 2 * padding, Wd + 2 * padding))
    padded[:, :, padding:padding + H, padding:padding + Wd] = x
    OH, OW = conv_output_size(H, kh, stride, padding), conv_output_size(Wd, kw, stride, padding)
    y = np.zeros((B, K, OH, OW))
    for n in range(B):
        for k in range(K):
            for u in range(OH):
                for v in range(OW):
                    window = padded[n, :, stride * u:stride * u + kh, stride * v:stride * v + kw]
                    y[n, k, u, v] = (window * W[k]).sum() + b[k]
    return y


def direct_conv_transpose2d(x, W, b, stride, padding):
    """Eq. (32) as a scatter: each input pixel adds itself times the kernel into the (padded) output."""
    B, C, H, Wd = x.shape
    _, K, kh, kw = W.shape
    OH, OW = transpose_output_size(H, kh, stride, padding), transpose_output_size(Wd, kw, stride, padding)
    padded = np.zeros((B, K, OH + 2 * padding, OW + 2 * padding))
    for n in range(B):
        for c in range(C):
            for u in range(H):
                for v in range(Wd):
                    padded[n, :, stride * u:stride * u + kh, stride * v:stride * v + kw] += x[n, c, u, v] * W[c]
    return padded[:, :, padding:padding + OH, padding:padding + OW] + b[None, :, None, None]


def forward_error(layer_class, backend, g):
    """Max |minivae - direct loop| of one layer's forward at geometry g, in float64."""
    layer = layer_class(g["in_channels"], g["out_channels"], g["kernel"], g["stride"], g["padding"], backend, "c")
    x = backend.standard_normal((g["batch_size"], g["in_channels"], g["height"], g["width"]))
    y = backend.to_numpy(layer.forward(x))
    direct = direct_conv2d if layer_class is Conv2d else direct_conv_transpose2d
    expected = direct(backend.to_numpy(x), backend.to_numpy(layer.W.data), backend.to_numpy(layer.b.data),
                      g["stride"], g["padding"])
    assert y.shape == expected.shape
    return float(np.abs(y - expected).max())


@given(g=Geometry)
def test_conv2d_gradients_match_finite_differences(make_backend, g):
    assume(fits(g))
    for row in conv_check("conv2d", make_backend("float64"), g):
        assert row.error <= DEFAULT_TOLERANCE, (row.name, row.error, g)


@given(g=Geometry)
def test_conv_transpose2d_gradients_match_finite_differences(make_backend, g):
    assume(transpose_fits(g))
    for row in conv_check("conv_transpose2d", make_backend("float64"), g):
        assert row.error <= DEFAULT_TOLERANCE, (row.name, row.error, g)


@pytest.mark.parametrize("kind, in_channels, out_channels", [
    ("conv2d", 1, 7), ("conv2d", 3, 1), ("conv_transpose2d", 7, 1), ("conv_transpose2d", 1, 3)])
def test_weight_gradient_in_both_orientations_of_its_product(make_backend, kind, in_channels, out_channels):
    """``_set_grads`` takes dW_mat = cols^T rows as itself where the kernel matrix has fewer rows
    kh*kw*C (6 with this 3x2 kernel and one channel) than columns K (7), as its transpose otherwise:
    both orientations against finite differences, with a kernel that is not square."""
    _, rows = check_conv(kind, make_backend("float64"), 2, in_channels, out_channels, (7, 6), (3, 2), 2, 1)
    for row in rows:
        assert row.error <= DEFAULT_TOLERANCE, (row.name, row.error)


@given(g=Geometry)
def test_forwards_match_a_direct_loop(make_backend, g):
    backend = make_backend("float64", seed=3)
    if fits(g):
        assert forward_error(Conv2d, backend, g) < 1e-12
    if transpose_fits(g):
        assert forward_error(ConvTranspose2d, backend, g) < 1e-12


@given(g=Geometry)
def test_conv_transpose2d_is_the_adjoint_of_conv2d(make_backend, g):
    """<Conv2d(x), y> = <x, ConvTranspose2d(y)> with the same kernel and zero biases, x of the
    transpose convolution's output size (eq. (31)), so both sides sum over the same products."""
    assume(fits(g) and transpose_fits(g))
    backend = make_backend("float64", seed=5)
    s, p = g["stride"], g["padding"]
    forward = Conv2d(g["in_channels"], g["out_channels"], g["kernel"], s, p, backend, "conv")
    adjoint = ConvTranspose2d(g["out_channels"], g["in_channels"], g["kernel"], s, p, backend, "adjoint")
    adjoint.W.data[...] = forward.W.data
    forward.b.data[...] = 0
    adjoint.b.data[...] = 0
    y = backend.standard_normal((g["batch_size"], g["out_channels"], g["height"], g["width"]))
    x_shape = tuple(transpose_output_size(n, k, s, p) for n, k in zip((g["height"], g["width"]), g["kernel"]))
    x = backend.standard_normal((g["batch_size"], g["in_channels"]) + x_shape)
    left, right = float((forward.forward(x) * y).sum()), float((x * adjoint.forward(y)).sum())
    assert math.isclose(left, right, rel_tol=1e-12, abs_tol=1e-12)


def test_forward_leaves_input_and_dtype_alone(make_backend):
    backend = make_backend("float32")
    for layer in (Conv2d(2, 3, 3, 2, 1, backend, "c"), ConvTranspose2d(2, 3, 3, 2, 1, backend, "t")):
        x = backend.standard_normal((2, 2, 5, 4))
        before = backend.to_numpy(x)
        y = layer.forward(x)
        dx = layer.backward(backend.standard_normal(y.shape))
        assert y.dtype == dx.dtype == layer.W.grad.dtype == backend.dtype
        # C-contiguous, or (the fused kernels) the (B, C, H, W) view of C-contiguous pixel-major memory
        assert y.flags.c_contiguous or y.transpose(0, 2, 3, 1).flags.c_contiguous
        np.testing.assert_array_equal(backend.to_numpy(x), before)


def test_backward_before_forward_raises():
    backend = get_backend("numpy", dtype="float64")
    for layer in (Conv2d(1, 1, 2, backend=backend), ConvTranspose2d(1, 1, 2, backend=backend), Reshape((4,))):
        with pytest.raises(RuntimeError, match="before forward"):
            layer.backward(backend.standard_normal((1, 1, 2, 2)))


def test_reshape_round_trip_and_gradient():
    backend = get_backend("numpy", dtype="float64")
    layer = Reshape((2, 3, 2))
    x = backend.standard_normal((4, 12))
    assert layer.forward(x).shape == (4, 2, 3, 2)
    dy = backend.standard_normal((4, 2, 3, 2))
    np.testing.assert_array_equal(layer.backward(dy), dy.reshape(4, 12))


def test_weight_layout_and_initialisation_are_pytorchs():
    """Conv2d W (out, in, kh, kw), ConvTranspose2d W (in, out, kh, kw), bias (out,), both uniform
    in +-1/sqrt(W.shape[1] kh kw) (torch's kaiming_uniform with a = sqrt(5) and its bias init)."""
    backend = get_backend("numpy", dtype="float64", seed=0)
    for layer, shape in [(Conv2d(16, 40, (3, 5), backend=backend), (40, 16, 3, 5)),
                         (ConvTranspose2d(16, 40, (3, 5), backend=backend), (16, 40, 3, 5))]:
        bound = 1 / math.sqrt(shape[1] * 3 * 5)
        assert layer.W.data.shape == shape and layer.b.data.shape == (40,)
        for values in (layer.W.data, layer.b.data):
            assert np.abs(values).max() <= bound
            assert np.abs(values).max() > 0.9 * bound  # uses the whole range, not a narrower one


# --------------------------------------------------------------------------------------------------
# Mutations the checks must catch
# --------------------------------------------------------------------------------------------------

MUTATION_GEOMETRY = dict(batch_size=2, in_channels=2, out_channels=3, height=7, width=6, kernel=(3, 2), stride=2,
                         padding=1)


def plain_backend(seed):
    """NumPy float64 without its fused kernels: the layers then run the im2col and col2im of conv.py,
    which the mutations replace (the fused kernels are checked against these in test_conv_kernels.py)."""
    backend = get_backend("numpy", dtype="float64", seed=seed)
    backend.kernels = None
    return backend


def flipped_im2col(xp, x, kernel, stride, padding, out_size):
    """im2col reading each window upside down and mirrored: a true convolution, not PyTorch's."""
    C = x.shape[1]
    cols = correct_im2col(xp, x, kernel, stride, padding, out_size)
    return cols.reshape((-1,) + tuple(kernel) + (C,))[:, ::-1, ::-1].reshape(cols.shape)


def col2im_without_stride(xp, cols, image_shape, kernel, stride, padding, out_size):
    """col2im adding each window's entries back at stride 1 (the stride forgotten): right only when
    stride is 1."""
    return correct_col2im(xp, cols, image_shape, kernel, 1, padding, out_size)


def col2im_off_by_one_padding(xp, cols, image_shape, kernel, stride, padding, out_size):
    """col2im cutting the padding one pixel too far in: the gradient lands one pixel off."""
    B, C, H, W = image_shape
    bigger = correct_col2im(xp, cols, (B, C, H + 1, W + 1), kernel, stride, padding, out_size)
    return bigger[:, :, 1:, 1:]


correct_im2col, correct_col2im = conv.im2col, conv.col2im


def test_flipped_kernel_is_caught(monkeypatch):
    backend = plain_backend(seed=3)
    assert forward_error(Conv2d, backend, MUTATION_GEOMETRY) < 1e-12
    monkeypatch.setattr(conv, "im2col", flipped_im2col)
    assert forward_error(Conv2d, backend, MUTATION_GEOMETRY) > 1e-2


@pytest.mark.parametrize("mutation", [col2im_without_stride, col2im_off_by_one_padding])
def test_col2im_mutations_are_caught(monkeypatch, mutation):
    """A wrong col2im breaks Conv2d's input gradient (finite differences), ConvTranspose2d's forward
    (direct loop) and the adjoint identity; each check alone catches it."""
    backend = plain_backend(seed=3)
    monkeypatch.setattr(conv, "col2im", mutation)
    rows = conv_check("conv2d", backend, MUTATION_GEOMETRY)
    assert [row.name for row in rows if not row.ok] == ["x"]
    assert forward_error(ConvTranspose2d, backend, MUTATION_GEOMETRY) > 1e-2


def test_the_unmutated_geometry_passes():
    """The mutation tests' geometry itself passes every check (so it is the mutation that fails them)."""
    backend = plain_backend(seed=3)
    for kind in ("conv2d", "conv_transpose2d"):
        assert all(row.ok for row in conv_check(kind, backend, MUTATION_GEOMETRY))
    assert forward_error(ConvTranspose2d, backend, MUTATION_GEOMETRY) < 1e-12


# --------------------------------------------------------------------------------------------------
# The conv VAE
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("likelihood, variance, objective", [
    ("bernoulli", 1.0, "elbo"), ("gaussian", 1.0, "elbo"),
    ("gaussian", "learned", "elbo"), ("continuous-bernoulli", 1.0, "iwae")])
def test_conv_vae_gradients_match_finite_differences(make_backend, likelihood, variance, objective):
    """The whole loss of eq. (3) (or the IWAE loss of eq. (43)) through the conv encoder and decoder
    (4x8 images, 1x2 after the convolutions), 2 samples; tanh, which has no kink for a difference to
    step across (ReLU's own backward is checked in test_layers.py). With a learned variance the last
    transpose convolution has two output channels, [y | r] of eq. (39)."""
    backend = make_backend("float64", seed=2)
    model = VAE(input_dim=4 * 8, latent_dim=2, likelihood=likelihood, variance=variance, objective=objective,
                activation="tanh", architecture="conv", image_shape=(4, 8), channels=(1, 2), n_samples=2,
                backend=backend)
    x = backend.uniform((2, 4 * 8))
    rows = check_model(model, x, model.draw_eps(2))
    assert len(rows) == 12
    assert model.decoder.layers[-2].W.data.shape[1] == (2 if variance == "learned" else 1)
    for row in rows:
        assert row.ok, (row.name, row.error)


def test_conv_vae_shapes_config_and_rebuild():
    backend = get_backend("numpy", dtype="float32", seed=0)
    model = VAE(input_dim=28 * 20, architecture="conv", image_shape=(28, 20), backend=backend)
    assert model.config["architecture"] == "conv" and model.config["image_shape"] == [28, 20]
    assert model.encoder.layers[3].W.data.shape == (64, 32, 4, 4)
    x = backend.uniform((5, 28 * 20))
    assert model.reconstruct(x).shape == (5, 28 * 20) and model.sample(2).shape == (2, 28 * 20)
    rebuilt = VAE(**model.config, backend=backend)
    assert [p.data.shape for p in rebuilt.parameters()] == [p.data.shape for p in model.parameters()]
    assert "architecture" not in VAE(backend=backend).config  # an MLP's config is as it was


@pytest.mark.parametrize("shape", [(28, 30), (10, 8), (2, 4)])
def test_conv_vae_refuses_sizes_it_cannot_mirror(shape):
    with pytest.raises(ValueError, match=r"multiples of 4 .* use --architecture mlp"):
        VAE(input_dim=shape[0] * shape[1], architecture="conv", image_shape=shape)


# --------------------------------------------------------------------------------------------------
# python -m minivae.train / evaluate with --architecture conv
# --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def conv_data(tmp_path_factory):
    """64 training and 16 test images of 8x12 pixels (multiples of 4)."""
    return write_dataset(tmp_path_factory.mktemp("conv") / "data", 64, 16, 8, 12)


def conv_args(data, out, *extra, epochs=2):
    return cli_args(data, out, "--architecture", "conv", "--quiet", *extra, epochs=epochs, hidden=())


def test_conv_run_resumes_exactly_and_evaluates(conv_data, tmp_path, capsys):
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert train.main(conv_args(conv_data, whole)) == 0
    assert train.main(conv_args(conv_data, split, epochs=1)) == 0
    assert train.main(["--resume", str(split), "--epochs", "2", "--quiet"]) == 0
    a, b = load_checkpoint(whole / "checkpoint.npz"), load_checkpoint(split / "checkpoint.npz")
    assert a.config["architecture"] == "conv" and a.config["image_shape"] == [8, 12]
    assert a.params.keys() == b.params.keys()
    for name in a.params:  # bit for bit, as an uninterrupted run
        np.testing.assert_array_equal(a.params[name], b.params[name])
    assert json.loads((whole / "config.json").read_text())["architecture"] == "conv"
    capsys.readouterr()
    assert evaluate.main([str(whole), "--iw-samples", "4", "--backend", "numpy"]) == 0
    assert "log p(x)" in capsys.readouterr().out


def test_an_mlp_checkpoint_is_not_resumed_as_conv(conv_data, tmp_path, capsys):
    out = tmp_path / "run"
    assert train.main(cli_args(conv_data, out, "--quiet", epochs=1)) == 0
    capsys.readouterr()
    assert train.main(["--resume", str(out), "--epochs", "2", "--architecture", "conv"]) == 1
    assert "drop --architecture" in capsys.readouterr().err


@pytest.mark.parametrize("size, extra, words, status", [
    ((10, 12), (), "multiples of 4 (28x28, 28x20, ...), not 10x12: use --architecture mlp", 1),
    ((8, 12), ("--hidden", "16"), "--hidden sets the widths of the MLP's hidden Linear layers, which the conv", 2),
])
def test_train_refuses_what_conv_cannot_do_in_one_line(tmp_path, capsys, size, extra, words, status):
    data = write_dataset(tmp_path / "data", 32, 8, *size)
    assert train.main(conv_args(data, tmp_path / "run", *extra)) == status
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and words in error



@pytest.mark.parametrize("argv", [["--layer", "conv2d"], ["--layer", "conv_transpose2d", "--dtype", "float32"],
                                  ["--architecture", "conv", "--image-shape", "4x8", "--activation", "tanh"]])
def test_gradcheck_command_checks_the_conv_pieces(argv, capsys):
    assert gradcheck.main(argv) == 0
    out = capsys.readouterr().out
    assert "all ok" in out and ("Conv" in out or "conv 4x8" in out)


def test_gradcheck_command_refuses_an_image_shape_in_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        gradcheck.main(["--architecture", "conv", "--image-shape", "10x8"])
    assert exit_info.value.code == 2
    assert "multiples of 4" in capsys.readouterr().err
