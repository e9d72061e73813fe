"""Fused CPU kernels (Numba) for the convolutions of minivae/conv.py: im2col, col2im with the bias,
the bias of a convolution's output, and the image <-> rows views around the matrix products.

The plain ``xp`` functions of conv.py are the reference. Here the images between two layers are
held **pixel-major**, (B, H, W, C) in memory, and handed on as the (B, C, H, W) view of that memory
(``image.transpose(0, 3, 1, 2)``): the layers still take and return (B, C, H, W), but the rows of a
matrix product, one per pixel and ordered (b, h, w), *are* that memory, so no transpose sits
between a product and the next convolution. (An image that arrives channel-major, such as the
decoder's first, is copied pixel-major once.) The rows of cols are ordered image-major, (b, u, v),
where the plain code orders them (u, v, b); the order is internal to a layer (its forward caches
the cols its backward reads), and which rows exist and what each holds is unchanged:

- ``im2col`` (eq. (26)): ``cols[(b, u, v), (i, j, c)] = x_pad[b, c, s u + i, s v + j]``, read
  straight from the pixel-major image, window row by window row (each tap copies C contiguous
  values), zeros where the window reaches into the padding. A copy.
- ``col2im`` (eq. (30), with the bias of eq. (32) where one is given) as a **gather**: each pixel
  (h, w) of the output sums the entries ``cols[(b, u, v), (i, j, c)]`` with s u + i - p = h and
  s v + j - p = w, starting from 0 and taking the taps (i, j) in the order of the plain code's
  scatter loop (i, then j), then ``+ bias[c]``: each pixel receives the same terms in the same order,
  so the sums are the same bits as the plain scatter, and each pixel is written by one loop only.
- ``rows_to_images`` (eq. (27)'s ``+ b``): ``rows[(b, u, v), k] += bias[k]`` in place; the rows are
  then the pixel-major image.
- ``image_rows``: the rows (b, h, w) of an image: a view of a pixel-major image, a copy otherwise.
- ``im2col_matmul`` (eq. (26)-(27)) and ``matmul_col2im`` (eq. (29)-(30)), the layers' passes: the
  above with the matrix product between, a chunk of images (~2 MB of columns) at a time, so that
  the product reads the columns from the core's cache rather than from memory.

The values in every row of a matrix product are then those of the plain code, so y and every input
gradient are too; only ``dW = cols^T rows`` (eq. (28)) and ``db = sum dy`` sum their B*OH*OW rows in
another order, which rounds differently (tests/test_conv_kernels.py states the tolerance).

Each call is cut into blocks of whole images on the backend's row threads (``RowThreads.run``);
an image is written by one block alone, in one fixed order, so the result is the same bits on any
number of threads. The kernels take float32 or float64 arrays (compiled once per dtype and cached on
disk, as those of cpu.py).
"""

import numba
import numpy as np

_JIT = dict(nogil=True, cache=True, error_model="numpy")


@numba.njit(**_JIT)
def _im2col(cols, x, stride, padding):
    """Eq. (26), image by image: cols (B, OH, OW, kh, kw, C) from the pixel-major x (B, H, W, C);
    ``x_pad[h + p, w + p] = x[h, w]`` inside, 0 in the padding. A window row (u, v, i) is the kw*C
    contiguous values of image row h = s u + i - p from column w = s v - p on, clipped to the image."""
    B, H, W, C = x.shape
    OH, OW, kh, kw = cols.shape[1], cols.shape[2], cols.shape[3], cols.shape[4]
    length = kw * C
    x_rows, window_rows = x.reshape(B, H, W * C), cols.reshape(B, OH, OW, kh, length)
    zero = x.dtype.type(0)
    for n in range(B):
        for u in range(OH):
            for v in range(OW):
                start = (stride * v - padding) * C  # where the window row starts in an image row
                lo, hi = max(0, -start), min(length, W * C - start)  # the part inside the image
                for i in range(kh):
                    h = stride * u + i - padding
                    target = window_rows[n, u, v, i]
                    if 0 <= h < H and lo < hi:
                        for e in range(lo):
                            target[e] = zero
                        source, inside = x_rows[n, h, start + lo:start + hi], target[lo:hi]
                        for e in range(hi - lo):  # indices from 0: no negative-index test in the loop
                            inside[e] = source[e]
                        for e in range(hi, length):
                            target[e] = zero
                    else:
                        for e in range(length):
                            target[e] = zero


@numba.njit(**_JIT)
def _col2im(x, cols, bias, stride, padding):
    """Eq. (30) as a gather, image row by image row: the pixel-major x (B, H, W, C) from cols (B, OH,
    OW, kh, kw, C), plus ``bias`` (C,) (eq. (32)), or nothing for a bias of shape (0,). Row h takes
    the taps i with s u + i - p = h, then each pixel (h, w) of it the taps j with s v + j - p = w:
    each pixel's terms in the plain scatter's order, i then j, summed from 0."""
    H, W, C = x.shape[1], x.shape[2], x.shape[3]
    OH, OW, kh, kw = cols.shape[1], cols.shape[2], cols.shape[3], cols.shape[4]
    zero = x.dtype.type(0)
    row = np.empty((W, C), x.dtype)  # the sums of one image row
    for n in range(x.shape[0]):
        for h in range(H):
            row[:] = zero
            for i in range((h + padding) % stride, kh, stride):
                u = (h + padding - i) // stride
                if u < 0 or u >= OH:
                    continue
                for j in range(kw):
                    for v in range(OW):
                        w = stride * v + j - padding
                        if 0 <= w < W:
                            for c in range(C):
                                row[w, c] += cols[n, u, v, i, j, c]
            for w in range(W):
                if bias.shape[0]:
                    for c in range(C):
                        x[n, h, w, c] = row[w, c] + bias[c]
                else:
                    for c in range(C):
                        x[n, h, w, c] = row[w, c]


@numba.njit(**_JIT)
def _add_bias(rows, bias):
    """Eq. (27)'s ``+ b`` in place: rows (N, K) and bias (K,)."""
    for r in range(rows.shape[0]):
        for k in range(rows.shape[1]):
            rows[r, k] += bias[k]


def _pixel_major(image):
    """The (B, C, H, W) image as a C-contiguous pixel-major (B, H, W, C) array: a view of a
    pixel-major image (what these kernels return), a copy of any other."""
    return np.ascontiguousarray(image.transpose(0, 2, 3, 1))


def _as_image(pixel_major):
    """(B, H, W, C) -> the (B, C, H, W) view of the same memory."""
    return pixel_major.transpose(0, 3, 1, 2)


def _bias(bias, dtype, channels):
    """The bias in ``dtype``, or an empty array for none (what the kernels read as "no bias")."""
    bias = np.empty(0, dtype) if bias is None else bias.astype(dtype, copy=False)
    if bias.shape not in ((0,), (channels,)):
        raise ValueError(f"conv kernels: a bias of shape {bias.shape} for {channels} channels")
    return bias


class ConvKernels:
    """The fused convolution kernels of a NumPy backend, on its row threads ``self.row_threads``
    (``CpuKernels`` sets them). Each takes and returns what the plain function of conv.py it
    replaces does, with the rows image-major and the images returned as (B, C, H, W) views of
    pixel-major memory.

    ``im2col_matmul`` and ``matmul_col2im`` (the layers' passes) work through the batch a chunk of
    images at a time, so that a chunk's column rows are still in the core's cache when the matrix
    product (or col2im) reads them, instead of 16 values per output pixel going out to memory and
    back. A chunk is the images whose column rows fill about ``chunk_bytes``. Each row of a product
    is computed from the same values whatever the chunk, so chunking changes no result.
    """

    chunk_bytes = 2 << 20  # fits the 2-core Zen 4's 1 MB L2 per core plus its L3; 1-4 MB ran alike

    def im2col(self, x, kernel, stride, padding, out_size):
        """Eq. (26): x (B, C, H, W) -> cols (B*OH*OW, kh*kw*C), rows (b, u, v)."""
        x = _pixel_major(x)
        B, _, _, C = x.shape
        (kh, kw), (OH, OW) = kernel, out_size
        cols = np.empty((B, OH, OW, kh, kw, C), x.dtype)
        self._im2col_into(cols, x, stride, padding)
        return cols.reshape(B * OH * OW, kh * kw * C)

    def col2im(self, cols, image_shape, kernel, stride, padding, out_size, bias=None):
        """Eq. (30) (+ ``bias`` (C,) per channel, eq. (32)): cols (B*OH*OW, kh*kw*C), rows (b, u, v)
        -> x (B, C, H, W), a view of pixel-major memory."""
        B, C, H, W = image_shape
        (kh, kw), (OH, OW) = kernel, out_size
        cols = np.ascontiguousarray(cols).reshape(B, OH, OW, kh, kw, C)
        x = np.empty((B, H, W, C), cols.dtype)
        self._col2im_into(x, cols, _bias(bias, cols.dtype, C), stride, padding)
        return _as_image(x)

    def im2col_matmul(self, x, weight_matrix, kernel, stride, padding, out_size, bias=None):
        """Eq. (26)-(27): ``y = im2col(x) W_mat (+ b)``, x (B, C, H, W), ``weight_matrix`` (kh*kw*C,
        K), chunk by chunk. Returns (y (B, K, OH, OW), a view of pixel-major memory; cols)."""
        x = _pixel_major(x)
        B, _, _, C = x.shape
        (kh, kw), (OH, OW) = kernel, out_size
        cols = np.empty((B, OH, OW, kh, kw, C), x.dtype)
        rows = np.empty((B * OH * OW, weight_matrix.shape[1]), x.dtype)
        pixels = OH * OW
        for start, stop in self._chunks(B, cols[0].nbytes):
            self._im2col_into(cols[start:stop], x[start:stop], stride, padding)
            np.matmul(cols[start:stop].reshape((stop - start) * pixels, -1), weight_matrix,
                      out=rows[start * pixels:stop * pixels])
        return self.rows_to_images(rows, bias, B, OH, OW), cols.reshape(B * pixels, -1)

    def matmul_col2im(self, dy_rows, weight_matrix, image_shape, kernel, stride, padding, out_size, bias=None):
        """Eq. (29)-(30): ``dx = col2im(dy_rows W_mat^T) (+ b)``, dy_rows (B*OH*OW, K) ordered (b,
        u, v), ``weight_matrix`` (kh*kw*C, K), chunk by chunk into one reused cols buffer. Returns
        dx (B, C, H, W) of ``image_shape``, a view of pixel-major memory."""
        B, C, H, W = image_shape
        (kh, kw), (OH, OW) = kernel, out_size
        bias = _bias(bias, dy_rows.dtype, C)
        x = np.empty((B, H, W, C), dy_rows.dtype)
        chunks = self._chunks(B, OH * OW * kh * kw * C * x.itemsize)
        cols = np.empty((chunks[0][1], OH, OW, kh, kw, C), x.dtype)
        pixels = OH * OW
        for start, stop in chunks:
            chunk_cols = cols[:stop - start]
            np.matmul(dy_rows[start * pixels:stop * pixels], weight_matrix.T,
                      out=chunk_cols.reshape((stop - start) * pixels, -1))
            self._col2im_into(x[start:stop], chunk_cols, bias, stride, padding)
        return _as_image(x)

    def rows_to_images(self, rows, bias, batch_size, height, width):
        """Eq. (27)'s ``+ b``: rows (B*H*W, K), rows (b, h, w), plus ``bias`` (K,) (None: none), in
        place -> y (B, K, H, W), a view of the rows."""
        rows = np.ascontiguousarray(rows)
        if bias is not None:
            bias = _bias(bias, rows.dtype, rows.shape[1])
            self.row_threads.run(lambda r: _add_bias(r, bias), rows)
        return _as_image(rows.reshape(batch_size, height, width, rows.shape[1]))

    def image_rows(self, y):
        """y (B, C, H, W) -> rows (B*H*W, C), rows (b, h, w): a view of a pixel-major y."""
        rows = _pixel_major(y)
        return rows.reshape(-1, rows.shape[3])

    def _chunks(self, batch_size, bytes_per_image):
        """[(start, stop)] of the images, each chunk about ``chunk_bytes`` of column rows."""
        step = max(1, self.chunk_bytes // bytes_per_image)
        return [(start, min(start + step, batch_size)) for start in range(0, batch_size, step)]

    def _im2col_into(self, cols, x, stride, padding):
        """Eq. (26) into cols (n, OH, OW, kh, kw, C) from the pixel-major x (n, H, W, C), by blocks of
        images on the row threads."""
        self.row_threads.run(lambda c, xs: _im2col(c, xs, stride, padding), cols, x)

    def _col2im_into(self, x, cols, bias, stride, padding):
        """Eq. (30) (+ bias) into the pixel-major x (n, H, W, C) from cols (n, OH, OW, kh, kw, C), by
        blocks of images on the row threads."""
        self.row_threads.run(lambda xs, c: _col2im(xs, c, bias, stride, padding), x, cols)
