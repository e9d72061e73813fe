"""Decoder likelihoods p(x|z), in one registry: their negative log-likelihood (NLL) per datapoint,
its gradient with respect to the decoder's output, the mean, and the data they accept.

Each class declares what the rest of minivae reads: ``name`` (the ``likelihood`` setting) and
``variance_kind`` (the ``variance`` setting it takes: None, NUMBER for a fixed one, or LEARNED),
``outputs_per_value`` (decoder outputs per data value), ``support`` (the interval the data must lie
in, None for any real number), ``output`` (what the decoder outputs), ``equations`` (those of
docs/derivation.md for the NLL, its gradient and the mean, e.g. "eq. (8)"). ``nll`` and ``nll_and_grad`` take the
decoder output ``out`` and the data ``x`` of shape (N, D) and return per-row values of shape (N,);
``nll_and_grad`` returns the NLL and ``d(sum of NLL)/d out`` together, sharing the intermediate
arrays (this is what the training step calls). ``REGISTRY`` maps (name, variance kind) to the class;
``make_likelihood`` builds one from the settings. Adding a likelihood is adding one class to it.
"""

import math

from . import checks
from .gaussian import LOG_2PI

LEARNED = "learned"  # the variance setting whose Gaussian learns a variance per value (eq. (39)-(41))
NUMBER = "number"  # the variance kind of a likelihood that takes a fixed variance (a number > 0)

# Section 19 of docs/derivation.md: below |l| = 1 the continuous Bernoulli's log-normaliser and its
# gradient use the series of (sinh(y) - y) / y^3 = sum_{k>=1} y^(2k-2) / (2k+1)!, whose terms are all
# positive (no cancellation); eight terms leave a relative remainder below 5e-17 for |y| <= 1, under
# float64's unit roundoff 1.1e-16. From |l| = 1 on the closed forms lose at most a factor 12.4 to rounding.
SERIES_SWITCH = 1.0
SINH_SERIES = tuple(1.0 / math.factorial(2 * k + 1) for k in range(1, 9))
LOG_2 = math.log(2.0)
# Eq. (39): the floor of the learned log-variance, the variance of a value spread evenly over one of
# 255 grey-level steps, 1 / (12 * 255^2): a smaller variance claims a precision 8-bit data do not have.
MIN_LOGVAR = -math.log(12.0 * 255.0 ** 2)


def softplus(xp, a):
    """``softplus(a) = log(1 + e^a) = max(a, 0) + log1p(exp(-|a|))``: exp(-|a|) is in (0, 1] and
    max(a, 0) is a or 0, so nothing overflows for any finite a (not even float32's largest). a: any
    shape -> a new array of the same shape."""
    magnitude = xp.abs(a)
    result = xp.exp(-magnitude)
    xp.log1p(result, out=result)
    xp.maximum(a, 0, out=magnitude)
    result += magnitude
    return result


class Likelihood:
    """What every likelihood shares: the check of the data against its ``support``."""

    name = None
    title = None  # the name in messages
    variance_kind = None  # the variance setting it takes: None, NUMBER or LEARNED
    outputs_per_value = 1
    support = None  # (low, high): the data must lie in it; None: any real number
    output = "out"
    equations = {}

    def check_data(self, x):
        """Refuse data outside ``support`` (ValueError, one line). One pass over x (and on a GPU a copy
        to the host): the model's public entry points call it on the CPU only, once per batch."""
        if self.support is None or not x.size:
            return
        low, high = float(x.min()), float(x.max())
        if not (self.support[0] <= low and high <= self.support[1]):
            raise ValueError(f"x holds values in [{low:g}, {high:g}]; the {self.title} likelihood needs them "
                             f"in [{self.support[0]:g}, {self.support[1]:g}] (divide pixels of 0..255 by 255)")


class Bernoulli(Likelihood):
    """Independent Bernoulli pixels with probabilities sigmoid(logits); the decoder outputs logits.

    Works for x in [0, 1] (binary or grey levels: the NLL is then the binary cross-entropy, as in
    the classic PyTorch VAE example). Never forms log(sigmoid(l)): the stable forms below stay
    finite for logits of +-1e4 and beyond.
    """

    name, title = "bernoulli", "Bernoulli"
    support = (0.0, 1.0)
    output = "logits"
    equations = {"nll": "eq. (8)", "gradient": "eq. (10)", "mean": "eq. (10)"}

    def __init__(self, backend):
        self.xp = backend.xp
        self.special = backend.special
        self.kernels = backend.kernels
        self.split_rows = backend.split_rows

    def nll(self, logits, x):
        """Eq. (8): ``NLL = sum_d softplus(l_d) - x_d * l_d``. logits, x: (N, D) -> (N,)."""
        fused = getattr(self.kernels, "bernoulli_nll", None)
        if fused is not None:  # the same formula in one pass (the CPU's kernels)
            return fused(logits, x).sum(axis=1)
        return (softplus(self.xp, logits) - x * logits).sum(axis=1)

    def nll_and_grad(self, logits, x):
        """Eq. (8) and eq. (10): the NLL per row and ``dNLL/dlogits = sigmoid(l) - x``.

        sigmoid(l) is computed as ``exp(l - softplus(l))`` (that is, exp(log sigmoid(l))): the exponent
        is <= 0, so it never overflows, and it reuses the softplus the NLL needs.
        logits, x: (N, D) -> (nll (N,), dlogits (N, D)).
        """
        if self.kernels is not None:  # the same formulas in one fused pass (minivae/kernels)
            nll_terms, dlogits = self.kernels.bernoulli_nll_and_grad(logits, x)
            return nll_terms.sum(axis=1), dlogits
        dtype = self.xp.result_type(logits.dtype, x.dtype)  # as the formulas on whole arrays would give
        nll = self.xp.empty(logits.shape[0], dtype=dtype)
        dlogits = self.xp.empty(logits.shape, dtype=dtype)
        self.split_rows(self._nll_and_grad_into, logits, x, nll, dlogits)  # rows on the CPU threads
        return nll, dlogits

    def _nll_and_grad_into(self, logits, x, nll, dlogits):
        """``nll_and_grad`` for the rows given, written into ``nll`` (N,) and ``dlogits`` (N, D)."""
        xp = self.xp
        softplus_l = softplus(xp, logits)
        (softplus_l - x * logits).sum(axis=1, out=nll)
        xp.subtract(logits, softplus_l, out=dlogits)
        xp.exp(dlogits, out=dlogits)
        dlogits -= x

    def mean(self, logits):
        """The pixel means sigmoid(logits), in [0, 1]."""
        return self.special.expit(logits)


class Gaussian(Likelihood):
    """Independent Gaussian values N(x; y, s2) with a fixed variance s2; the decoder outputs the mean y.

    With s2 = 1 this is half the squared error plus a constant: the MSE case.
    """

    name, title, variance_kind = "gaussian", "Gaussian", NUMBER
    output = "y"
    equations = {"nll": "eq. (9)", "gradient": "eq. (11)", "mean": "eq. (9)"}

    def __init__(self, backend, variance=1.0):
        problem = checks.positive_number(variance)
        if problem is not None:
            raise ValueError(f"the Gaussian likelihood's variance {problem}, got {variance!r}")
        self.xp = backend.xp
        self.variance = float(variance)
        self.log_norm = 0.5 * math.log(2 * math.pi * self.variance)

    def nll(self, y, x):
        """Eq. (9): ``NLL = sum_d 0.5 * (x_d - y_d)^2 / s2 + 0.5 * log(2 pi s2)``. y, x: (N, D) -> (N,)."""
        return self._nll(y - x)

    def nll_and_grad(self, y, x):
        """Eq. (9) and eq. (11): the NLL per row and ``dNLL/dy = (y - x) / s2``.

        y, x: (N, D) -> (nll (N,), dy (N, D)).
        """
        residual = y - x
        return self._nll(residual), residual * (1 / self.variance)

    def _nll(self, residual):
        return (residual * residual).sum(axis=1) * (0.5 / self.variance) + residual.shape[1] * self.log_norm

    def mean(self, y):
        """The decoder output is the mean itself."""
        return y


def sinh_series(s):
    """``P(s) = sum_{k=1}^{8} s^(k-1) / (2k+1)!`` by Horner's rule, so that ``sinh(y) = y + y^3 P(y^2)``
    (eq. (36)). s: an array of y^2 <= 1 -> P(s), same shape."""
    series = s * 0 + SINH_SERIES[-1]
    for coefficient in reversed(SINH_SERIES[:-1]):
        series = series * s + coefficient
    return series


def cb_log_normalizer(xp, logits):
    """Eq. (36): ``log C(l) = log(l / tanh(l / 2))``, the continuous Bernoulli's log-normaliser, even in l.

    |l| >= 1: ``log|l| - log(1 - e^-|l|) + log(1 + e^-|l|)``, three terms >= 0 (no cancellation);
    |l| < 1:  ``log 2 + log cosh(l/2) - log(1 + (l/2)^2 P((l/2)^2))``, finite at l = 0 where the closed
    form is 0/0. logits: any shape -> the same shape.
    """
    magnitude = xp.abs(logits)
    small = magnitude < SERIES_SWITCH
    half = xp.where(small, magnitude, 0.0) * 0.5
    square = half * half
    series = LOG_2 + xp.log((xp.exp(half) + xp.exp(-half)) * 0.5) - xp.log1p(square * sinh_series(square))
    large = xp.where(small, 1.0, magnitude)
    closed = xp.log(large) - xp.log(-xp.expm1(-large)) + xp.log1p(xp.exp(-large))
    return xp.where(small, series, closed)


def cb_log_normalizer_grad(xp, logits):
    """Eq. (37): ``g(l) = d log C / dl = 1/l - 1/sinh(l)``, odd in l, in (-1/2, 1/2).

    |l| >= 1: ``sign(l) (1/|l| - 2 e^-|l| / (1 - e^-2|l|))`` (never overflows);
    |l| < 1:  ``l P(l^2) / (1 + l^2 P(l^2))``, which is (sinh l - l) / (l sinh l) without its
    cancellation. logits: any shape -> the same shape.
    """
    magnitude = xp.abs(logits)
    small = magnitude < SERIES_SWITCH
    near = xp.where(small, logits, 0.0)
    square = near * near
    series = sinh_series(square)
    series = near * series / (1.0 + square * series)
    large = xp.where(small, 1.0, magnitude)
    closed = xp.sign(logits) * (1.0 / large - 2.0 * xp.exp(-large) / -xp.expm1(-2.0 * large))
    return xp.where(small, series, closed)


class ContinuousBernoulli(Likelihood):
    """The continuous Bernoulli of Loaiza-Ganem & Cunningham (2019): the density on [0, 1]
    ``C(l) sigmoid(l)^x (1 - sigmoid(l))^(1 - x)``, properly normalised for grey levels (the Bernoulli
    cross-entropy is not a density there). The decoder outputs logits l. Section 19 of docs/derivation.md.
    """

    name, title = "continuous-bernoulli", "continuous Bernoulli"
    support = (0.0, 1.0)
    output = "logits"
    equations = {"nll": "eq. (35)", "gradient": "eq. (37)", "mean": "eq. (38)"}

    def __init__(self, backend):
        self.xp = backend.xp
        self.bernoulli = Bernoulli(backend)

    def nll(self, logits, x):
        """Eq. (35): ``NLL = sum_d softplus(l_d) - x_d l_d - log C(l_d)``, +inf for a row with a value
        outside [0, 1], where the density is 0. logits, x: (N, D) -> (N,)."""
        nll = self.bernoulli.nll(logits, x) - cb_log_normalizer(self.xp, logits).sum(axis=1)
        return self._outside_support_is_impossible(nll, x)

    def nll_and_grad(self, logits, x):
        """Eq. (35) and eq. (37): the NLL per row and ``dNLL/dl = sigmoid(l) - x - g(l) = E[x] - x``
        (the Bernoulli's gradient, eq. (10), minus the log-normaliser's). logits, x: (N, D) ->
        (nll (N,), dlogits (N, D)); the NLL is +inf (and its gradient meaningless) for a row with a
        value outside [0, 1]."""
        nll, dlogits = self.bernoulli.nll_and_grad(logits, x)
        nll -= cb_log_normalizer(self.xp, logits).sum(axis=1)
        dlogits -= cb_log_normalizer_grad(self.xp, logits)
        return self._outside_support_is_impossible(nll, x), dlogits

    def _outside_support_is_impossible(self, nll, x):
        """The NLL of eq. (35) where each row's x lies in [0, 1], +inf where one does not (density 0)."""
        xp = self.xp
        outside = ((x < 0) | (x > 1)).any(axis=1)
        return xp.where(outside, xp.asarray(math.inf, dtype=nll.dtype), nll)

    def mean(self, logits):
        """Eq. (38): ``E[x] = sigmoid(l) - g(l) = 1 / (1 - e^-l) - 1/l``, in (0, 1); 1/2 at l = 0. Not
        sigmoid(l): that is the mean of the Bernoulli, not of this density."""
        return self.bernoulli.mean(logits) - cb_log_normalizer_grad(self.xp, logits)


class LearnedVarianceGaussian(Likelihood):
    """Independent Gaussian values N(x; y, exp(v)) whose mean y AND log-variance v are decoder outputs
    (the decoder of the AEVB paper's Frey Face experiment). The decoder outputs (N, 2D): [y | r], and
    ``v = MIN_LOGVAR + softplus(r - MIN_LOGVAR)`` (eq. (39)) keeps the variance above a floor: without
    it a value that never changes (a blank border pixel) drives v to -inf and the NLL to -inf.
    Section 20 of docs/derivation.md.
    """

    name, title, variance_kind = "gaussian", "Gaussian with a learned variance", LEARNED
    outputs_per_value = 2
    output = "[y|r]"
    equations = {"nll": "eq. (40)", "gradient": "eq. (41)", "mean": "eq. (40)"}

    def __init__(self, backend, min_logvar=MIN_LOGVAR):
        self.xp = backend.xp
        self.special = backend.special
        self.min_logvar = float(min_logvar)

    def split(self, out):
        """The decoder output (N, 2D) -> (y, r), each (N, D)."""
        half = out.shape[1] // 2
        return out[:, :half], out[:, half:]

    def logvar(self, raw):
        """Eq. (39): ``v = v_min + softplus(r - v_min)``: smooth, > v_min, and ~r once r >> v_min."""
        return self.min_logvar + softplus(self.xp, raw - self.min_logvar)

    def nll(self, out, x):
        """Eq. (40): ``NLL = sum_d 0.5 * (log 2pi + v_d + (x_d - y_d)^2 exp(-v_d))``. out: (N, 2D),
        x: (N, D) -> (N,)."""
        return self._nll_parts(out, x)[0]

    def nll_and_grad(self, out, x):
        """Eq. (40) and eq. (41): the NLL per row, ``dNLL/dy = (y - x) exp(-v)`` and
        ``dNLL/dr = 0.5 * (1 - (x - y)^2 exp(-v)) * sigmoid(r - v_min)``.

        out: (N, 2D), x: (N, D) -> (nll (N,), dout (N, 2D)) with dout = [dy | dr].
        """
        nll, residual, precision, raw = self._nll_parts(out, x)
        dy = residual * precision
        dlogvar = 0.5 * (1.0 - residual * dy)
        draw = dlogvar * self.special.expit(raw - self.min_logvar)  # sigmoid, the derivative of softplus
        return nll, self.xp.concatenate([dy, draw], axis=1)

    def _nll_parts(self, out, x):
        """The NLL of eq. (40) and what its gradient reuses: (nll, y - x, exp(-v), r)."""
        y, raw = self.split(out)
        logvar = self.logvar(raw)
        residual = y - x
        precision = self.xp.exp(-logvar)
        nll = 0.5 * (LOG_2PI + logvar + residual * residual * precision).sum(axis=1)
        return nll, residual, precision, raw

    def mean(self, out):
        """The mean y, the first half of the decoder output."""
        return self.split(out)[0]


REGISTRY = {(cls.name, cls.variance_kind): cls for cls in (Bernoulli, Gaussian, LearnedVarianceGaussian,
                                                     ContinuousBernoulli)}
"""Every likelihood, by its ``likelihood`` setting and the kind of ``variance`` setting it takes."""
LIKELIHOODS = tuple(dict.fromkeys(name for name, _ in REGISTRY))  # the names, in the registry's order


def likelihood_class(name, variance=None):
    """The class of the registry for the settings ``likelihood=name`` and ``variance`` (None: not
    given). ValueError in one line for an unknown name, or for a variance the likelihood does not take
    (a likelihood without one accepts only None or the default 1.0 that configs record)."""
    if name not in LIKELIHOODS:
        raise ValueError(f"unknown likelihood {name!r}: choose one of {LIKELIHOODS}")
    kinds = [kind for n, kind in REGISTRY if n == name]
    if variance == LEARNED:
        kind = LEARNED
    elif None in kinds and (variance is None or variance == 1.0):  # 1.0: the default that configs record
        kind = None
    else:
        kind = NUMBER
    if kind not in kinds:
        takes = " or ".join("'learned'" if k == LEARNED else "a number > 0" for k in kinds if k is not None)
        raise ValueError(f"variance={variance!r} does not apply to the {name} likelihood, which "
                         f"{'takes ' + takes if takes else 'has no variance'}")
    return REGISTRY[(name, kind)]


def make_likelihood(name, backend, variance=None):
    """The likelihood of the settings ``likelihood=name`` and ``variance`` (see ``likelihood_class``):
    "bernoulli", "continuous-bernoulli", or "gaussian" with a fixed variance (a number > 0, 1 by
    default) or ``variance="learned"`` (a variance per value output by the decoder)."""
    cls = likelihood_class(name, variance)
    if cls.variance_kind == NUMBER:
        return cls(backend, 1.0 if variance is None else variance)
    return cls(backend)
