"""Decoder likelihoods p(x|z): their negative log-likelihood (NLL) per datapoint and its gradient
with respect to the decoder's output.

Both take the decoder output ``out`` and the data ``x`` of shape (N, D) and return per-row values
of shape (N,). ``nll_and_grad`` returns the NLL and ``d(sum of NLL)/d out`` together, sharing the
intermediate arrays (this is what the training step calls).
"""

import math

from . import checks

LIKELIHOODS = ("bernoulli", "gaussian")


class Bernoulli:
    """Independent Bernoulli pixels with probabilities sigmoid(logits); the decoder outputs logits.

    Works for x in [0, 1] (binary or grey levels: the NLL is then the binary cross-entropy, as in
    the classic PyTorch VAE example). Never forms log(sigmoid(l)): the stable forms below stay
    finite for logits of +-1e4 and beyond.
    """

    name = "bernoulli"

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


def make_likelihood(name, backend, variance=1.0):
    """A likelihood by name: "bernoulli" or "gaussian" (with its fixed variance)."""
    if name == "bernoulli":
        return Bernoulli(backend)
    if name == "gaussian":
        return Gaussian(backend, variance)
    raise ValueError(f"unknown likelihood {name!r}: choose one of {LIKELIHOODS}")
