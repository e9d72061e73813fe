"""Fused CPU kernels (Numba) for the convolutions of minivae/conv.py: im2col, col2im with the bias,
and the two layout changes between images (B, C, H, W) and rows around the matrix products.

The plain ``xp`` functions of conv.py are the reference. They order the rows of cols pixel-major,
(u, v, b), which suits NumPy's strided copies; these kernels order them image-major, (b, u, v), so
that each image is handled by one loop over memory it alone owns (a few kB, in the core's cache)
and the rows of one image are one contiguous block. The row order is internal to a layer (its
forward caches the cols its backward reads); which rows exist and what each holds is unchanged:

- ``im2col`` (eq. (26)): ``cols[(b, u, v), (i, j, c)] = x_pad[b, c, s u + i, s v + j]``, each image
  first copied channels-last into a zero frame (the padding), then read window by window. A copy.
- ``col2im`` (eq. (30), with the bias of eq. (32) where one is given): each entry
  ``cols[(b, u, v), (i, j, c)]`` added back to pixel (s u + i - p, s v + j - p) of a zero frame, the
  kh*kw taps (i, j) in the order of the plain code's loop, then ``+ bias[c]``: each pixel receives
  the same terms in the same order, so the sums are the same bits as the plain scatter.
- ``rows_to_images`` (eq. (27)'s ``+ b``): ``y[b, k, u, v] = rows[(b, u, v), k] + bias[k]``.
- ``image_rows``: ``rows[(b, h, w), c] = y[b, c, h, w]``, the image as the rows the products take.

The values in every row of a matrix product are then those of the plain code, so y and every
input gradient are too; only ``dW = cols^T rows`` (eq. (28)) sums its B*OH*OW rows in another
order, which rounds differently (tests/test_conv_kernels.py states the tolerance).

Each call is cut into blocks of whole images on the backend's row threads (``RowThreads.run``);
an image is written by one block alone, in one fixed order, so the result is the same bits on any
number of threads. The kernels take C-contiguous float32 or float64 arrays (compiled once per dtype
and cached on disk, as those of cpu.py).
"""

import numba
import numpy as np

_JIT = dict(nogil=True, cache=True, error_model="numpy")


@numba.njit(**_JIT)
def _im2col(cols, x, stride, padding):
    """Eq. (26), image by image: cols (B, OH, OW, kh, kw, C) from x (B, C, H, W)."""
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    OH, OW, kh, kw = cols.shape[1], cols.shape[2], cols.shape[3], cols.shape[4]
    frame = np.zeros((H + 2 * padding, W + 2 * padding, C), x.dtype)  # x_pad of one image, channels last
    for n in range(x.shape[0]):
        for c in range(C):
            for h in range(H):
                for w in range(W):
                    frame[h + padding, w + padding, c] = x[n, c, h, w]
        for u in range(OH):
            for v in range(OW):
                for i in range(kh):
                    for j in range(kw):
                        for c in range(C):
                            cols[n, u, v, i, j, c] = frame[stride * u + i, stride * v + j, c]


@numba.njit(**_JIT)
def _col2im(x, cols, bias, stride, padding):
    """Eq. (30), image by image: x (B, C, H, W) from cols (B, OH, OW, kh, kw, C), plus ``bias``
    (C,) (eq. (32)), or nothing for a bias of shape (0,). Taps in the plain code's order: i, then j."""
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    OH, OW, kh, kw = cols.shape[1], cols.shape[2], cols.shape[3], cols.shape[4]
    frame = np.empty((H + 2 * padding, W + 2 * padding, C), x.dtype)  # x_pad of one image, channels last
    for n in range(x.shape[0]):
        frame[:] = 0
        for i in range(kh):
            for j in range(kw):
                for u in range(OH):
                    for v in range(OW):
                        for c in range(C):
                            frame[stride * u + i, stride * v + j, c] += cols[n, u, v, i, j, c]
        for c in range(C):
            for h in range(H):
                for w in range(W):
                    x[n, c, h, w] = frame[h + padding, w + padding, c]
            if bias.shape[0]:
                x[n, c] += bias[c]


@numba.njit(**_JIT)
def _rows_to_images(y, rows, bias):
    """Eq. (27)'s bias, image by image: y (B, K, P) from rows (B, P, K) and ``bias`` (K,), or no
    bias for one of shape (0,)."""
    for n in range(y.shape[0]):
        for k in range(y.shape[1]):
            if bias.shape[0]:
                for p in range(y.shape[2]):
                    y[n, k, p] = rows[n, p, k] + bias[k]
            else:
                for p in range(y.shape[2]):
                    y[n, k, p] = rows[n, p, k]


@numba.njit(**_JIT)
def _image_rows(rows, y):
    """rows (B, P, C) from y (B, C, P): each image's pixels as rows."""
    for n in range(y.shape[0]):
        for c in range(y.shape[1]):
            for p in range(y.shape[2]):
                rows[n, p, c] = y[n, c, p]


def _bias(bias, dtype):
    """The bias in ``dtype``, or an empty array for none (what the kernels read as "no bias")."""
    return np.empty(0, dtype) if bias is None else bias.astype(dtype, copy=False)


class ConvKernels:
    """The fused convolution kernels of a NumPy backend, on its row threads ``self.row_threads``
    (``CpuKernels`` sets them). Each takes and returns what the plain function of conv.py it
    replaces does, with the rows image-major and every image C-contiguous (never a view)."""

    def im2col(self, x, kernel, stride, padding, out_size):
        """Eq. (26): x (B, C, H, W) -> cols (B*OH*OW, kh*kw*C), rows (b, u, v)."""
        x = np.ascontiguousarray(x)
        B, C, _, _ = x.shape
        (kh, kw), (OH, OW) = kernel, out_size
        cols = np.empty((B, OH, OW, kh, kw, C), x.dtype)
        self.row_threads.run(lambda c, xs: _im2col(c, xs, stride, padding), cols, x)
        return cols.reshape(B * OH * OW, kh * kw * C)

    def col2im(self, cols, image_shape, kernel, stride, padding, out_size, bias=None):
        """Eq. (30) (+ ``bias`` (C,) per channel, eq. (32)): cols (B*OH*OW, kh*kw*C), rows (b, u, v)
        -> x (B, C, H, W)."""
        B, C, _, _ = image_shape
        (kh, kw), (OH, OW) = kernel, out_size
        cols = np.ascontiguousarray(cols).reshape(B, OH, OW, kh, kw, C)
        bias = _bias(bias, cols.dtype)
        x = np.empty(image_shape, cols.dtype)
        self.row_threads.run(lambda xs, c: _col2im(xs, c, bias, stride, padding), x, cols)
        return x

    def rows_to_images(self, rows, bias, batch_size, height, width):
        """Eq. (27)'s ``+ b``: rows (B*H*W, K), rows (b, h, w) -> y (B, K, H, W), plus ``bias`` (K,)
        (None: none)."""
        rows = np.ascontiguousarray(rows)
        K = rows.shape[1]
        y, bias = np.empty((batch_size, K, height, width), rows.dtype), _bias(bias, rows.dtype)
        self.row_threads.run(lambda ys, r: _rows_to_images(ys, r, bias),
                             y.reshape(batch_size, K, height * width), rows.reshape(batch_size, height * width, K))
        return y

    def image_rows(self, y):
        """y (B, C, H, W) -> rows (B*H*W, C), rows (b, h, w)."""
        y = np.ascontiguousarray(y)
        B, C, H, W = y.shape
        rows = np.empty((B, H * W, C), y.dtype)
        self.row_threads.run(_image_rows, rows, y.reshape(B, C, H * W))
        return rows.reshape(B * H * W, C)
