"""Convolutions with hand-written backward passes: Conv2d, ConvTranspose2d and Reshape.

Section 18 of docs/derivation.md. Images are NCHW: x (B, C, H, W). A convolution is im2col (every
kernel-sized window of the padded input laid out as one row of a matrix, eq. (26)) followed by one
matmul (eq. (27)); its input gradient is a matmul followed by col2im, the adjoint of im2col (eq. (30)).

The transpose convolution is the adjoint of the convolution in its input (eq. (32)): its forward is
exactly the convolution's input gradient (``_matmul_col2im``), and its backward is the convolution's
forward (``_im2col_matmul``). One pair of functions serves both layers.

Weights are laid out and initialised as PyTorch's: Conv2d ``W`` (out, in, kh, kw) and
ConvTranspose2d ``W`` (in, out, kh, kw), bias (out,), both uniform in +-1/sqrt(fan_in) where
fan_in is ``W.shape[1] * kh * kw`` (PyTorch's kaiming_uniform with a = sqrt(5)), so weights can be
exchanged with ``torch.nn.Conv2d`` / ``torch.nn.ConvTranspose2d``.

Written on ``xp`` only (NumPy or CuPy). Inside a layer the images are held pixel-major, (H, W, B, C):
then a window's pixels have their batch and channels contiguous, and im2col's and col2im's copies
run over long rows (6x faster than from NCHW for the conv VAE's second layer; col2im 2x). The
layers take and return NCHW.

On a NumPy backend with its fused kernels, im2col with its product, the product with its col2im
(and the bias), and the image <-> rows views are those of minivae/kernels/conv_cpu.py instead
(offered by the backend's CPU kernels; a layer's ``conv_kernels``, None where the backend has none,
as CuPy): Numba passes image by image, the rows ordered (b, u, v) rather than (u, v, b), a chunk of
images at a time, and the images between layers held pixel-major (a layer then returns a (B, C, H,
W) view of (B, H, W, C) memory). The functions here stay the reference the kernels are tested
against (tests/test_conv_kernels.py).
"""

import math

from .layers import Layer, Linear, Parameter, Sequential, activation


def conv_output_size(size, kernel, stride, padding):
    """Eq. (25): the output length ``floor((size + 2 padding - kernel) / stride) + 1`` of a
    convolution along one axis (< 1 when the kernel does not fit in the padded input)."""
    return (size + 2 * padding - kernel) // stride + 1


def transpose_output_size(size, kernel, stride, padding):
    """Eq. (31): the output length ``(size - 1) stride - 2 padding + kernel`` of a transpose
    convolution along one axis: the input length of the convolution it is the adjoint of."""
    return (size - 1) * stride - 2 * padding + kernel


def im2col(xp, x, kernel, stride, padding, out_size):
    """Eq. (26): every window of the zero-padded x as one row.

    x: (B, C, H, W); kernel (kh, kw), out_size (OH, OW). Returns cols (OH*OW*B, kh*kw*C) with
    ``cols[(u, v, b), (i, j, c)] = x_pad[b, c, stride*u + i, stride*v + j]``.

    The windows are a view of the padded image: window (u, v) at offset (i, j) is the pixel (stride*u
    + i, stride*v + j), so with the padded image's strides (s_h, s_w, s_b, s_c) the six indices (u, v,
    b, i, j, c) step by (stride*s_h, stride*s_w, s_b, s_h, s_w, s_c), and one copy of that view writes
    all of cols: on a GPU one kernel launch instead of kh*kw (8x faster at batch 128 on an H200), on
    the CPU 2x faster than kh*kw slice copies for the conv VAE's second layer. (``as_strided`` only
    makes the view; CuPy's ``sliding_window_view`` would also copy the window shape to the device and
    read it back.)
    """
    B, C, H, W = x.shape
    (kh, kw), (OH, OW) = kernel, out_size
    padded = xp.zeros((H + 2 * padding, W + 2 * padding, B, C), dtype=x.dtype)  # pixel-major
    padded[padding:padding + H, padding:padding + W] = x.transpose(2, 3, 0, 1)
    s_h, s_w, s_b, s_c = padded.strides
    windows = xp.lib.stride_tricks.as_strided(padded, shape=(OH, OW, B, kh, kw, C),
                                              strides=(stride * s_h, stride * s_w, s_b, s_h, s_w, s_c))
    return xp.ascontiguousarray(windows).reshape(OH * OW * B, kh * kw * C)


def col2im(xp, cols, image_shape, kernel, stride, padding, out_size):
    """Eq. (30): the adjoint of im2col: each entry of cols added back to the pixel it was read from.

    cols: (OH*OW*B, kh*kw*C); image_shape (B, C, H, W). Returns x (B, C, H, W) (a transposed view)
    with ``x[b, c, h, w] = sum of cols[(u, v, b), (i, j, c)] over stride*u + i - padding = h,
    stride*v + j - padding = w``. Windows overlap when kernel > stride: their entries add.
    """
    B, C, H, W = image_shape
    (kh, kw), (OH, OW) = kernel, out_size
    cols = cols.reshape(OH, OW, B, kh, kw, C)
    padded = xp.zeros((H + 2 * padding, W + 2 * padding, B, C), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            padded[i:i + stride * OH:stride, j:j + stride * OW:stride] += cols[:, :, :, i, j]
    return padded[padding:padding + H, padding:padding + W].transpose(2, 3, 0, 1)


def gathered_col2im(xp, col2im_gather, cols, image_shape, kernel, stride, padding, out_size):
    """``col2im`` by CuPy's kernel ``col2im_gather`` (minivae/kernels/cuda.py): one pass that gives each
    pixel the sum of its entries of cols, in the order ``col2im`` adds them (the same bits), instead of
    kh*kw strided additions (one launch instead of 16: 0.26-0.30 ms -> 0.02-0.04 ms at batch 128 on an
    H200). Same arguments and result as ``col2im``."""
    B, C, H, W = image_shape
    (kh, kw), (OH, OW) = kernel, out_size
    pixels = xp.empty((H, W, B, C), dtype=cols.dtype)  # pixel-major, as col2im's
    col2im_gather(xp.ascontiguousarray(cols).reshape(-1), B, C, H, W, kh, kw, OH, OW, stride, padding, pixels)
    return pixels.transpose(2, 3, 0, 1)


def _pixel_rows(y):
    """(B, K, H, W) -> (H*W*B, K): one row per pixel, the layout of the matmuls' outputs."""
    B, K, H, W = y.shape
    return y.transpose(2, 3, 0, 1).reshape(H * W * B, K)


def _from_pixel_rows(rows, batch_size, height, width):
    """(H*W*B, K) -> (B, K, H, W), the inverse of ``_pixel_rows`` (a transposed view)."""
    return rows.reshape(height, width, batch_size, -1).transpose(2, 3, 0, 1)


def _add_bias(xp, y, b):
    """``y + b`` per channel, y (B, K, H, W) and b (K,), into a new C-contiguous array (y may be a
    transposed view)."""
    out = xp.empty(y.shape, dtype=y.dtype)
    xp.add(y, b[:, None, None], out=out)
    return out


def _rows(xp, conv_kernels, y):
    """The image y (B, K, H, W) as one row per pixel (N, K), N = H*W*B: ``_pixel_rows``, or the
    fused kernels' ``image_rows`` (the same rows in their image-major order)."""
    return _pixel_rows(y) if conv_kernels is None else conv_kernels.image_rows(y)


def _im2col_matmul(xp, conv_kernels, x, weight_matrix, kernel, stride, padding, bias=None):
    """Eq. (27): y = cols(x) W_mat (+ b), the convolution of x (B, C, H, W) with the kernel
    ``weight_matrix`` (kh*kw*C, K) and ``bias`` (K,) (None: no bias). ``conv_kernels``: the backend's
    fused convolution kernels, or None for the plain im2col here.
    Returns (y (B, K, OH, OW), cols (N, kh*kw*C)), N = OH*OW*B."""
    B, _, H, W = x.shape
    out_size = (conv_output_size(H, kernel[0], stride, padding), conv_output_size(W, kernel[1], stride, padding))
    if conv_kernels is not None:
        return conv_kernels.im2col_matmul(x, weight_matrix, kernel, stride, padding, out_size, bias)
    cols = im2col(xp, x, kernel, stride, padding, out_size)
    y = _from_pixel_rows(cols @ weight_matrix, B, *out_size)
    return (y if bias is None else _add_bias(xp, y, bias)), cols


def _matmul_col2im(xp, conv_kernels, dy_rows, weight_matrix, image_shape, kernel, stride, padding, out_size, bias=None,
                   col2im_gather=None):
    """Eq. (29)-(30): col2im(dy_rows W_mat^T) (+ b), the gradient of the convolution with respect to
    its input x of ``image_shape`` (B, C, H, W), given the rows ``_rows`` of dy (B, K, OH, OW), with
    ``out_size`` (OH, OW), and ``weight_matrix`` (kh*kw*C, K); ``bias`` (C,) or None. Returns dx.
    ``col2im_gather``: CuPy's kernel for col2im (``gathered_col2im``), or None for ``col2im``."""
    if conv_kernels is not None:
        return conv_kernels.matmul_col2im(dy_rows, weight_matrix, image_shape, kernel, stride, padding, out_size, bias)
    cols = dy_rows @ weight_matrix.T
    dx = (col2im(xp, cols, image_shape, kernel, stride, padding, out_size) if col2im_gather is None else
          gathered_col2im(xp, col2im_gather, cols, image_shape, kernel, stride, padding, out_size))
    return dx if bias is None else _add_bias(xp, dx, bias)


def _pair(value):
    return (int(value), int(value)) if isinstance(value, int) else tuple(int(v) for v in value)


class _Convolution(Layer):
    """What Conv2d and ConvTranspose2d share: arguments, PyTorch's weight init, the weight matrix,
    the weight and bias gradients."""

    def __init__(self, in_channels, out_channels, kernel_size, stride, padding, backend, name, weight_shape):
        super().__init__(name)
        self.xp = backend.xp
        # the backend's fused convolution kernels (minivae/kernels/conv_cpu.py; CPU only), or None: plain xp code
        self.conv_kernels = backend.kernels if hasattr(backend.kernels, "im2col") else None
        # CuPy's col2im kernel (minivae/kernels/cuda.py), or None: the plain col2im (or the CPU's kernels)
        self.col2im_gather = getattr(backend.kernels, "col2im_gather", None)
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel = _pair(kernel_size)
        self.stride, self.padding = int(stride), int(padding)
        if min(self.in_channels, self.out_channels, *self.kernel, self.stride) < 1 or self.padding < 0:
            raise ValueError(f"{type(self).__name__} {name!r}: channels, kernel_size and stride must be >= 1 and "
                             f"padding >= 0, got {in_channels}, {out_channels}, {kernel_size}, {stride}, {padding}")
        fan_in = weight_shape[1] * self.kernel[0] * self.kernel[1]
        bound = 1.0 / math.sqrt(fan_in)
        self.W = Parameter(f"{name}.W", (backend.uniform(weight_shape) * 2 - 1) * bound)
        self.b = Parameter(f"{name}.b", (backend.uniform((self.out_channels,)) * 2 - 1) * bound)

    def parameters(self):
        return [self.W, self.b]

    def _weight_matrix(self):
        """W (K, C, kh, kw) as the matrix W_mat (kh*kw*C, K) of eq. (27): ``W_mat[(i, j, c), k] =
        W[k, c, i, j]`` (a copy of the small kernel)."""
        K, C, kh, kw = self.W.data.shape
        return self.W.data.transpose(2, 3, 1, 0).reshape(kh * kw * C, K)

    def _set_grads(self, rows, cols, dy):
        """Eq. (28): ``dW_mat = cols^T rows`` put back in W's layout; ``db = dy`` summed over batch,
        height and width. rows: (N, K), cols: (N, kh*kw*C).

        OpenBLAS runs this product (a long inner dimension N, a small output) fastest with the
        output's longer side along its rows: where kh*kw*C >= K it is taken as its transpose
        ``dW_mat^T = rows^T cols`` (one core, the conv VAE's 512 x 64: 4.8 ms against 5.2 ms; its
        16 x 32 the other way: 0.47 ms against 0.57 ms)."""
        K, C, kh, kw = self.W.data.shape
        if cols.shape[1] >= rows.shape[1]:
            self.W.grad[...] = (rows.T @ cols).reshape(K, kh, kw, C).transpose(0, 3, 1, 2)
        else:
            self.W.grad[...] = (cols.T @ rows).reshape(kh, kw, C, K).transpose(3, 2, 0, 1)
        dy.sum(axis=(0, 2, 3), out=self.b.grad)

    def __repr__(self):
        return (f"{type(self).__name__}({self.in_channels}, {self.out_channels}, kernel_size={self.kernel}, "
                f"stride={self.stride}, padding={self.padding})")


class Conv2d(_Convolution):
    """Eq. (27): ``y = im2col(x) W_mat + b``; x (B, in, H, W) -> y (B, out, OH, OW), OH and OW by
    eq. (25). W: (out, in, kh, kw), b: (out,), as ``torch.nn.Conv2d`` (cross-correlation: the kernel
    is not flipped). ``needs_input_grad = False`` skips dx (for a first layer reading the data)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, backend=None, name=""):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, backend, name,
                         (int(out_channels), int(in_channels)) + _pair(kernel_size))
        self.needs_input_grad = True

    def forward(self, x):
        y, cols = _im2col_matmul(self.xp, self.conv_kernels, x, self._weight_matrix(), self.kernel, self.stride,
                                 self.padding, self.b.data)
        self._cache = (x.shape, cols)
        return y

    def backward(self, dy):
        """Eq. (28)-(30): ``dW_mat = cols^T dy_rows``, ``db = sum dy``, ``dx = col2im(dy_rows W_mat^T)``.

        dy: (B, out, OH, OW) -> dx: (B, in, H, W), or None when ``needs_input_grad`` is False.
        """
        image_shape, cols = self._saved()
        dy_rows = _rows(self.xp, self.conv_kernels, dy)
        self._set_grads(dy_rows, cols, dy)
        if not self.needs_input_grad:
            return None
        return _matmul_col2im(self.xp, self.conv_kernels, dy_rows, self._weight_matrix(), image_shape, self.kernel,
                              self.stride, self.padding, dy.shape[2:], col2im_gather=self.col2im_gather)


class ConvTranspose2d(_Convolution):
    """Eq. (32): the adjoint of Conv2d in its input, plus a bias: ``y = col2im(x_rows W_mat^T) + b``;
    x (B, in, H, W) -> y (B, out, OH, OW) with OH, OW by eq. (31). W: (in, out, kh, kw), b: (out,),
    as ``torch.nn.ConvTranspose2d`` (output_padding 0, dilation 1, groups 1).

    The forward is Conv2d's input gradient (``_matmul_col2im``) with W read as a Conv2d weight from
    ``out`` to ``in`` channels; the backward is Conv2d's forward (``_im2col_matmul``)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, backend=None, name=""):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, backend, name,
                         (int(in_channels), int(out_channels)) + _pair(kernel_size))

    def forward(self, x):
        B, _, H, W = x.shape
        out_size = tuple(transpose_output_size(n, k, self.stride, self.padding) for n, k in zip((H, W), self.kernel))
        if min(out_size) < 1:
            raise ValueError(f"ConvTranspose2d {self.name!r}: input {H}x{W} gives an empty output {out_size}")
        x_rows = _rows(self.xp, self.conv_kernels, x)
        self._cache = x_rows
        return _matmul_col2im(self.xp, self.conv_kernels, x_rows, self._weight_matrix(), (B, self.out_channels) + out_size,
                              self.kernel, self.stride, self.padding, (H, W), self.b.data,
                              col2im_gather=self.col2im_gather)

    def backward(self, dy):
        """Eq. (33): ``dx = im2col(dy) W_mat`` (Conv2d's forward), ``dW_mat = im2col(dy)^T x_rows``,
        ``db = sum dy``. dy: (B, out, OH, OW) -> dx: (B, in, H, W)."""
        x_rows = self._saved()
        dx, dy_cols = _im2col_matmul(self.xp, self.conv_kernels, dy, self._weight_matrix(), self.kernel, self.stride,
                                     self.padding)
        self._set_grads(x_rows, dy_cols, dy)
        return dx


class Reshape(Layer):
    """Rows <-> images: ``forward`` reshapes x (B, ...) to (B, *shape); ``backward`` reshapes dy back to
    x's shape (a reshape moves no value, so its gradient is the same reshape undone)."""

    def __init__(self, shape, name=""):
        super().__init__(name)
        self.shape = tuple(int(n) for n in shape)

    def forward(self, x):
        self._cache = x.shape
        return x.reshape((x.shape[0],) + self.shape)

    def backward(self, dy):
        """Eq. (34): dy (B, *shape) -> (B, ...) as x was; None stays None (no layer below needs a
        gradient)."""
        shape = self._saved()
        return None if dy is None else dy.reshape(shape)


# --------------------------------------------------------------------------------------------------
# The convolutional encoder and decoder of ``VAE(architecture="conv")``
# --------------------------------------------------------------------------------------------------

KERNEL, STRIDE, PADDING = 4, 2, 1  # each convolution halves the height and width (eq. (25)), each
#                                    transpose convolution doubles them (eq. (31))


def check_image_shape(image_shape):
    """(H, W) as ints; raises ValueError unless both are multiples of 4, the sizes two halvings
    and two doublings bring back to themselves (28x28 -> 7x7 -> 28x28; 28x20 -> 7x5 -> 28x20)."""
    height, width = (int(n) for n in image_shape)
    if height < 4 or width < 4 or height % 4 or width % 4:
        raise ValueError(f"the conv architecture needs images whose height and width are multiples of 4 "
                         f"(28x28, 28x20, ...), not {height}x{width}: use --architecture mlp for these images")
    return height, width


def conv_encoder(image_shape, channels, latent_dim, activation_kind, backend, name="encoder"):
    """Rows (B, H*W) -> [mu | logvar] (B, 2J): two stride-2 4x4 convolutions to ``channels``
    (c1, c2) with an activation after each, then a Linear head from the c2 x H/4 x W/4 features.
    Layers are numbered like PyTorch's nn.Sequential (``encoder.1`` is the first Conv2d)."""
    height, width = check_image_shape(image_shape)
    c1, c2 = channels
    features = c2 * (height // 4) * (width // 4)
    layers = [Reshape((1, height, width), f"{name}.0"),
              Conv2d(1, c1, KERNEL, STRIDE, PADDING, backend, f"{name}.1"),
              activation(activation_kind, backend, f"{name}.2"),
              Conv2d(c1, c2, KERNEL, STRIDE, PADDING, backend, f"{name}.3"),
              activation(activation_kind, backend, f"{name}.4"),
              Reshape((features,), f"{name}.5"),
              Linear(features, 2 * latent_dim, backend, f"{name}.6")]
    layers[1].needs_input_grad = False  # its input is the data
    return Sequential(layers, name)


def conv_decoder(image_shape, channels, latent_dim, activation_kind, backend, name="decoder", out_channels=1):
    """z (N, J) -> ``out_channels`` outputs per pixel (N, out_channels*H*W), channel after channel:
    the encoder mirrored, a Linear to c2 x H/4 x W/4 features and an activation, then two stride-2
    4x4 transpose convolutions, c2 -> c1 (and an activation) -> out_channels (2 for a learned
    variance: [y | r] of eq. (39))."""
    height, width = check_image_shape(image_shape)
    c1, c2 = channels
    layers = [Linear(latent_dim, c2 * (height // 4) * (width // 4), backend, f"{name}.0"),
              activation(activation_kind, backend, f"{name}.1"),
              Reshape((c2, height // 4, width // 4), f"{name}.2"),
              ConvTranspose2d(c2, c1, KERNEL, STRIDE, PADDING, backend, f"{name}.3"),
              activation(activation_kind, backend, f"{name}.4"),
              ConvTranspose2d(c1, out_channels, KERNEL, STRIDE, PADDING, backend, f"{name}.5"),
              Reshape((out_channels * height * width,), f"{name}.6")]
    return Sequential(layers, name)


def conv_decoder_values_per_row(height, width, channels):
    """About how many values one row of the conv decoder's forward holds at once: its activations and
    the transpose convolutions' column arrays (16 per output pixel and channel, at the input size)."""
    c1, c2 = channels
    small, middle = (height // 4) * (width // 4), (height // 2) * (width // 2)
    return 2 * c2 * small + KERNEL * KERNEL * c1 * small + 2 * c1 * middle + KERNEL * KERNEL * middle
