"""The training objectives beyond the plain ELBO, and the one stable log-sum-exp.

- The beta-weighted ELBO (section 21 of docs/derivation.md): the batch loss of eq. (3) with its KL
  times a weight beta, ramped up from 0 by a warm-up (eq. (42)). With beta != 1 it is not a bound.
- The importance-weighted bound of Burda et al. (section 22): with K samples z_k = mu + eps_k sigma,
  the loss of a datapoint is ``-log (1/K) sum_k w_k`` (eq. (43)), ``log w_k = log p(x|z_k) + log p(z_k)
  - log q(z_k|x)`` with log q in its simplified form (eq. (44)); its gradient weights each sample's
  ``d log w_k`` by the normalised weight, a constant of the backward pass (eq. (45), (46)).

``VAE.loss_and_backward`` keeps the network and the order of the passes; the functions here take and
return arrays of the backend's ``xp`` only. ``logsumexp`` (eq. (23)) is also what ``minivae.evaluate``
reduces its importance weights with: one implementation for training and evaluation.
"""

import math

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


def kl_weight_at(beta, warmup_epochs, epoch, fraction):
    """Eq. (42): the KL weight ``beta * min(1, t / N)`` at training time t = (epoch - 1) + fraction
    (epochs done, fraction in [0, 1) of the current one), ramping from 0 to beta over the first N
    = ``warmup_epochs`` epochs (beta at once when N = 0)."""
    if warmup_epochs <= 0:
        return float(beta)
    return float(beta) * min(1.0, (epoch - 1 + fraction) / warmup_epochs)


def iwae_log_weights(xp, nll, z, eps, logvar):
    """Eq. (43) with eq. (44): ``log w_k = -NLL_k + log p(z_k) - log q(z_k|x)``, where
    ``log p(z) = -0.5 sum_j (log 2pi + z_j^2)`` and, since z = mu + eps * exp(0.5 logvar),
    ``log q(z|x) = -0.5 sum_j (log 2pi + logvar_j + eps_j^2)``: mu has cancelled out of it.

    nll: (K, B); z, eps: (K, B, J); logvar: (B, J) -> (K, B).
    """
    log_pz = -0.5 * (LOG_2PI + z * z).sum(axis=-1)
    log_qz = -0.5 * (LOG_2PI + logvar + eps * eps).sum(axis=-1)
    return log_pz - log_qz - nll


def iwae_loss(xp, log_weights):
    """Eq. (43), negated: ``-log (1/K) sum_k w_k`` per datapoint. log_weights: (K, B) -> (B,)."""
    return -log_mean_exp(xp, log_weights)


def normalized_weights(xp, log_weights):
    """Eq. (45): ``w~_k = w_k / sum_k' w_k'``, computed with the shift of eq. (23) as
    ``exp(log w_k - max) / sum_k' exp(log w_k' - max)`` (no overflow, and each column sums to 1 to
    rounding even where log w is -1e4). log_weights: (K, B) -> (K, B)."""
    scaled = xp.exp(log_weights - log_weights.max(axis=0))
    return scaled / scaled.sum(axis=0)


def iwae_backward(xp, log_weights, z):
    """Eq. (45), (46): the gradient of the summed IWAE loss with respect to each sample's NLL and, through
    log p(z), to z; the normalised weights w~ are constants of this pass.

    ``dLoss/dNLL_k = w~_k``, ``dLoss/dz_k (through log p) = w~_k z_k``. The third path, through log q
    directly into logvar, is ``-0.5`` for every j (``sum_k w~_k = 1``): ``IWAE_DLOGVAR``.
    log_weights: (K, B); z: (K, B, J) -> (dnll (K, B), dz_prior (K, B, J)).
    """
    weights = normalized_weights(xp, log_weights)
    return weights, weights[:, :, None] * z


IWAE_DLOGVAR = -0.5
"""Eq. (46): dLoss/dlogvar_j through log q(z|x) directly (the entropy's gradient), the same for every j."""
