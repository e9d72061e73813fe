"""Fused CPU kernels (Numba): the elementwise work of a training step, each in one pass over memory.

The plain ``xp`` code in layers, likelihoods, gaussian and optim is the reference: each kernel here
computes its formulas, equation number beside each, and tests/test_cpu_kernels.py compares them:
the same bits where the operations are the same (Adam, SGD, ReLU), within a stated tolerance where
they are not (a polynomial exp and log1p in the Bernoulli likelihood, libm's exp in the Gaussian
pieces, sums added in another order).

``CpuKernels`` offers them to a Backend under the names and arguments of the CuPy kernels
(minivae/kernels/cuda.py), plus ReLU and the optimizer updates, which only the CPU fuses. Each
call is cut into blocks of rows on the backend's row threads (``RowThreads.run``); every kernel
treats each row on its own, so the result is the same bits on any number of threads, and
``nogil=True`` lets the blocks run side by side.

Numba compiles each kernel on first use, once per dtype and array layout, and ``cache=True`` keeps
the machine code on disk (next to this file, or in Numba's user cache folder where this one is
read-only), so that later processes load it instead of compiling. The loops are written for LLVM
to vectorise them: ``error_model="numpy"`` (no Python zero-division checks), no float sum inside
an elementwise loop (a sum may not be reordered, which stops vectorisation: rows are summed in
``_row_sum`` instead, where reordering is allowed), and exp and log1p as polynomials in the
Bernoulli kernel, because a call into libm cannot be vectorised.
"""

import decimal
import math
from collections import namedtuple

import numba
import numpy as np

from .conv_cpu import ConvKernels

_JIT = dict(nogil=True, cache=True, error_model="numpy")


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


# ------------------------------------------------------------------ the Bernoulli likelihood

Polynomials = namedtuple("Polynomials", "zero one two half inv_ln2 ln2_hi ln2_lo exp_cutoff exp_taylor "
                                        "powers_of_half atanh_tail")


def polynomials(dtype):
    """The constants of ``_exp_minus`` and ``_log1p_unit`` for ``dtype``, in that dtype, each derived here.

    - ``exp_cutoff``: exp(-a) rounds to 0 for a above it (below half the smallest subnormal,
      2^-(nmant - minexp + 1)); k = round(a / ln 2) <= round(cutoff / ln 2) then fits ``k_bits`` bits.
    - ``ln2_hi + ln2_lo = ln 2`` to twice the dtype's precision (ln 2 from ``decimal``), ln2_hi
      rounded to nmant + 1 - k_bits significant bits, so that k * ln2_hi is exact (Cody and Waite).
    - ``powers_of_half``: 2^-(2^b) for b < k_bits, one per binary digit of k.
    - ``exp_taylor``: 1/n!, n = degree .. 0, with the remainder r^(n+1)/(n+1)! e^r for
      |r| <= ln(2)/2 below eps/8 (an eighth of an ulp of 1).
    - ``atanh_tail``: 1/(2n+3), n = terms-1 .. 0, with the series' remainder, at most
      (9/8) (1/9)^(terms+1) / (2 terms + 3) for s <= 1/3, below eps/8.
    """
    info = np.finfo(dtype)
    real, eps = info.dtype.type, float(info.eps)
    with decimal.localcontext() as context:
        context.prec = 50
        ln2 = decimal.Decimal(2).ln()
        exp_cutoff = math.ceil((info.nmant - info.minexp + 1) * float(ln2))
        k_bits = round(exp_cutoff / float(ln2)).bit_length()
        hi_scale = 2 ** (info.nmant + 1 - k_bits)
        ln2_hi = decimal.Decimal(round(ln2 * hi_scale)) / hi_scale  # exact: a multiple of a power of 2
        ln2_lo = float(ln2 - ln2_hi)
    r = float(ln2) / 2
    degree = next(n for n in range(1, 40) if r ** (n + 1) / math.factorial(n + 1) * math.exp(r) < eps / 8)
    terms = next(n for n in range(1, 40) if 9 / 8 * (1 / 9) ** (n + 1) / (2 * n + 3) < eps / 8)
    return Polynomials(real(0), real(1), real(2), real(0.5), real(1 / float(ln2)), real(float(ln2_hi)),
                       real(ln2_lo), real(exp_cutoff),
                       tuple(real(1 / math.factorial(n)) for n in range(degree, -1, -1)),
                       tuple(real(2.0 ** -(2 ** b)) for b in range(k_bits)),
                       tuple(real(1 / (2 * n + 3)) for n in range(terms - 1, -1, -1)))


_FLOAT32, _FLOAT64 = polynomials(np.float32), polynomials(np.float64)


@numba.njit(inline="always", **_JIT)
def _horner(coefficients, q):
    """``sum_n c_n q^n`` for coefficients given from the highest power down (Horner's rule)."""
    p = coefficients[0]
    for c in coefficients[1:]:
        p = p * q + c
    return p


@numba.njit(inline="always", **_JIT)
def _exp_minus(a, c):
    """exp(-a) for a >= 0 (NaN gives exp(-cutoff)), to about an ulp, without libm.

    a = k ln2 + r with k = round(a / ln 2), so |r| <= ln(2)/2 and exp(-a) = 2^-k exp(-r):
    exp(-r) by its Taylor polynomial, then times 2^-(2^b) for each binary digit b of k."""
    a = a if a < c.exp_cutoff else c.exp_cutoff
    k = np.floor(a * c.inv_ln2 + c.half)
    r = (a - k * c.ln2_hi) - k * c.ln2_lo
    p = _horner(c.exp_taylor, -r)
    digits = np.int64(k)
    for half_power in c.powers_of_half:
        if digits & 1:
            p *= half_power
        digits >>= 1
    return p


@numba.njit(inline="always", **_JIT)
def _log1p_unit(e, c):
    """log(1 + e) for e in [0, 1], to about an ulp, without libm: with s = e / (2 + e) in [0, 1/3],
    1 + e = (1 + s) / (1 - s), so log(1 + e) = 2 atanh(s) = 2s + 2s s^2 (1/3 + s^2/5 + s^4/7 + ...):
    2s, exact up to s's rounding, plus a tail below 1/27 of it, whose rounding matters less."""
    s = e / (c.two + e)
    s2 = s * s
    return c.two * s + c.two * s * s2 * _horner(c.atanh_tail, s2)


@numba.njit(inline="always", **_JIT)
def _softplus(l, c):
    """(softplus(l), e) with e = exp(-|l|) in [0, 1]: ``softplus(l) = max(l, 0) + log1p(e)``, as
    ``likelihoods.softplus`` writes it (max keeping a NaN, as NumPy's does)."""
    e = _exp_minus(abs(l), c)
    return (c.zero if l < c.zero else l) + _log1p_unit(e, c), e


@numba.njit(inline="always", **_JIT)
def _bernoulli(logits, x, nll, dlogits, c):
    """Eq. (8) and (10) for rows of logits and x (N, D), into nll (N, 1) and dlogits (N, D):
    ``nll = sum_d softplus(l) - x l``; ``sigmoid(l) = 1/(1 + e)`` for l >= 0, ``e/(1 + e)`` for l < 0
    (no overflow either way); ``dlogits = sigmoid(l) - x``, plus ``softplus - softplus`` (0, or NaN
    where l is not finite, as the plain code's exp(l - softplus) gives)."""
    terms = np.empty(logits.shape[1], logits.dtype)
    for i in range(logits.shape[0]):
        for j in range(logits.shape[1]):
            l, xij = logits[i, j], x[i, j]
            softplus, e = _softplus(l, c)
            terms[j] = softplus - xij * l
            sigmoid = (c.one if l >= c.zero else e) / (c.one + e)
            dlogits[i, j] = sigmoid - xij + (softplus - softplus)
        nll[i, 0] = _row_sum(terms)


@numba.njit(inline="always", **_JIT)
def _bernoulli_nll(logits, x, nll, c):
    """Eq. (8) alone (for evaluation: no gradient): ``nll = sum_d softplus(l) - x l`` into nll (N, 1)."""
    terms = np.empty(logits.shape[1], logits.dtype)
    for i in range(logits.shape[0]):
        for j in range(logits.shape[1]):
            terms[j] = _softplus(logits[i, j], c)[0] - x[i, j] * logits[i, j]
        nll[i, 0] = _row_sum(terms)


@numba.njit(**_JIT)
def _bernoulli_float32(logits, x, nll, dlogits):
    _bernoulli(logits, x, nll, dlogits, _FLOAT32)


@numba.njit(**_JIT)
def _bernoulli_float64(logits, x, nll, dlogits):
    _bernoulli(logits, x, nll, dlogits, _FLOAT64)


@numba.njit(**_JIT)
def _bernoulli_nll_float32(logits, x, nll):
    _bernoulli_nll(logits, x, nll, _FLOAT32)


@numba.njit(**_JIT)
def _bernoulli_nll_float64(logits, x, nll):
    _bernoulli_nll(logits, x, nll, _FLOAT64)


_BERNOULLI = {np.dtype(np.float32): _bernoulli_float32, np.dtype(np.float64): _bernoulli_float64}
_BERNOULLI_NLL = {np.dtype(np.float32): _bernoulli_nll_float32, np.dtype(np.float64): _bernoulli_nll_float64}


@numba.njit(nogil=True, cache=True, error_model="numpy", fastmath={"reassoc"})
def _row_sum(values):
    """The sum of a 1-D array, its additions reordered as LLVM vectorises them best (``reassoc``,
    this function only): the order depends only on the length, so the bits do not change with the
    threads."""
    total = values.dtype.type(0)
    for j in range(values.shape[0]):
        total += values[j]
    return total


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

    def __init__(self, row_threads):
        self.row_threads = row_threads

    def bernoulli_nll_and_grad(self, logits, x):
        """Eq. (8) and (10): logits, x (N, D) -> (nll (N, 1), dlogits (N, D))."""
        logits, x = _common_dtype(logits, x)
        nll = np.empty((logits.shape[0], 1), logits.dtype)
        dlogits = np.empty(logits.shape, logits.dtype)
        self.row_threads.run(_BERNOULLI[logits.dtype], logits, x, nll, dlogits)
        return nll, dlogits

    def bernoulli_nll(self, logits, x):
        """Eq. (8) alone: logits, x (N, D) -> nll (N, 1) (CPU only: the evaluation's forward pass)."""
        logits, x = _common_dtype(logits, x)
        nll = np.empty((logits.shape[0], 1), logits.dtype)
        self.row_threads.run(_BERNOULLI_NLL[logits.dtype], logits, x, nll)
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
