"""The estimators of a trained VAE's quality on a test set, on the model backend's ``xp`` only (NumPy or
CuPy alike); ``python -m minivae.evaluate`` (minivae/evaluate.py) is the command line on top of them.

- ``elbo``: the ELBO of eq. (2) per test point, estimated as the training loss is (eq. (3): L = the
  model's samples of z, the KL of eq. (7) exact);
- ``importance_weighted_log_likelihood``: the importance-weighted estimate of log p(x) of eq. (22) with
  K samples, its log-weights ``log_importance_weights`` from ``VAE.forward`` (eq. (44) and the NLL of
  eq. (8), (9), (35) or (40)), reduced by the stable logsumexp of eq. (23) in chunks of samples that fit
  in memory (``samples_per_chunk``);
- ``evaluate_test_set``: both over a whole test set, seeded; ``mean_and_standard_error``;
- ``latent_statistics``: the active units and the KL per latent dimension of eq. (47).
"""

import math

import numpy as np

from .gaussian import kl_per_dimension
from .interrupts import check_interrupt
from .objectives import logsumexp  # eq. (23): the one stable reduction, shared with the IWAE objective


def log_importance_weights(model, x, eps, posterior=None):
    """The terms of eq. (22), ``log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x)`` with
    ``z_k = mu + eps_k * exp(0.5 * logvar)`` (eq. (5)): ``VAE.forward``'s, with log q in the form of eq. (44)
    (the same log w the IWAE objective trains on).

    x: (B, D); eps: (S, B, J); ``posterior``: the (mu, logvar) of x from ``model.encode(x)``, to share one
    encoder pass between chunks (default: encoded here). Returns (S, B), in the model's dtype.
    """
    terms, _ = model.forward(x, eps, for_backward=False, checked=posterior is not None, posterior=posterior)
    return terms.log_weights


def importance_weighted_log_likelihood(model, x, n_samples, chunk, noise=None):
    """Eq. (22) per row of x: ``log p(x) ~ logsumexp_k log w_k - log K`` for K = ``n_samples``
    draws z_k ~ q(z|x).

    The K samples are drawn and decoded ``chunk`` at a time, so memory holds one chunk's decoder
    pass (chunk * B rows); the encoder runs once. Each chunk's (chunk, B) log-weights are promoted to
    float64 and reduced by eq. (23); the chunks' results are combined by ``logaddexp(a, b) = log(e^a + e^b)``,
    which is eq. (23) for two terms. The result is eq. (23) over all K log-weights, whatever ``chunk`` is,
    up to float64 rounding; only the decoder works in the model's dtype.

    x: (B, D) on the model's backend; ``noise``: the Backend whose ``standard_normal`` draws eps
    (default: the model's), one (chunk, B, J) draw per chunk. Returns (B,) float64 on the backend.
    """
    xp = model.backend.xp
    noise = model.backend if noise is None else noise
    posterior = model.encode(x)
    total = None
    for start in range(0, n_samples, chunk):
        eps = noise.standard_normal((min(chunk, n_samples - start),) + tuple(posterior[0].shape))
        chunk_total = logsumexp(xp, log_importance_weights(model, x, eps, posterior).astype(xp.float64))
        total = chunk_total if total is None else xp.logaddexp(total, chunk_total)
    return total - math.log(n_samples)


def elbo(model, x, noise=None):
    """Eq. (2) per row of x, estimated as the training loss is (eq. (3)): the reconstruction term
    ``E_q log p(x|z)`` averaged over L = ``model.n_samples`` draws of z, minus the exact KL of eq. (7).

    x: (B, D) on the model's backend; ``noise``: the Backend that draws eps (default: the model's).
    Returns (B,) float64 on the backend.
    """
    eps = (model.backend if noise is None else noise).standard_normal(
        (model.n_samples, x.shape[0], model.latent_dim))
    reconstruction, kl = model.elbo_terms(x, eps)
    return -(reconstruction + kl).astype(model.backend.xp.float64)


ACTIVE_UNIT_THRESHOLD = 0.01  # Burda et al.: a unit is active when Var_x(E_q[z_u]) exceeds it (eq. (47))


def latent_statistics(model, test_x, batch_size):
    """Eq. (47) over the rows of the host array ``test_x`` (N, D): the variance over the test set of each
    posterior mean mu_u (``Var_x E_q[z_u]``) and the KL of eq. (7) per latent dimension averaged over
    the test set (the dimensions' KLs add up to the mean KL). Returns (variance (J,), kl (J,)) as
    float64 NumPy arrays; no noise is drawn."""
    backend = model.backend
    means, kls = [], []
    for start in range(0, len(test_x), batch_size):
        mu, logvar = model.encode(backend.to_device(test_x[start:start + batch_size]))
        means.append(backend.to_numpy(mu).astype(np.float64))
        kls.append(backend.to_numpy(kl_per_dimension(backend.xp, mu, logvar)).astype(np.float64))
    means = np.concatenate(means)
    return means.var(axis=0), np.concatenate(kls).mean(axis=0)


def samples_per_chunk(model, batch_size, memory_bytes):
    """How many samples of z per data point one chunk may hold so that a pass over ``batch_size``
    points fits in ``memory_bytes``: each of its chunk * batch_size rows holds about six arrays of D
    values (the tiled x, the decoder output and the likelihood's temporaries, the previous chunk's
    kept by the layers' caches), two of H per decoder hidden layer (or the conv decoder's feature maps
    and column arrays, ``model.decoder_values_per_row``) and a few of J. At least 1."""
    config = model.config
    values = config["input_dim"] * model.likelihood.outputs_per_value  # 2D with a learned variance
    row = 6 * values + 2 * model.decoder_values_per_row + 4 * config["latent_dim"]
    return max(1, int(memory_bytes // (batch_size * row * model.backend.dtype.itemsize)))


def evaluate_test_set(model, test_x, n_samples, batch_size, chunk, seed, progress=None):
    """The ELBO (``elbo``) and the importance-weighted log p(x) (``importance_weighted_log_likelihood``)
    of every row of the host array ``test_x`` (N, D), ``batch_size`` rows at a time.

    The noise comes from two generators seeded from ``seed`` (one for each estimate), so the same seed,
    batch size and backend give the same numbers, whatever ``chunk`` is on NumPy. ``progress``, if
    given, is called with the number of rows done after each batch. Returns (elbo, log_likelihood),
    two (N,) float64 NumPy arrays.
    """
    backend = model.backend
    elbo_noise, iw_noise = backend.with_seed(2 * seed), backend.with_seed(2 * seed + 1)
    elbos, log_likelihoods = [], []
    for start in range(0, len(test_x), batch_size):
        x = backend.to_device(test_x[start:start + batch_size])
        elbos.append(backend.to_numpy(elbo(model, x, elbo_noise)))
        log_likelihoods.append(backend.to_numpy(
            importance_weighted_log_likelihood(model, x, n_samples, chunk, iw_noise)))
        check_interrupt()  # a Ctrl-C that Python dropped in a callback stops here
        if progress is not None:
            progress(x.shape[0])
    return np.concatenate(elbos), np.concatenate(log_likelihoods)


def mean_and_standard_error(values):
    """The mean of per-point values and its standard error ``std(values, ddof=1) / sqrt(N)`` (0 for N = 1).

    The spread is over test points, so it holds both how the points differ and the Monte Carlo noise of
    each point's estimate."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        return float(values.mean()), 0.0
    return float(values.mean()), float(values.std(ddof=1) / math.sqrt(len(values)))
