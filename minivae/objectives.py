"""The training objectives as objects, the importance weights, and the one stable log-sum-exp.

- ``ELBO``: the batch loss of eq. (3), its KL optionally times a weight beta ramped up from 0 by a
  warm-up (eq. (42), section 21 of docs/derivation.md). With beta != 1 it is not a bound.
- ``IWAE``: the importance-weighted bound of Burda et al. (section 22): with K samples
  z_k = mu + eps_k sigma, the loss of a datapoint is ``-log (1/K) sum_k w_k`` (eq. (43)); its gradient
  weights each sample's ``d log w_k`` by the normalised weight, a constant of the backward (eq. (45), (46)).
- ``importance_log_weights``: ``log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x)`` with log q in its simplified
  form (eq. (44)), written once: the IWAE objective and the importance-weighted evaluation
  (minivae/estimators.py) both read it from ``VAE.forward``.

Each objective object turns the per-datapoint terms of ``VAE.forward`` into the per-datapoint loss
(``loss``) and gives ``VAE.backward`` the gradient of the summed loss with respect to those terms
(``backward``); the model keeps the network and the order of the passes. What may not be combined
(the IWAE with a KL weight) is refused here, in one line (``combination_problem``, ``make_objective``).
The functions take and return arrays of the backend's ``xp`` only. ``logsumexp`` (eq. (23)) is also
what the evaluation reduces its importance weights with: one implementation for training and evaluation.
"""

import math
from collections import namedtuple

from . import checks
from .gaussian import LOG_2PI

OBJECTIVES = ("elbo", "iwae")


def logsumexp(xp, a):
    """Eq. (23) over the first axis: ``logsumexp(a) = max(a) + log sum_k exp(a_k - max(a))``.

    a: (K, B) -> (B,). Every exponent is <= 0, so nothing overflows, and the largest term
    contributes exp(0) = 1, so the log is finite. A column whose max is not finite (all -inf: every
    weight is 0) is shifted by 0 instead, giving -inf rather than NaN.
    """
    shift = a.max(axis=0)
    shift = xp.where(xp.isfinite(shift), shift, xp.zeros_like(shift))
    return shift + xp.log(xp.exp(a - shift).sum(axis=0))


def log_mean_exp(xp, a):
    """Eq. (43): ``log (1/K) sum_k exp(a_k) = logsumexp(a) - log K`` over the first axis. a: (K, B) -> (B,)."""
    return logsumexp(xp, a) - math.log(a.shape[0])


def kl_weight_problem(kl_weight):
    """None when ``kl_weight`` is a KL weight (a finite number >= 0), else what it must be."""
    problem = checks.nonnegative_number(kl_weight)
    return None if problem is None else f"kl_weight={kl_weight!r} {problem}"


def combination_problem(objective, kl_weight=1.0, warmup_epochs=0):
    """None when the objective named ``objective`` takes the KL weight ``kl_weight`` (beta of eq. (42))
    and a warm-up of ``warmup_epochs`` epochs, else one phrase saying why not: a KL weight must be a
    finite number >= 0, and only the ELBO has a KL term to weight (the IWAE bound of eq. (43) has none,
    so there kl_weight must be 1 and there is no warm-up)."""
    if objective not in OBJECTIVES:
        return f"objective={objective!r} must be one of {', '.join(OBJECTIVES)}"
    problem = kl_weight_problem(kl_weight)
    if problem is None and objective == "iwae" and (kl_weight != 1.0 or warmup_epochs):
        given = f"kl_weight={kl_weight!r}" + (f", a warm-up of {warmup_epochs} epochs" if warmup_epochs else "")
        problem = (f"the iwae objective takes no KL weight ({given}): its bound, eq. (43), has no separate KL "
                   f"term; the KL weight is the elbo objective's (eq. (42))")
    return problem


def make_objective(objective, n_samples, xp):
    """The object of the ``objective`` setting, on the array module ``xp``: ``ELBO`` (with L =
    ``n_samples`` samples of z) or ``IWAE`` (with K = ``n_samples`` importance samples)."""
    if objective not in OBJECTIVES:
        raise ValueError(combination_problem(objective))
    return (ELBO if objective == "elbo" else IWAE)(n_samples, xp)


def kl_weight_at(beta, warmup_epochs, epoch, fraction):
    """Eq. (42): the KL weight ``beta * min(1, t / N)`` at training time t = (epoch - 1) + fraction
    (epochs done, fraction in [0, 1) of the current one), ramping from 0 to beta over the first N
    = ``warmup_epochs`` epochs (beta at once when N = 0)."""
    if warmup_epochs <= 0:
        return float(beta)
    return float(beta) * min(1.0, (epoch - 1 + fraction) / warmup_epochs)


ObjectiveGradient = namedtuple("ObjectiveGradient", ["nll", "kl", "z", "logvar"])
ObjectiveGradient.__doc__ = """The gradient of an objective's summed loss with respect to the terms of
``VAE.forward``, what ``VAE.backward`` chains on: ``nll``, dLoss/dNLL of each sample (a number, or
(S, B)); ``kl``, dLoss/dKL (a number: the KL weight); ``z`` (S, B, J) and ``logvar`` (a number), the
gradients reaching z and logvar directly, through log p(z) and log q(z|x) (None when there are none)."""


class Objective:
    """What the objectives share: the sample count, the array module, and the check of a KL weight."""

    name = None

    def __init__(self, n_samples, xp):
        self.n_samples, self.xp = int(n_samples), xp

    def check(self, kl_weight):
        """ValueError in one line unless this objective takes the KL weight ``kl_weight``."""
        problem = combination_problem(self.name, kl_weight)
        if problem is not None:
            raise ValueError(problem)


class ELBO(Objective):
    """The negative ELBO of eq. (3) with L = ``n_samples`` samples of z, its KL times a weight
    beta = ``kl_weight`` (eq. (42); 1: the ELBO itself; ``kl_weight_at`` gives beta_t of a warm-up)."""

    name = "elbo"

    def loss(self, reconstruction, kl, log_weights, kl_weight=1.0):
        """Eq. (3), (42) per datapoint: ``mean_l NLL_l + beta KL``. reconstruction (the mean NLL), kl: (B,)
        -> (B,); the log-weights are not used."""
        if kl_weight == 1.0:
            return reconstruction + kl
        return reconstruction + kl_weight * kl

    def backward(self, log_weights, z, kl_weight=1.0):
        """Eq. (3), (42): ``dLoss/dNLL_l = 1/L`` for every sample and ``dLoss/dKL = beta``; nothing
        reaches z or logvar but through the NLL and the KL."""
        return ObjectiveGradient(1.0 / self.n_samples, kl_weight, None, None)


class IWAE(Objective):
    """The importance-weighted bound of eq. (43) with K = ``n_samples`` samples, negated. It has no
    closed-form KL, so it takes no KL weight (``combination_problem``)."""

    name = "iwae"

    def loss(self, reconstruction, kl, log_weights, kl_weight=1.0):
        """Eq. (43), negated: ``-log (1/K) sum_k w_k`` per datapoint. log_weights: (K, B) -> (B,); the
        reconstruction and the closed-form KL are not used."""
        return -log_mean_exp(self.xp, log_weights)

    def backward(self, log_weights, z, kl_weight=1.0):
        """Eq. (45), (46): ``dLoss/dNLL_k = w~_k``; through log p(z_k) ``dLoss/dz_k = w~_k z_k``; through
        log q(z|x) directly (eq. (44)) ``dLoss/dlogvar_j = sum_k w~_k * (-0.5) = -0.5``. The normalised
        weights w~ are constants of this pass; no KL. log_weights: (K, B); z: (K, B, J)."""
        weights = normalized_weights(self.xp, log_weights)
        return ObjectiveGradient(weights, 0.0, weights[:, :, None] * z, IWAE_DLOGVAR)


IWAE_DLOGVAR = -0.5
"""Eq. (46): dLoss/dlogvar_j through log q(z|x) directly (the entropy's gradient), the same for every j."""


def importance_log_weights(xp, nll, z, eps, logvar):
    """Eq. (43) with eq. (44): ``log w_k = -NLL_k + log p(z_k) - log q(z_k|x)``, where
    ``log p(z) = -0.5 sum_j (log 2pi + z_j^2)`` (eq. (21) with mean 0, log-variance 0) and, since
    z = mu + eps * exp(0.5 logvar), ``log q(z|x) = -0.5 sum_j (log 2pi + logvar_j + eps_j^2)`` (eq. (44)):
    mu has cancelled out of it, and no (z - mu)^2 / exp(logvar) loses digits.

    nll: (S, B); z, eps: (S, B, J); logvar: (B, J) -> (S, B).
    """
    log_pz = -0.5 * (LOG_2PI + z * z).sum(axis=-1)
    log_qz = -0.5 * (LOG_2PI + logvar + eps * eps).sum(axis=-1)
    return log_pz - log_qz - nll


def normalized_weights(xp, log_weights):
    """Eq. (45): ``w~_k = w_k / sum_k' w_k'``, computed with the shift of eq. (23) as
    ``exp(log w_k - max) / sum_k' exp(log w_k' - max)`` (no overflow, and each column sums to 1 to
    rounding even where log w is -1e4). log_weights: (K, B) -> (K, B)."""
    scaled = xp.exp(log_weights - log_weights.max(axis=0))
    return scaled / scaled.sum(axis=0)
