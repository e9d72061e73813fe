"""Fused CPU kernels (Numba): the elementwise work of a training step, each in one pass over memory.

The plain ``xp`` code in layers, likelihoods, gaussian and optim is the reference: each kernel here
computes its formulas, equation number beside each, and tests/test_cpu_kernels.py compares them:
the same bits where the operations are the same (Adam, SGD, ReLU), within a stated tolerance where
they are not (a polynomial exp and log1p in the Bernoulli likelihood, libm's exp in the Gaussian
pieces, sums added in another order).

``CpuKernels`` offers them to a Backend under the names and arguments of the CuPy kernels
(minivae/kernels/cuda.py), plus ReLU, a Linear layer's bias with the ReLU after it, and the
optimizer updates, which only the CPU fuses. Each call is cut into blocks of rows on the backend's
row threads (``RowThreads.run``); every kernel treats each row on its own, so the result is the
same bits on any number of threads, and ``nogil=True`` lets the blocks run side by side. The one
kernel that sums over rows (a bias gradient, ``relu_backward_column_sums``) runs on one thread.

Numba compiles each kernel on first use, once per dtype and array layout, and ``cache=True`` keeps
the machine code on disk (next to this file, or in Numba's user cache folder where this one is
read-only), so that later processes load it instead of compiling. The loops are written for LLVM
to vectorise them: ``error_model="numpy"`` (no Python zero-division checks), no float sum inside
an elementwise loop (a sum may not be reordered, which stops vectorisation: rows are summed in
``_row_sum`` instead, where reordering is allowed), and exp and log1p as polynomials in the
Bernoulli kernel (minivae/kernels/bernoulli_cpu.py), because a call into libm cannot be vectorised.
"""

import math

import numba
import numpy as np

from .bernoulli_cpu import BERNOULLI, BERNOULLI_NLL, JIT as _JIT, row_sum as _row_sum
from .conv_cpu import ConvKernels


# ------------------------------------------------------------------------------ optimizer updates

@numba.njit(**_JIT)
def _adam(theta, g, m, v, beta1, beta2, one_minus_beta1, one_minus_beta2, inverse_sqrt_correction2, step_size,
          eps, weight_decay):
    """Eq. (19), per element, in the operation order of ``Adam._update``: ``g <- g + wd theta``;
    ``m <- b1 m + (1-b1) g``; ``v <- b2 v + (1-b2) g^2``; ``theta <- theta - lr m_hat / (sqrt(v_hat) + eps)``
    as ``theta - m / (sqrt(v) / sqrt(1-b2^t) + eps) * (lr / (1-b1^t))``. Scalars come in the arrays'
    dtype, as NumPy casts them."""
    for i in range(theta.shape[0]):
        gi = g[i]
        if weight_decay != 0:
            gi = gi + weight_decay * theta[i]
        mi = m[i] * beta1 + gi * one_minus_beta1
        vi = v[i] * beta2 + gi * gi * one_minus_beta2
        m[i] = mi
        v[i] = vi
        theta[i] -= mi / (np.sqrt(vi) * inverse_sqrt_correction2 + eps) * step_size


@numba.njit(**_JIT)
def _sgd(theta, g, buf, lr, momentum, weight_decay, first_step):
    """Eq. (20), per element, as ``SGD._update``: ``g <- g + wd theta``; with momentum
    ``buf <- momentum buf + g`` (``buf = g`` at the first step) and ``g <- buf``; ``theta <- theta - lr g``."""
    for i in range(theta.shape[0]):
        gi = g[i]
        if weight_decay != 0:
            gi = gi + weight_decay * theta[i]
        if momentum != 0:
            if not first_step:
                gi = buf[i] * momentum + gi
            buf[i] = gi
        theta[i] -= gi * lr


# ------------------------------------------------------------------------------------------- ReLU

@numba.njit(**_JIT)
def _relu(x, y):
    """``y = x * [x > 0]`` (the ReLU of ``layers.ReLU.forward``), rows of 2-D arrays."""
    zero, one = x.dtype.type(0), x.dtype.type(1)
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            xij = x[i, j]
            y[i, j] = xij * (one if xij > zero else zero)


@numba.njit(**_JIT)
def _relu_backward(dy, y, dx):
    """Eq. (13): ``dx = dy * [y > 0]`` with the saved output y."""
    zero, one = y.dtype.type(0), y.dtype.type(1)
    for i in range(dy.shape[0]):
        for j in range(dy.shape[1]):
            dx[i, j] = dy[i, j] * (one if y[i, j] > zero else zero)


@numba.njit(**_JIT)
def _bias_relu(y, b):
    """Eq. (4), (6) then the ReLU, in place: ``y <- (y + b) * [y + b > 0]`` for y = x W (B, out), b (out,):
    the ``y += b`` of ``Linear.forward`` and the ``x * [x > 0]`` of ``ReLU.forward`` in one pass."""
    zero, one = y.dtype.type(0), y.dtype.type(1)
    for i in range(y.shape[0]):
        for j in range(y.shape[1]):
            t = y[i, j] + b[j]
            y[i, j] = t * (one if t > zero else zero)


@numba.njit(**_JIT)
def _relu_backward_column_sums(da, a, dy, db):
    """Eq. (13) then eq. (12)'s bias gradient: ``dy = da * [a > 0]`` and ``db = sum_rows dy``, one
    pass. The rows are added in order, 0 to B-1, as NumPy's ``dy.sum(axis=0)`` adds them."""
    zero, one = a.dtype.type(0), a.dtype.type(1)
    for j in range(dy.shape[1]):
        db[j] = zero
    for i in range(dy.shape[0]):
        for j in range(dy.shape[1]):
            dyij = da[i, j] * (one if a[i, j] > zero else zero)
            dy[i, j] = dyij
            db[j] += dyij


# ---------------------------------------------------------------------- the Gaussian posterior

@numba.njit(**_JIT)
def _reparameterize(mu, logvar, eps, z):
    """Eq. (5): ``z = mu + eps * exp(0.5 * logvar)``. mu, logvar: (B, J); eps, z: (B, L, J)
    (the (L, B, J) arrays seen with B first, so that rows split along B)."""
    half = mu.dtype.type(0.5)
    for b in range(mu.shape[0]):
        for j in range(mu.shape[1]):
            std = np.exp(half * logvar[b, j])
            for s in range(eps.shape[1]):
                z[b, s, j] = mu[b, j] + eps[b, s, j] * std


@numba.njit(**_JIT)
def _kl(mu, logvar, kl):
    """Eq. (7): ``kl = -0.5 * sum_j (1 + logvar_j - mu_j^2 - exp(logvar_j))`` per row, into kl (B, 1)."""
    one, half = mu.dtype.type(1), mu.dtype.type(0.5)
    terms = np.empty(mu.shape[1], mu.dtype)
    for b in range(mu.shape[0]):
        for j in range(mu.shape[1]):
            terms[j] = one + logvar[b, j] - mu[b, j] * mu[b, j] - np.exp(logvar[b, j])
        kl[b, 0] = -half * _row_sum(terms)


@numba.njit(**_JIT)
def _head_gradient(dz_sum, dz_eps_sum, mu, logvar, dmu, dlogvar):
    """Eq. (18) after its sums over L, in the operation order of ``gaussian.head_gradient``'s plain
    path: ``dmu = sum_s dz_s + mu``;
    ``dlogvar = (sum_s dz_s eps_s) * (0.5 exp(0.5 logvar)) + 0.5 (exp(logvar) - 1)``."""
    one, half = mu.dtype.type(1), mu.dtype.type(0.5)
    for b in range(mu.shape[0]):
        for j in range(mu.shape[1]):
            dmu[b, j] = dz_sum[b, j] + mu[b, j]
            dlogvar[b, j] = (dz_eps_sum[b, j] * (half * np.exp(half * logvar[b, j]))
                             + half * (np.exp(logvar[b, j]) - one))


# ---------------------------------------------------------------------------------- the kernels

def _rows(array):
    """``array`` seen as (rows, everything else): the 2-D shape the row kernels take."""
    return array.reshape(array.shape[0], -1)


def _memory_axes(array):
    """The axes of ``array`` (B, ...) with the batch first, the others by decreasing stride: the
    order its values lie in memory (the conv kernels' pixel-major images: B, H, W, C)."""
    return (0, *sorted(range(1, array.ndim), key=lambda axis: -array.strides[axis]))


def _new_rows_like(array, axes):
    """A new array of ``array``'s shape laid out in the order ``axes``, and its (B, rest) rows view."""
    rows = np.empty((array.shape[0], math.prod(array.shape[1:])), array.dtype)
    return rows.reshape([array.shape[a] for a in axes]).transpose(np.argsort(axes)), rows


def _common_dtype(*arrays):
    """The arrays in their common dtype (cast only where one differs, as the plain formulas would)."""
    dtype = np.result_type(*arrays)
    return [a.astype(dtype, copy=False) for a in arrays]


class CpuKernels(ConvKernels):
    """The fused kernels of a NumPy backend, run on its row threads (``row_threads``); with the
    convolution kernels of conv_cpu.py (``ConvKernels``).

    ``bernoulli_nll_and_grad``, ``reparameterize``, ``kl_terms`` and ``head_gradient`` have the
    names, arguments and results of the CuPy kernels, except that the CPU's sums over a row are done
    in the same pass: ``bernoulli_nll_and_grad`` and ``kl_terms`` (and ``bernoulli_nll``) give each
    row's total as an (N, 1) column, whose sum over axis 1 (the caller's) is itself.
    """

    # The Bernoulli kernel is split over the row threads only above this many times the values per
    # thread that RowThreads asks for (its min_elements_per_thread, 32,768: 262,144 values). Its exp
    # and log1p make it ~1.2 ns a value in one pass (a 128 x 784 batch: ~120 us on a 2-core Zen 4),
    # against which handing half to another thread (~60 us of wake-ups) gains nothing.
    bernoulli_split_factor = 8

    def __init__(self, row_threads):
        self.row_threads = row_threads

    def _rows_on_threads(self, factor, function, *arrays):
        """``function(*arrays)`` on the row threads when the first array holds at least ``factor``
        times the values per thread the row threads split at; on this thread below (the same bits
        either way: each row is computed on its own)."""
        if arrays[0].size < factor * self.row_threads.min_elements_per_thread:
            function(*arrays)
        else:
            self.row_threads.run(function, *arrays)

    def bernoulli_nll_and_grad(self, logits, x):
        """Eq. (8) and (10): logits, x (N, D) -> (nll (N, 1), dlogits (N, D))."""
        logits, x = _common_dtype(logits, x)
        nll = np.empty((logits.shape[0], 1), logits.dtype)
        dlogits = np.empty(logits.shape, logits.dtype)
        self._rows_on_threads(self.bernoulli_split_factor, BERNOULLI[logits.dtype], logits, x, nll, dlogits)
        return nll, dlogits

    def bernoulli_nll(self, logits, x):
        """Eq. (8) alone: logits, x (N, D) -> nll (N, 1) (CPU only: the evaluation's forward pass)."""
        logits, x = _common_dtype(logits, x)
        nll = np.empty((logits.shape[0], 1), logits.dtype)
        self._rows_on_threads(self.bernoulli_split_factor, BERNOULLI_NLL[logits.dtype], logits, x, nll)
        return nll

    def reparameterize(self, mu, logvar, eps):
        """Eq. (5): mu, logvar (B, J), eps (L, B, J) -> z (L, B, J)."""
        mu, logvar, eps = _common_dtype(mu, logvar, eps)
        z = np.empty(eps.shape, eps.dtype)
        self.row_threads.run(_reparameterize, mu, logvar, eps.transpose(1, 0, 2), z.transpose(1, 0, 2))
        return z

    def kl_terms(self, mu, logvar):
        """Eq. (7): mu, logvar (B, J) -> each row's KL (B, 1)."""
        mu, logvar = _common_dtype(mu, logvar)
        kl = np.empty((mu.shape[0], 1), mu.dtype)
        self.row_threads.run(_kl, mu, logvar, kl)
        return kl

    def head_gradient(self, dz_sum, dz_eps_sum, mu, logvar):
        """Eq. (18): the sums over L of dz and dz * eps, mu, logvar (B, J) -> (dmu, dlogvar) (B, J)."""
        dz_sum, dz_eps_sum, mu, logvar = _common_dtype(dz_sum, dz_eps_sum, mu, logvar)
        dmu, dlogvar = np.empty(mu.shape, mu.dtype), np.empty(mu.shape, mu.dtype)
        self.row_threads.run(_head_gradient, dz_sum, dz_eps_sum, mu, logvar, dmu, dlogvar)
        return dmu, dlogvar

    def relu(self, x):
        """``y = x * [x > 0]``: x (B, ...) -> y, a new array."""
        axes = _memory_axes(x)  # y laid out as x: a pass in memory order for the conv kernels' images
        y, y_rows = _new_rows_like(x, axes)
        self.row_threads.run(_relu, _rows(x.transpose(axes)), y_rows)
        return y

    def relu_backward(self, dy, y):
        """Eq. (13): ``dx = dy * [y > 0]``: dy, y (B, ...) -> dx, a new array."""
        dy, y = _common_dtype(dy, y)
        axes = _memory_axes(y)  # dx laid out as y
        dx, dx_rows = _new_rows_like(dy, axes)
        self.row_threads.run(_relu_backward, _rows(dy.transpose(axes)), _rows(y.transpose(axes)), dx_rows)
        return dx

    def bias_relu(self, y, b):
        """Eq. (4), (6) and the ReLU: ``y <- relu(y + b)`` in place, y = x W (B, out), b (out,); returns y."""
        self.row_threads.run(lambda rows: _bias_relu(rows, b), y)
        return y

    def relu_backward_column_sums(self, da, a, db):
        """Eq. (13) and eq. (12)'s ``db``: ``dy = da * [a > 0]`` (a new (B, out) array, returned) and
        ``db = sum_rows dy`` written into db (out,). On one thread: the column sums run over all rows."""
        da, a = _common_dtype(da, a)
        dy = np.empty(da.shape, da.dtype)
        _relu_backward_column_sums(da, a, dy, db)
        return dy

    def adam_update(self, theta, g, m, v, step, lr, beta1, beta2, eps, weight_decay):
        """Eq. (19) at step ``step`` on flat arrays, in place: theta, m and v are updated."""
        real = theta.dtype.type
        scalars = [real(value) for value in (beta1, beta2, 1 - beta1, 1 - beta2, 1 / math.sqrt(1 - beta2 ** step),
                                             lr / (1 - beta1 ** step), eps, weight_decay)]
        self.row_threads.run(lambda *blocks: _adam(*blocks, *scalars), theta, g, m, v)

    def sgd_update(self, theta, g, buf, step, lr, momentum, weight_decay):
        """Eq. (20) at step ``step`` on flat arrays, in place: theta and buf are updated."""
        real = theta.dtype.type
        scalars = [real(lr), real(momentum), real(weight_decay), step == 1]
        self.row_threads.run(lambda *blocks: _sgd(*blocks, *scalars), theta, g, buf)
