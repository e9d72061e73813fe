"""The diagonal Gaussian posterior q(z|x) = N(mu, diag exp(logvar)) and the prior p(z) = N(0, I).

Shapes: mu, logvar: (B, J). With L samples per datapoint, eps has shape (L, B, J) and z is returned
as (L*B, J): the L copies of the batch stacked along the rows, sample-major (rows l*B .. l*B+B-1
hold sample l of every datapoint).
"""

import math

LOG_2PI = math.log(2.0 * math.pi)


def as_samples(eps, mu):
    """View eps as (L, B, J); a (B, J) eps is one sample per datapoint (L = 1)."""
    return eps.reshape((-1,) + tuple(mu.shape))


def reparameterize(xp, mu, logvar, eps, kernels=None):
    """Eq. (5): ``z = mu + eps * exp(0.5 * logvar)``, eps ~ N(0, I) held fixed.

    mu, logvar: (B, J); eps: (L, B, J) or (B, J) -> z: (L*B, J). ``kernels``: the backend's fused
    kernels (CuPy's or the CPU's), which compute the same in one pass; None for this plain code.
    """
    eps = as_samples(eps, mu)
    if kernels is not None:
        z = kernels.reparameterize(mu, logvar, eps)
    else:
        z = mu + eps * xp.exp(0.5 * logvar)
    return z.reshape(-1, mu.shape[1])


def reparameterize_backward(xp, dz, logvar, eps):
    """Eq. (16), summed over the L samples as in eq. (18):
    ``dmu = sum_s dz_s``, ``dlogvar = sum_s dz_s * eps_s * 0.5 * exp(0.5 * logvar)``.

    dz: (L*B, J); logvar: (B, J); eps: (L, B, J) or (B, J) -> (dmu, dlogvar), each (B, J).
    """
    eps = as_samples(eps, logvar)
    dz = dz.reshape(eps.shape)
    dmu = dz.sum(axis=0)
    dlogvar = (dz * eps).sum(axis=0) * (0.5 * xp.exp(0.5 * logvar))
    return dmu, dlogvar


def kl_per_dimension(xp, mu, logvar):
    """Eq. (7) term by term (eq. (47)): ``-0.5 * (1 + logvar_j - mu_j^2 - exp(logvar_j))``, the KL of
    each latent dimension. mu, logvar: (B, J) -> (B, J)."""
    return -0.5 * (1 + logvar - mu * mu - xp.exp(logvar))


def kl_divergence(xp, mu, logvar, kernels=None):
    """Eq. (7), per datapoint: ``KL(N(mu, diag exp(logvar)) || N(0, I))
    = -0.5 * sum_j (1 + logvar_j - mu_j^2 - exp(logvar_j))``, the sum of ``kl_per_dimension``.

    mu, logvar: (B, J) -> (B,). ``kernels``: the backend's fused kernels, or None.
    """
    if kernels is not None:
        return kernels.kl_terms(mu, logvar).sum(axis=1)
    return kl_per_dimension(xp, mu, logvar).sum(axis=1)


def kl_divergence_backward(xp, mu, logvar, dkl=None):
    """Eq. (17): ``dKL/dmu = mu``, ``dKL/dlogvar = 0.5 * (exp(logvar) - 1)``, times the upstream
    gradient of each datapoint's KL.

    mu, logvar: (B, J); dkl: (B,) or None (meaning ones, the gradient of the sum) -> (dmu, dlogvar).
    """
    dmu = mu
    dlogvar = 0.5 * (xp.exp(logvar) - 1)
    if dkl is None:
        return dmu.copy(), dlogvar
    return dmu * dkl[:, None], dlogvar * dkl[:, None]


def head_gradient(xp, dz, mu, logvar, eps, kernels=None, kl_weight=1.0, dlogvar_direct=None):
    """Eq. (18): the gradient at the encoder head ``[mu | logvar]``, both paths added:
    ``dmu = sum_s dz_s + mu``, ``dlogvar = sum_s dz_s * eps_s * 0.5 * exp(0.5 logvar)
    + 0.5 * (exp(logvar) - 1)`` (eq. (16) through z, eq. (17) through the KL of the batch sum).
    With a KL weight beta (eq. (42)) the KL path is multiplied by beta (and left out for beta = 0, as
    for the IWAE objective, which has no KL); ``dlogvar_direct`` (a number, e.g. the IWAE's -0.5 of
    eq. (46)) is a gradient reaching logvar directly, added to dlogvar.

    dz: (L*B, J); mu, logvar: (B, J); eps: (L, B, J) or (B, J) -> dhead: (B, 2J).
    ``kernels``: the backend's fused kernels (one pass after the sums over L, beta = 1 only), or None.
    """
    if kernels is None or kl_weight != 1.0 or dlogvar_direct is not None:
        dmu, dlogvar = reparameterize_backward(xp, dz, logvar, eps)
        if kl_weight != 0.0:
            dmu_kl, dlogvar_kl = kl_divergence_backward(xp, mu, logvar)
            if kl_weight != 1.0:
                dmu_kl, dlogvar_kl = dmu_kl * kl_weight, dlogvar_kl * kl_weight
            dmu, dlogvar = dmu + dmu_kl, dlogvar + dlogvar_kl
        if dlogvar_direct is not None:
            dlogvar = dlogvar + dlogvar_direct
        return xp.concatenate([dmu, dlogvar], axis=1)
    eps = as_samples(eps, mu)
    dz = dz.reshape(eps.shape)
    dmu, dlogvar = kernels.head_gradient(dz.sum(axis=0), (dz * eps).sum(axis=0), mu, logvar)
    return xp.concatenate([dmu, dlogvar], axis=1)
