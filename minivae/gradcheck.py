"""Gradient checks: central finite differences in float64 against the hand-written backward.

The numeric gradient of eq. (24) contracts the function's output with a random upstream gradient
``dout`` (never all ones, which hides transposition and broadcasting mistakes):

    numeric[i] = sum((f(x + h e_i) - f(x - h e_i)) * dout) / (2 h)

and the error of an analytic gradient ``a`` against it is the relative error of the whole array,
``||a - n|| / max(||a||, ||n||, tiny)`` (a norm-wise form of eq. (24), robust to coordinates whose
gradient is zero).
"""

DEFAULT_STEP = 1e-5
DEFAULT_TOLERANCE = 1e-6
TINY = 1e-30


def numerical_gradient(f, x, dout, h=DEFAULT_STEP):
    """Eq. (24): the central-difference gradient of ``sum(f() * dout)`` with respect to the array
    ``x``, which ``f`` reads; x is perturbed in place one coordinate at a time and restored.

    f: a callable of no arguments returning an array shaped like ``dout`` (or a scalar).
    x: a float64 array (NumPy or CuPy); dout: the upstream gradient. Returns an array like x.
    """
    if not x.flags.c_contiguous:
        raise ValueError("x must be C-contiguous so that it can be perturbed in place")
    grad = x * 0
    flat_x, flat_grad = x.reshape(-1), grad.reshape(-1)
    for i in range(flat_x.size):
        original = flat_x[i].copy()
        flat_x[i] = original + h
        f_plus = (f() * dout).sum()
        flat_x[i] = original - h
        f_minus = (f() * dout).sum()
        flat_x[i] = original
        flat_grad[i] = (f_plus - f_minus) / (2 * h)
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
