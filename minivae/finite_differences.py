"""Finite differences in float64, the measure of a gradient's error, and the row a check reports.

The numeric gradient of eq. (24) contracts the function's output with a random upstream gradient
``dout`` (never all ones, which hides transposition and broadcasting mistakes), with the
fourth-order central difference

    numeric[i] = sum((8 (f(x + h e_i) - f(x - h e_i)) - (f(x + 2h e_i) - f(x - 2h e_i))) * dout) / (12 h)

and the error of an analytic gradient ``a`` against it is the relative error of the whole array,
``||a - n|| / max(||a||, ||n||, tiny)`` (a norm-wise form of eq. (24), robust to coordinates whose
gradient is zero). ``check_gradients`` turns several (array, analytic gradient) pairs into
``GradientRow``s; minivae/gradcheck.py builds its checks of a whole VAE and of its pieces on them.

Precision. Section 17 of docs/derivation.md: the error of this central difference behaves like
``h^4 + u |f| / h`` (u the unit roundoff), about 1e-12 in float64 at h = 1e-3 (the two-point form's
``h^2 + u |f| / h`` is ~1e-10 at best: too coarse for parameters whose gradient is 1e-5 of the loss,
as Hypothesis found behind width-1 layers), and only about 1e-2 in float32
(measured on the default model: no step gives float32 differences better than ~1e-3, and steps
large enough for that cross ReLU's kink). So finite differences are **always taken in float64**
(``float64_twin``): a float32 analytic gradient is checked against differences on a float64 copy
holding the same values. The error is then float32's rounding of the backward (~1e-7 measured),
checked against ``FLOAT32_TOLERANCE`` = 1e-4: loose enough for rounding, tight enough for any wrong
formula.

Imports: only minivae/backend.py.
"""

from collections import namedtuple

from .backend import Backend

DEFAULT_STEP = 1e-3  # h; perturbations reach 2h, so keep ReLU inputs > 1e-2 away from 0
DEFAULT_TOLERANCE = 1e-6
TINY = 1e-30
# float32 analytic gradients against float64 differences: measured errors ~1e-7 (see above)
FLOAT32_TOLERANCE = 1e-4


def numerical_gradient(f, x, dout, h=DEFAULT_STEP):
    """Eq. (24): the fourth-order central-difference gradient of ``sum(f() * dout)`` with respect
    to the array ``x``, which ``f`` reads; x is perturbed in place one coordinate at a time
    (by +-h and +-2h) and restored.

    f: a callable of no arguments returning an array shaped like ``dout`` (or a scalar).
    x: a float64 array (NumPy or CuPy); dout: the upstream gradient. Returns an array like x.
    """
    if not x.flags.c_contiguous:
        raise ValueError("x must be C-contiguous so that it can be perturbed in place")
    grad = x * 0
    flat_x, flat_grad = x.reshape(-1), grad.reshape(-1)
    for i in range(flat_x.size):
        original = flat_x[i].copy()
        value = {}
        for step in (h, -h, 2 * h, -2 * h):
            flat_x[i] = original + step
            value[step] = (f() * dout).sum()
        flat_x[i] = original
        flat_grad[i] = (8 * (value[h] - value[-h]) - (value[2 * h] - value[-2 * h])) / (12 * h)
    return grad


def relative_error(analytic, numeric, tiny=TINY):
    """``||a - n|| / max(||a||, ||n||, tiny)`` as a Python float (works on NumPy and CuPy arrays)."""
    difference = _norm(analytic - numeric)
    return difference / max(_norm(analytic), _norm(numeric), tiny)


def _norm(array):
    return float((array * array).sum()) ** 0.5


def gradient_error(f, x, analytic, dout, h=DEFAULT_STEP):
    """The relative error of an analytic gradient ``analytic`` (of ``sum(f() * dout)`` with
    respect to ``x``) against the central-difference one."""
    return relative_error(analytic, numerical_gradient(f, x, dout, h))


# --------------------------------------------------------------------------------------------------


GradientRow = namedtuple("GradientRow", ["name", "shape", "max_abs_analytic", "error", "ok", "analytic", "numeric"])
GradientRow.__doc__ = """One checked gradient: the array's name and shape, max |analytic|, the relative
error of eq. (24) against finite differences, whether it is within the tolerance, and both gradients
as host (NumPy) arrays."""


def check_gradients(f, dout, gradients, backend, h=DEFAULT_STEP, tolerance=DEFAULT_TOLERANCE):
    """Check several analytic gradients of ``sum(f() * dout)`` at once.

    gradients: (name, array that f reads, its analytic gradient) triples. Each array is perturbed
    in place by ``numerical_gradient`` and restored. Returns one GradientRow per triple.
    """
    rows = []
    for name, array, analytic in gradients:
        numeric = numerical_gradient(f, array, dout, h)
        error = relative_error(analytic, numeric)
        analytic_host, numeric_host = backend.to_numpy(analytic), backend.to_numpy(numeric)
        max_abs = float(abs(analytic_host).max()) if analytic_host.size else 0.0
        # `not error > tolerance` would pass a NaN; `error <= tolerance` fails it
        rows.append(GradientRow(name, tuple(array.shape), max_abs, error, error <= tolerance,
                                analytic_host, numeric_host))
    return rows


def float64_twin(backend):
    """A float64 Backend on the same array module and seed (``backend`` itself when it is float64):
    finite differences are always taken in float64, section 17 of docs/derivation.md."""
    if backend.dtype.name == "float64":
        return backend
    return Backend(backend.name, backend.xp, backend.special, dtype="float64", seed=backend.seed)


