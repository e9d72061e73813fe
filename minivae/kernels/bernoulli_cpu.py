"""The fused CPU kernel (Numba) of the Bernoulli likelihood: eq. (8) and (10) in one pass over the logits.

The plain ``xp`` code of ``likelihoods.Bernoulli`` is the reference (tests/test_cpu_kernels.py
compares them). A call into libm cannot be vectorised, so exp and log1p are written here as
polynomials, each to about an ulp, with the constants derived in ``polynomials``:

- ``exp(-a) = 2^-k exp(-r)``, ``k = round(a / ln 2)``, ``|r| <= ln(2)/2``: ``exp(-r)`` by its Taylor
  polynomial, ``2^-k`` made directly from its bits (the exponent field ``bias - k``, a zero
  mantissa) in two halves, each a normal number, so that only the last product can round.
- ``log(1 + e) = 2 atanh(e / (2 + e))`` by the atanh series.

Numba compiles each kernel once per dtype and keeps it on disk (``cache=True``), as the other
kernels of minivae/kernels/cpu.py, which runs them on its row threads (``CpuKernels``).
"""

import decimal
import math
from collections import namedtuple

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

JIT = dict(nogil=True, cache=True, error_model="numpy")

Polynomials = namedtuple("Polynomials", "zero one two half inv_ln2 ln2_hi ln2_lo exp_cutoff exp_taylor "
                                        "exponent_bias mantissa_bits atanh_tail")


def polynomials(dtype):
    """The constants of ``_exp_minus`` and ``_log1p_unit`` for ``dtype``, in that dtype, each derived here.

    - ``exp_cutoff``: exp(-a) rounds to 0 for a above it (below half the smallest subnormal,
      2^-(nmant - minexp + 1)); k = round(a / ln 2) <= round(cutoff / ln 2) then fits ``k_bits`` bits.
    - ``ln2_hi + ln2_lo = ln 2`` to twice the dtype's precision (ln 2 from ``decimal``), ln2_hi
      rounded to nmant + 1 - k_bits significant bits, so that k * ln2_hi is exact (Cody and Waite).
    - ``exponent_bias``, ``mantissa_bits``: 2^-j has the bits ``(exponent_bias - j) << mantissa_bits``
      while it is a normal number (j < exponent_bias); half of k always is (k <= k_max).
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
        k_max = round(exp_cutoff / float(ln2))
        k_bits = k_max.bit_length()
        hi_scale = 2 ** (info.nmant + 1 - k_bits)
        ln2_hi = decimal.Decimal(round(ln2 * hi_scale)) / hi_scale  # exact: a multiple of a power of 2
        ln2_lo = float(ln2 - ln2_hi)
    exponent_bias = 1 - info.minexp
    if k_max - k_max // 2 >= exponent_bias:
        raise ValueError(f"{info.dtype}: half of 2^-k would not be a normal number")
    r = float(ln2) / 2
    degree = next(n for n in range(1, 40) if r ** (n + 1) / math.factorial(n + 1) * math.exp(r) < eps / 8)
    terms = next(n for n in range(1, 40) if 9 / 8 * (1 / 9) ** (n + 1) / (2 * n + 3) < eps / 8)
    return Polynomials(real(0), real(1), real(2), real(0.5), real(1 / float(ln2)), real(float(ln2_hi)),
                       real(ln2_lo), real(exp_cutoff),
                       tuple(real(1 / math.factorial(n)) for n in range(degree, -1, -1)),
                       exponent_bias, info.nmant,
                       tuple(real(1 / (2 * n + 3)) for n in range(terms - 1, -1, -1)))


FLOAT32, FLOAT64 = polynomials(np.float32), polynomials(np.float64)


@intrinsic
def _float_with_bits(typingctx, bits, like):
    """The float of ``like``'s type whose bit pattern is the low bits of the integer ``bits`` (a
    reinterpretation, as C's memcpy or NumPy's ``view``: one instruction, which vectorises)."""
    if not isinstance(bits, types.Integer) or not isinstance(like, types.Float):
        return None

    def codegen(context, builder, signature, args):
        width = ir.IntType(like.bitwidth)
        pattern = builder.trunc(args[0], width) if bits.bitwidth > like.bitwidth else builder.zext(args[0], width)
        return builder.bitcast(pattern, context.get_value_type(like))

    return like(bits, like), codegen


@numba.njit(inline="always", **JIT)
def _horner(coefficients, q):
    """``sum_n c_n q^n`` for coefficients given from the highest power down (Horner's rule)."""
    p = coefficients[0]
    for c in coefficients[1:]:
        p = p * q + c
    return p


@numba.njit(inline="always", **JIT)
def _exp_minus(a, c):
    """exp(-a) for a >= 0 (NaN gives exp(-cutoff)), to about an ulp, without libm.

    a = k ln2 + r with k = round(a / ln 2), so |r| <= ln(2)/2 and exp(-a) = exp(-r) 2^-h 2^-(k-h),
    h = floor(k / 2): exp(-r) by its Taylor polynomial; each power of two from its bits."""
    a = a if a < c.exp_cutoff else c.exp_cutoff
    k = np.floor(a * c.inv_ln2 + c.half)
    r = (a - k * c.ln2_hi) - k * c.ln2_lo
    p = _horner(c.exp_taylor, -r)
    k_int = np.int64(k)
    h = k_int >> 1
    first = _float_with_bits((c.exponent_bias - h) << c.mantissa_bits, p)
    second = _float_with_bits((c.exponent_bias - (k_int - h)) << c.mantissa_bits, p)
    return p * first * second


@numba.njit(inline="always", **JIT)
def _log1p_unit(e, c):
    """log(1 + e) for e in [0, 1], to about an ulp, without libm: with s = e / (2 + e) in [0, 1/3],
    1 + e = (1 + s) / (1 - s), so log(1 + e) = 2 atanh(s) = 2s + 2s s^2 (1/3 + s^2/5 + s^4/7 + ...):
    2s, exact up to s's rounding, plus a tail below 1/27 of it, whose rounding matters less."""
    s = e / (c.two + e)
    s2 = s * s
    return c.two * s + c.two * s * s2 * _horner(c.atanh_tail, s2)


@numba.njit(inline="always", **JIT)
def _softplus(l, c):
    """(softplus(l), e) with e = exp(-|l|) in [0, 1]: ``softplus(l) = max(l, 0) + log1p(e)``, as
    ``likelihoods.softplus`` writes it (max keeping a NaN, as NumPy's does)."""
    e = _exp_minus(abs(l), c)
    return (c.zero if l < c.zero else l) + _log1p_unit(e, c), e


@numba.njit(nogil=True, cache=True, error_model="numpy", fastmath={"reassoc"})
def row_sum(values):
    """The sum of a 1-D array, its additions reordered as LLVM vectorises them best (``reassoc``,
    this function only): the order depends only on the length, so the bits do not change with the
    threads. (A float sum inside an elementwise loop may not be reordered, which stops that loop's
    vectorisation: the kernels write a row's terms into an array and sum it here.)"""
    total = values.dtype.type(0)
    for j in range(values.shape[0]):
        total += values[j]
    return total


@numba.njit(inline="always", **JIT)
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
        nll[i, 0] = row_sum(terms)


@numba.njit(inline="always", **JIT)
def _bernoulli_nll(logits, x, nll, c):
    """Eq. (8) alone (for evaluation: no gradient): ``nll = sum_d softplus(l) - x l`` into nll (N, 1)."""
    terms = np.empty(logits.shape[1], logits.dtype)
    for i in range(logits.shape[0]):
        for j in range(logits.shape[1]):
            terms[j] = _softplus(logits[i, j], c)[0] - x[i, j] * logits[i, j]
        nll[i, 0] = row_sum(terms)


@numba.njit(**JIT)
def _bernoulli_float32(logits, x, nll, dlogits):
    _bernoulli(logits, x, nll, dlogits, FLOAT32)


@numba.njit(**JIT)
def _bernoulli_float64(logits, x, nll, dlogits):
    _bernoulli(logits, x, nll, dlogits, FLOAT64)


@numba.njit(**JIT)
def _bernoulli_nll_float32(logits, x, nll):
    _bernoulli_nll(logits, x, nll, FLOAT32)


@numba.njit(**JIT)
def _bernoulli_nll_float64(logits, x, nll):
    _bernoulli_nll(logits, x, nll, FLOAT64)


BERNOULLI = {np.dtype(np.float32): _bernoulli_float32, np.dtype(np.float64): _bernoulli_float64}
"""logits, x (N, D), nll (N, 1), dlogits (N, D) of a dtype -> the kernel of eq. (8) and (10) for it."""
BERNOULLI_NLL = {np.dtype(np.float32): _bernoulli_nll_float32, np.dtype(np.float64): _bernoulli_nll_float64}
"""logits, x (N, D), nll (N, 1) of a dtype -> the kernel of eq. (8) alone for it."""
