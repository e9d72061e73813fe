"""Fused elementwise CUDA kernels for the CuPy backend: each does in one pass over memory what the
plain ``xp`` code does in several, with the same formulas (equation numbers from docs/derivation.md).

A kernel is written as an ``ElementwiseSource``: plain strings in the syntax of CuPy's
``ElementwiseKernel`` (parameters ``"T name, ..."``, a loop body run once per element). ``T`` is the
floating type of the arrays, float32 or float64, fixed by the arguments of each call. Nothing here
imports CuPy: ``build(cupy)`` turns the sources into ``cupy.ElementwiseKernel`` objects, and the
cuda-check tests (``cuda_check/``) generate from the same sources the exact CUDA code CuPy compiles
and compile it with NVRTC, on a machine without a GPU.

Parameters a caller passes as Python numbers rather than arrays (a learning rate, a bias-correction
factor, an image size) are named in ``scalars``; every other parameter is an array. A ``raw`` array
is read at any index the body computes (CuPy's ``raw``), not element for element; a kernel whose
inputs are all raw or scalars is given its output array, whose size sets the number of elements.
An Adam update, say, would be
``ElementwiseSource("T g, T lr_t, T eps_t", "T theta, T m, T v", "...", scalars=("lr_t", "eps_t"))``
with ``theta``, ``m`` and ``v`` passed as output arrays, updated in place.
"""

from collections import namedtuple
from types import SimpleNamespace

ElementwiseSource = namedtuple("ElementwiseSource", ["in_params", "out_params", "operation", "scalars"],
                               defaults=[()])
ElementwiseSource.__doc__ = """One elementwise kernel: its input and output parameters, the body
computing one element, and the input parameters passed as Python numbers (``scalars``)."""

SOURCES = {
    # likelihoods.Bernoulli.nll_and_grad, l = logits: softplus(l) = max(l, 0) + log1p(exp(-|l|)),
    # sigmoid(l) = exp(l - softplus(l)), both finite for every finite l (float32's largest too).
    "bernoulli_nll_and_grad": ElementwiseSource(
        "T l, T x", "T nll, T dlogits",
        "T a = fabs(l);"
        " T softplus = fmax(l, (T)0) + log1p(exp(-a));"
        " nll = softplus - x * l;"                    # eq. (8), one term of the sum over d
        " dlogits = exp(l - softplus) - x;"),         # eq. (10): sigmoid(l) - x
    # gaussian.reparameterize; mu, logvar (B, J) broadcast over the L samples of eps (L, B, J).
    "reparameterize": ElementwiseSource(
        "T mu, T logvar, T eps", "T z",
        "z = mu + eps * exp((T)0.5 * logvar);"),      # eq. (5)
    # gaussian.kl_divergence before its sum over j.
    "kl_terms": ElementwiseSource(
        "T mu, T logvar", "T kl",
        "kl = (T)-0.5 * ((T)1 + logvar - mu * mu - exp(logvar));"),  # eq. (7), term j
    # gaussian.head_gradient after the sums over the L samples: dz_sum = sum_s dz_s,
    # dz_eps_sum = sum_s dz_s * eps_s.
    "head_gradient": ElementwiseSource(
        "T dz_sum, T dz_eps_sum, T mu, T logvar", "T dmu, T dlogvar",
        "T std = exp((T)0.5 * logvar);"
        " dmu = dz_sum + mu;"                                                        # eq. (18), (16) + (17)
        " dlogvar = dz_eps_sum * (T)0.5 * std + (T)0.5 * (exp(logvar) - (T)1);"),   # eq. (18), (16) + (17)
    # conv.col2im (eq. (30)) as a gather: one thread per pixel of the pixel-major image (H, W, B, C) sums
    # the entries of cols (OH*OW*B, KH*KW*C) read from it, over the kernel offsets (ki, kj) in the
    # order col2im adds them, so the sums are col2im's to the bit. Pixel (h, w) was read by window
    # (u, v) at offset (ki, kj) where S*u + ki - P = h and S*v + kj - P = w.
    "col2im_gather": ElementwiseSource(
        "raw T cols, int32 B, int32 C, int32 H, int32 W, int32 KH, int32 KW, int32 OH, int32 OW, int32 S, int32 P",
        "T img",
        "ptrdiff_t c = i % C, r = i / C; ptrdiff_t b = r % B; r /= B; ptrdiff_t w = r % W, h = r / W;"
        " T sum = (T)0;"
        " for (int ki = 0; ki < KH; ++ki) {"
        "  ptrdiff_t hu = h + P - ki; if (hu < 0 || hu % S != 0 || hu / S >= OH) continue;"
        "  for (int kj = 0; kj < KW; ++kj) {"
        "   ptrdiff_t wv = w + P - kj; if (wv < 0 || wv % S != 0 || wv / S >= OW) continue;"
        "   sum += cols[((((hu / S) * OW + wv / S) * B + b) * KH + ki) * KW * C + kj * C + c];"
        "  }"
        " }"
        " img = sum;",
        scalars=("B", "C", "H", "W", "KH", "KW", "OH", "OW", "S", "P")),
}


def kernel_name(key):
    """The CUDA function name of ``SOURCES[key]`` (what a profiler shows)."""
    return f"minivae_{key}"


def build(cupy, sources=None):
    """The kernels of ``sources`` (default ``SOURCES``) as ``cupy.ElementwiseKernel`` objects, one
    attribute per key (``kernels.reparameterize(mu, logvar, eps)``). CuPy compiles each on its first
    call, for the dtype and layout of its arguments."""
    sources = SOURCES if sources is None else sources
    return SimpleNamespace(**{
        key: cupy.ElementwiseKernel(source.in_params, source.out_params, source.operation, kernel_name(key))
        for key, source in sources.items()})
