"""Decoder likelihoods p(x|z): their negative log-likelihood (NLL) per datapoint and its gradient
with respect to the decoder's output.

Both take the decoder output ``out`` and the data ``x`` of shape (N, D) and return per-row values
of shape (N,). ``nll_and_grad`` returns the NLL and ``d(sum of NLL)/d out`` together, sharing the
intermediate arrays (this is what the training step calls).
"""

import math

from . import checks

LIKELIHOODS = ("bernoulli", "gaussian", "continuous-bernoulli")
LEARNED = "learned"  # the variance setting whose Gaussian learns a variance per value (eq. (39)-(41))

# Section 19 of docs/derivation.md: below |l| = 1 the continuous Bernoulli's log-normaliser and its
# gradient use the series of (sinh(y) - y) / y^3 = sum_{k>=1} y^(2k-2) / (2k+1)!, whose terms are all
# positive (no cancellation); eight terms leave a relative remainder below 5e-17 for |y| <= 1, under
# float64's unit roundoff 1.1e-16. From |l| = 1 on the closed forms lose at most a factor 12.4 to rounding.
SERIES_SWITCH = 1.0
SINH_SERIES = tuple(1.0 / math.factorial(2 * k + 1) for k in range(1, 9))
LOG_2 = math.log(2.0)
LOG_2PI = math.log(2.0 * math.pi)
# Eq. (39): the floor of the learned log-variance, the variance of a value spread evenly over one of
# 255 grey-level steps, 1 / (12 * 255^2): a smaller variance claims a precision 8-bit data do not have.
MIN_LOGVAR = -math.log(12.0 * 255.0 ** 2)


class Bernoulli:
    """Independent Bernoulli pixels with probabilities sigmoid(logits); the decoder outputs logits.

    Works for x in [0, 1] (binary or grey levels: the NLL is then the binary cross-entropy, as in
    the classic PyTorch VAE example). Never forms log(sigmoid(l)): the stable forms below stay
    finite for logits of +-1e4 and beyond.
    """

    name = "bernoulli"
    outputs_per_value = 1

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
        return (self._softplus(logits) - x * logits).sum(axis=1)

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
        softplus = self._softplus(logits)
        (softplus - x * logits).sum(axis=1, out=nll)
        xp.subtract(logits, softplus, out=dlogits)
        xp.exp(dlogits, out=dlogits)
        dlogits -= x

    def _softplus(self, logits):
        """``softplus(l) = log(1 + e^l) = max(l, 0) + log1p(exp(-|l|))``: exp(-|l|) is in (0, 1] and
        max(l, 0) is l or 0, so nothing overflows for any finite l (not even float32's largest)."""
        xp = self.xp
        abs_logits = xp.abs(logits)
        softplus = xp.exp(-abs_logits)
        xp.log1p(softplus, out=softplus)
        xp.maximum(logits, 0, out=abs_logits)
        softplus += abs_logits
        return softplus

    def mean(self, logits):
        """The pixel means sigmoid(logits), in [0, 1]."""
        return self.special.expit(logits)


class Gaussian:
    """Independent Gaussian values N(x; y, s2) with a fixed variance s2; the decoder outputs the mean y.

    With s2 = 1 this is half the squared error plus a constant: the MSE case.
    """

    name = "gaussian"
    outputs_per_value = 1

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


class ContinuousBernoulli:
    """The continuous Bernoulli of Loaiza-Ganem & Cunningham (2019): the density on [0, 1]
    ``C(l) sigmoid(l)^x (1 - sigmoid(l))^(1 - x)``, properly normalised for grey levels (the Bernoulli
    cross-entropy is not a density there). The decoder outputs logits l. Section 19 of docs/derivation.md.
    """

    name = "continuous-bernoulli"
    outputs_per_value = 1

    def __init__(self, backend):
        self.xp = backend.xp
        self.bernoulli = Bernoulli(backend)

    def nll(self, logits, x):
        """Eq. (35): ``NLL = sum_d softplus(l_d) - x_d l_d - log C(l_d)``. logits, x: (N, D) -> (N,)."""
        return self.bernoulli.nll(logits, x) - cb_log_normalizer(self.xp, logits).sum(axis=1)

    def nll_and_grad(self, logits, x):
        """Eq. (35) and eq. (37): the NLL per row and ``dNLL/dl = sigmoid(l) - x - g(l) = E[x] - x``
        (the Bernoulli's gradient, eq. (10), minus the log-normaliser's). logits, x: (N, D) ->
        (nll (N,), dlogits (N, D))."""
        nll, dlogits = self.bernoulli.nll_and_grad(logits, x)
        nll -= cb_log_normalizer(self.xp, logits).sum(axis=1)
        dlogits -= cb_log_normalizer_grad(self.xp, logits)
        return nll, dlogits

    def mean(self, logits):
        """Eq. (38): ``E[x] = sigmoid(l) - g(l) = 1 / (1 - e^-l) - 1/l``, in (0, 1); 1/2 at l = 0. Not
        sigmoid(l): that is the mean of the Bernoulli, not of this density."""
        return self.bernoulli.mean(logits) - cb_log_normalizer_grad(self.xp, logits)


class LearnedVarianceGaussian:
    """Independent Gaussian values N(x; y, exp(v)) whose mean y AND log-variance v are decoder outputs
    (the decoder of the AEVB paper's Frey Face experiment). The decoder outputs (N, 2D): [y | r], and
    ``v = MIN_LOGVAR + softplus(r - MIN_LOGVAR)`` (eq. (39)) keeps the variance above a floor: without
    it a value that never changes (a blank border pixel) drives v to -inf and the NLL to -inf.
    Section 20 of docs/derivation.md.
    """

    name = "gaussian"
    outputs_per_value = 2

    def __init__(self, backend, min_logvar=MIN_LOGVAR):
        self.xp = backend.xp
        self.bernoulli = Bernoulli(backend)  # for its stable softplus and sigmoid
        self.min_logvar = float(min_logvar)

    def split(self, out):
        """The decoder output (N, 2D) -> (y, r), each (N, D)."""
        half = out.shape[1] // 2
        return out[:, :half], out[:, half:]

    def logvar(self, raw):
        """Eq. (39): ``v = v_min + softplus(r - v_min)``: smooth, > v_min, and ~r once r >> v_min."""
        return self.min_logvar + self.bernoulli._softplus(raw - self.min_logvar)

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
        draw = dlogvar * self.bernoulli.mean(raw - self.min_logvar)
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


def make_likelihood(name, backend, variance=1.0):
    """A likelihood by name: "bernoulli", "continuous-bernoulli" or "gaussian" (with its fixed
    variance, or ``variance="learned"`` for a variance per value output by the decoder)."""
    if name == "bernoulli":
        return Bernoulli(backend)
    if name == "continuous-bernoulli":
        return ContinuousBernoulli(backend)
    if name == "gaussian":
        return LearnedVarianceGaussian(backend) if variance == LEARNED else Gaussian(backend, variance)
    raise ValueError(f"unknown likelihood {name!r}: choose one of {LIKELIHOODS}")
