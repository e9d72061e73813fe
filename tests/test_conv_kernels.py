"""The fused convolution kernels (minivae/kernels/conv_cpu.py) against the plain xp code of
minivae/conv.py, which stays the reference.

- each kernel against its plain function, for Hypothesis-drawn geometries (batch, channels, height,
  width, kernel, stride, padding): the same bits in float64 and float32. im2col and the layout
  changes are copies; col2im adds the same terms in the same order (i, then j) as the plain scatter,
  then the bias with the same one addition. The fused rows are ordered (b, u, v), the plain (u, v, b):
  the tests reorder one to compare;
- Conv2d and ConvTranspose2d, forward and backward, fused (the batch in one chunk, and one image a
  chunk) against plain: y, dx and db the same bits
  (in float64; float32 within 1e-6 of the largest value, the rounding of one product), dW = cols^T rows
  within 1e-12 (float64) and 1e-5 (float32) of its largest entry, because the fused rows reach the
  product's sum over rows in another order;
- the same bits on 1 and 2 row threads, with the arrays really cut into blocks.
"""

import types

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from minivae import conv
from minivae.backend import get_backend, numpy_backend
from minivae.conv import Conv2d, ConvTranspose2d, conv_output_size
from minivae.kernels.conv_cpu import ConvKernels
from minivae.threads import RowThreads

Geometry = st.fixed_dictionaries({
    "batch_size": st.integers(1, 3), "channels": st.integers(1, 4), "height": st.integers(1, 9),
    "width": st.integers(1, 9), "kernel": st.tuples(st.integers(1, 4), st.integers(1, 4)),
    "stride": st.integers(1, 3), "padding": st.integers(0, 2), "dtype": st.sampled_from(["float32", "float64"])})


def kernels_on(threads, min_elements_per_thread=RowThreads.min_elements_per_thread):
    kernels = ConvKernels()
    kernels.row_threads = RowThreads(threads)
    kernels.row_threads.min_elements_per_thread = min_elements_per_thread
    return kernels


def out_size(g):
    return tuple(conv_output_size(n, k, g["stride"], g["padding"]) for n, k in zip((g["height"], g["width"]), g["kernel"]))


def image_major(rows, batch_size, out_hw):
    """Plain rows (u, v, b) reordered to the fused kernels' (b, u, v)."""
    OH, OW = out_hw
    return rows.reshape(OH, OW, batch_size, -1).transpose(2, 0, 1, 3).reshape(batch_size * OH * OW, -1)


def draw(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


@given(g=Geometry)
def test_each_kernel_is_the_plain_function_bit_for_bit(g):
    assume(min(out_size(g)) >= 1)
    rng = np.random.default_rng(0)
    B, C, dtype, (OH, OW) = g["batch_size"], g["channels"], g["dtype"], out_size(g)
    shape, args = (B, C, g["height"], g["width"]), (g["kernel"], g["stride"], g["padding"], (OH, OW))
    kernels = kernels_on(1)
    x = draw(rng, shape, dtype)
    np.testing.assert_array_equal(kernels.im2col(x, *args), image_major(conv.im2col(np, x, *args), B, (OH, OW)))
    cols = draw(rng, (OH * OW * B, g["kernel"][0] * g["kernel"][1] * C), dtype)
    bias = draw(rng, (C,), dtype)
    plain = conv.col2im(np, cols, shape, *args)
    fused_cols = image_major(cols, B, (OH, OW))
    np.testing.assert_array_equal(kernels.col2im(fused_cols, shape, *args), plain)
    np.testing.assert_array_equal(kernels.col2im(fused_cols, shape, *args, bias=bias), conv._add_bias(np, plain, bias))
    rows = draw(rng, (OH * OW * B, 3), dtype)
    bias = draw(rng, (3,), dtype)
    as_images = conv._from_pixel_rows(rows, B, OH, OW)
    fused_rows = image_major(rows, B, (OH, OW)).copy()  # rows_to_images adds the bias in place
    np.testing.assert_array_equal(kernels.rows_to_images(fused_rows.copy(), bias, B, OH, OW),
                                  conv._add_bias(np, as_images, bias))
    np.testing.assert_array_equal(kernels.rows_to_images(fused_rows, None, B, OH, OW), as_images)
    np.testing.assert_array_equal(kernels.image_rows(x), image_major(conv._pixel_rows(x), B, shape[2:]))


LAYERS = [  # (class, in, out, kernel, stride, padding, input shape): the conv VAE's four, and odd ones
    (Conv2d, 1, 8, 4, 2, 1, (3, 1, 28, 28)), (Conv2d, 8, 16, 4, 2, 1, (3, 8, 14, 14)),
    (ConvTranspose2d, 16, 8, 4, 2, 1, (3, 16, 7, 7)), (ConvTranspose2d, 8, 1, 4, 2, 1, (3, 8, 14, 14)),
    (Conv2d, 3, 5, (3, 2), 3, 2, (2, 3, 9, 7)), (ConvTranspose2d, 2, 3, (2, 3), 3, 0, (2, 2, 4, 5))]


def layer_pass(fused, layer_spec, dtype, threads=1):
    cls, c_in, c_out, kernel, stride, padding, shape = layer_spec
    backend = numpy_backend(dtype, seed=4, threads=threads)
    if not fused:
        backend.kernels = None
    assert (getattr(backend.kernels, "im2col", None) is not None) == fused
    layer = cls(c_in, c_out, kernel, stride, padding, backend, "c")
    x = backend.standard_normal(shape)
    y = layer.forward(x)
    dx = layer.backward(backend.standard_normal(y.shape))
    return {"y": y, "dx": dx, "db": layer.b.grad.copy(), "dW": layer.W.grad.copy()}


@pytest.mark.parametrize("layer_spec", LAYERS, ids=lambda spec: f"{spec[0].__name__}{spec[1:6]}")
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("chunk_bytes", [ConvKernels.chunk_bytes, 1], ids=["whole-batch", "image-chunks"])
def test_fused_layers_match_the_plain_layers(layer_spec, dtype, chunk_bytes, monkeypatch):
    """The fused layers against the plain ones, with the batch in one chunk, and one image a chunk."""
    monkeypatch.setattr(ConvKernels, "chunk_bytes", chunk_bytes)
    fused, plain = layer_pass(True, layer_spec, dtype), layer_pass(False, layer_spec, dtype)
    for name in ("y", "dx", "db", "dW"):
        assert fused[name].dtype == plain[name].dtype == np.dtype(dtype)
        scale = float(np.abs(plain[name]).max())
        tolerance = {"float64": 1e-12 if name == "dW" else 0.0, "float32": 1e-5 if name == "dW" else 1e-6}[dtype]
        error = float(np.abs(fused[name] - plain[name]).max())
        assert error <= tolerance * scale, (name, error, scale)


def test_same_bits_on_one_and_two_row_threads():
    rng = np.random.default_rng(1)
    args = ((4, 4), 2, 1, (7, 7))
    x = draw(rng, (6, 5, 14, 14), "float32")
    cols = draw(rng, (6 * 49, 16 * 5), "float32")
    rows, bias = draw(rng, (6 * 49, 7), "float32"), draw(rng, (7,), "float32")
    results = []
    for threads in (1, 2):
        kernels = kernels_on(threads, min_elements_per_thread=1)  # cut even these small arrays
        results.append([kernels.im2col(x, *args), kernels.col2im(cols, x.shape, *args, bias=bias[:5]),
                        kernels.rows_to_images(rows.copy(), bias, 6, 7, 7), kernels.image_rows(x)])
        assert (kernels.row_threads._pool is not None) == (threads == 2)  # the blocks ran on a worker
    for one, two in zip(*results):
        np.testing.assert_array_equal(one, two)


def test_layers_give_the_same_bits_on_one_and_two_threads(monkeypatch):
    """One thread with the whole batch in one chunk against two threads with one image a chunk."""
    monkeypatch.setattr(RowThreads, "min_elements_per_thread", 1)
    ones = [layer_pass(True, spec, "float32", threads=1) for spec in LAYERS[1:3]]
    monkeypatch.setattr(ConvKernels, "chunk_bytes", 1)
    twos = [layer_pass(True, spec, "float32", threads=2) for spec in LAYERS[1:3]]
    for one, two in zip(ones, twos):
        for name in one:
            np.testing.assert_array_equal(one[name], two[name])


def test_only_kernels_with_im2col_take_the_fused_path():
    """A backend's kernels are used by the layers when they have ``im2col`` (NumPy's CpuKernels);
    CuPy's (and the device guard's) have none, and a plain backend has no kernels: the xp code runs."""
    backend = get_backend("numpy", dtype="float64")
    assert isinstance(ConvTranspose2d(1, 2, 3, backend=backend).conv_kernels, ConvKernels)
    backend.kernels = types.SimpleNamespace(relu=None, reparameterize=None)  # like kernels.cuda.build's
    assert ConvTranspose2d(1, 2, 3, backend=backend).conv_kernels is None
    backend.kernels = None
    assert Conv2d(1, 2, 3, backend=backend).conv_kernels is None
