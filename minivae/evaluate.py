"""``python -m minivae.evaluate RUN``: the test-set ELBO and the importance-weighted estimate of log p(x).

RUN is a training run's ``--out`` folder (its ``checkpoint.npz`` is evaluated) or a checkpoint file.
For every test point it computes

- the ELBO of eq. (2), estimated as the training loss is (eq. (3): L = the model's samples of z,
  the KL of eq. (7) exact), and
- the importance-weighted estimate of log p(x) of eq. (22) with K samples (``--iw-samples``, 5000 as
  in the IWAE paper), its log-weights from eq. (21), (8)/(9), reduced by the stable logsumexp of
  eq. (23) in chunks of samples that fit in memory,

and reports their means over the test set with standard errors, in nats, with the active units and
the KL per latent dimension (eq. (47)), as a table on stdout and as JSON (``evaluation.json`` beside the checkpoint, written atomically).

The math is in the small functions at the top (``logsumexp``, ``log_importance_weights``,
``importance_weighted_log_likelihood``, ``elbo``); they compute with the model backend's ``xp`` only,
so they run on NumPy and CuPy alike. The command line is below them.
"""

import json
import math
import os
import sys
import time

import numpy as np

from . import __version__
from .backend import get_backend
from .checkpoint import model_from_checkpoint, read_run
from .cli import Parser, add_output_flags, add_setting_flags, dataset_label, positive_int, run_command, setting_values
from .data import binarize_dataset, load_dataset, resolve_default_dataset
from .errors import DataError, NumericalError
from .fileio import atomic_write
from .interrupts import check_interrupt
from .gaussian import gaussian_log_density, reparameterize
from .objectives import logsumexp  # eq. (23): the one stable reduction, shared with the IWAE objective

PROGRAM = "minivae-evaluate"
RESULTS_NAME = "evaluation.json"
DEFAULT_IW_SAMPLES = 5000
DEFAULT_BATCH_SIZE = 100
# One pass's memory: small on the CPU, where smaller passes run faster (on two cores, 32 MiB passes
# took 0.7 of the time of 256 MiB ones and 0.4 of 1 GiB ones), large on a GPU, which needs big passes.
CPU_MEMORY_MB = 32
GPU_MEMORY_MB = 1024


# --------------------------------------------------------------------------------------------------
# The math: backend arrays in, backend arrays out


def log_importance_weights(model, x, mu, logvar, eps):
    """The terms of eq. (22): ``log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x)``, with
    ``z_k = mu + eps_k * exp(0.5 * logvar)`` (eq. (5)), ``log p(x|z) = -NLL`` (eq. (8) or (9)), and
    ``log p(z)``, ``log q(z|x)`` the Gaussian log-densities of eq. (21) (mean 0 and log-variance 0
    for the prior).

    x: (B, D); mu, logvar: (B, J), the encoder's output for x; eps: (S, B, J) -> (S, B), in the
    model's dtype.
    """
    xp = model.backend.xp
    n = eps.shape[0]
    z = reparameterize(xp, mu, logvar, eps, model.backend.kernels)            # (S*B, J), sample-major
    log_px_given_z = -model.likelihood.nll(model.decoder.forward(z), xp.tile(x, (n, 1)))
    z = z.reshape(eps.shape)
    zeros = xp.zeros_like(mu)
    log_pz = gaussian_log_density(xp, z, zeros, zeros)                        # (S, B)
    log_qz = gaussian_log_density(xp, z, mu, logvar)                          # (S, B)
    return log_px_given_z.reshape(n, -1) + log_pz - log_qz


def importance_weighted_log_likelihood(model, x, n_samples, chunk, noise=None):
    """Eq. (22) per row of x: ``log p(x) ~ logsumexp_k log w_k - log K`` for K = ``n_samples``
    draws z_k ~ q(z|x).

    The K samples are drawn and decoded ``chunk`` at a time, so memory holds one chunk's decoder
    pass (chunk * B rows). Each chunk's (chunk, B) log-weights are promoted to float64 and reduced
    by eq. (23); the chunks' results are combined by ``logaddexp(a, b) = log(e^a + e^b)``, which is
    eq. (23) for two terms. The result is eq. (23) over all K log-weights, whatever ``chunk`` is,
    up to float64 rounding; only the decoder works in the model's dtype.

    x: (B, D) on the model's backend; ``noise``: the Backend whose ``standard_normal`` draws eps
    (default: the model's), one (chunk, B, J) draw per chunk. Returns (B,) float64 on the backend.
    """
    xp = model.backend.xp
    noise = model.backend if noise is None else noise
    mu, logvar = model.encode(x)
    total = None
    for start in range(0, n_samples, chunk):
        eps = noise.standard_normal((min(chunk, n_samples - start),) + tuple(mu.shape))
        chunk_total = logsumexp(xp, log_importance_weights(model, x, mu, logvar, eps).astype(xp.float64))
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
        kls.append(backend.to_numpy(-0.5 * (1 + logvar - mu * mu - backend.xp.exp(logvar))).astype(np.float64))
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


# --------------------------------------------------------------------------------------------------
# The command line


SETTINGS = ("batch_size", "dataset", "data_dir", "backend", "dtype", "seed")
"""The settings of minivae/settings.py this command has, with its own defaults and help where they differ."""
DEFAULTS = {"batch_size": DEFAULT_BATCH_SIZE, "dataset": None, "data_dir": None, "backend": "auto", "dtype": None,
            "seed": 0}  # None: the run's (the help says so)
HELPS = {"batch_size": "test points per pass", "dataset": "dataset to evaluate on (default: the run's)",
         "data_dir": "folder holding the dataset's files (default: the run's --data-dir, if any)",
         "dtype": "floating-point type of the decoder passes (default: the checkpoint's; logsumexp is float64 anyway)",
         "seed": "seed of the noise eps"}


def build_parser():
    parser = Parser(prog="python -m minivae.evaluate", description=(
        "The test-set ELBO and the importance-weighted estimate of log p(x) (eq. (22) of docs/derivation.md) "
        "of a trained VAE, in nats per test point."))
    add = parser.add_argument
    add("run", metavar="RUN", help="a training run's --out folder, or a checkpoint .npz file")
    add("--iw-samples", type=positive_int, default=DEFAULT_IW_SAMPLES, metavar="K",
        help=f"K, importance samples per test point (default: {DEFAULT_IW_SAMPLES}, as in the IWAE paper)")
    add("--chunk", type=positive_int, metavar="S",
        help="samples of z per test point decoded in one pass (default: as many as fit in --memory-mb)")
    add("--memory-mb", type=positive_int, metavar="MB",
        help=f"memory for one pass when --chunk is not given (default: {CPU_MEMORY_MB} on the CPU, "
             f"{GPU_MEMORY_MB} on a GPU)")
    add("--limit", type=positive_int, metavar="N", help="evaluate only the first N test points")
    add_setting_flags(parser, SETTINGS, DEFAULTS, HELPS)
    add("--no-download", action="store_true", help="never download a dataset")
    add("--output", metavar="FILE", help=f"where to write the JSON (default: {RESULTS_NAME} beside the checkpoint)")
    add_output_flags(parser)
    return parser


MEMORY_HINT = "pass a smaller --chunk (or --memory-mb) or --batch-size"


def main(argv=None):
    """The command: the table on stdout, then the JSON written; 1 with one line on stderr for a
    failure (a failed write comes after the table, so the computation is not lost); 130 for Ctrl-C."""
    written = []

    def evaluate_and_write(args):
        results = run(args)
        if not args.quiet:
            print(format_table(results))
        written.append(write_results(results, args))
        if not args.quiet:
            print(f"wrote {written[0]}")

    def after_interrupt(args):
        return f"{written[0]} is written" if written else "nothing was written"

    return run_command(PROGRAM, build_parser(), evaluate_and_write, after_interrupt, "the folder", MEMORY_HINT,
                       argv)


def run(args):
    """Evaluate as the parsed command line says; returns the results (a dict), writing nothing."""
    log = (lambda message: None) if args.quiet else print
    for name, value in setting_values(args, SETTINGS, DEFAULTS).items():  # the defaults of flags not given
        setattr(args, name, value)
    saved = read_run(args.run, fix="pass --dataset (and --data-dir) yourself, or pass a copy of the checkpoint "
                                   "without it")
    checkpoint, path = saved.checkpoint, saved.checkpoint.path
    dataset, name = _load_test_set(args, path, saved, log)
    test_x = dataset.test_x[:args.limit]
    backend = get_backend(args.backend, dtype=args.dtype or checkpoint.dtype, seed=args.seed)
    model = model_from_checkpoint(checkpoint, backend)
    memory_mb = args.memory_mb or (GPU_MEMORY_MB if backend.name == "cupy" else CPU_MEMORY_MB)
    chunk = args.chunk or samples_per_chunk(model, min(args.batch_size, len(test_x)), memory_mb * 2 ** 20)
    elbos, log_likelihoods, seconds = _timed_evaluation(model, test_x, args, chunk)
    if not (np.isfinite(elbos).all() and np.isfinite(log_likelihoods).all()):
        raise NumericalError(f"{path}: the ELBO or the log-likelihood of some test point is not finite "
                             f"(in {backend.dtype.name}); try --dtype float64")
    results = _results(path, checkpoint, dataset, name, args, backend, chunk, elbos, log_likelihoods, seconds)
    results.update(_latent_results(model, test_x, args.batch_size))
    return results


def write_results(results, args):
    """Write the results as JSON (atomically) to --output, or evaluation.json beside the checkpoint;
    returns the path written."""
    output = args.output or os.path.join(os.path.dirname(results["checkpoint"]), RESULTS_NAME)
    with atomic_write(output, "w") as handle:
        json.dump(results, handle, indent=2)
        handle.write("\n")
    return output


def _timed_evaluation(model, test_x, args, chunk):
    """``evaluate_test_set`` with a progress bar (on a terminal only); returns (elbo, log_likelihood, seconds)."""
    progress = _progress_bar(len(test_x), not (args.no_progress or args.quiet) and sys.stdout.isatty())
    start = time.perf_counter()
    try:
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # a non-finite result is reported
            elbos, log_likelihoods = evaluate_test_set(model, test_x, args.iw_samples, args.batch_size, chunk,
                                                       args.seed, None if progress is None else progress.update)
        model.backend.synchronize()
    finally:
        if progress is not None:
            progress.close()
    return elbos, log_likelihoods, time.perf_counter() - start


def _load_test_set(args, path, saved, log):
    """The dataset whose test set is evaluated, and its name (None: the IDX files of a --data-dir):
    --dataset / --data-dir, or else the run's (``saved.settings``), with the test set binarized exactly as
    training binarized it (one fixed draw, seeded by the run's seed)."""
    settings = saved.settings
    name = args.dataset or settings.get("dataset")
    data_dir = args.data_dir or (settings.get("data_dir") if args.dataset is None else None)
    if name is None and data_dir is None:
        raise DataError(f"{path}: the run's settings do not name its dataset; pass --dataset (and --data-dir)")
    download = not args.no_download
    dataset = (load_dataset(name, data_dir=data_dir, download=download, log=log) if name is not None else
               resolve_default_dataset(data_dir=data_dir, download=download, log=log))
    trained_on, here = saved.checkpoint.config.get("input_dim"), dataset.test_x.shape[1]
    if trained_on != here:
        height, width = dataset.image_shape
        raise DataError(f"{path} was trained on data of {trained_on} values per point, but "
                        f"{dataset_label(dataset, name)} holds {height}x{width} = {here} pixels per image; pass "
                        f"the --dataset or --data-dir the run was trained on")
    binarize_dataset(dataset, settings.get("binarize", "none"), settings.get("seed", 1))  # none saved: the defaults
    return dataset, name


def _progress_bar(total, show):
    if not show:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="evaluating", unit="pt", leave=False, file=sys.stdout)


def _results(path, checkpoint, dataset, name, args, backend, chunk, elbos, log_likelihoods, seconds):
    """The JSON document: what was evaluated (``dataset`` null: the IDX files of ``data_source``), how,
    and the means (nats per test point)."""
    elbo_mean, elbo_se = mean_and_standard_error(elbos)
    ll_mean, ll_se = mean_and_standard_error(log_likelihoods)
    gap_mean, gap_se = mean_and_standard_error(log_likelihoods - elbos)  # paired: the points' spread cancels
    return {
        "checkpoint": os.path.abspath(path), "epoch": checkpoint.epoch, "dataset": name,
        "data_source": dataset.source, "test_points": len(elbos), "test_set_size": len(dataset.test_x),
        "iw_samples": args.iw_samples, "chunk": chunk, "batch_size": args.batch_size, "seed": args.seed,
        "backend": backend.name, "dtype": backend.dtype.name,
        "elbo": {"mean": elbo_mean, "standard_error": elbo_se},
        "log_likelihood": {"mean": ll_mean, "standard_error": ll_se},
        "negative_elbo": -elbo_mean, "negative_log_likelihood": -ll_mean,
        "log_likelihood_minus_elbo": {"mean": gap_mean, "standard_error": gap_se},
        "seconds": seconds, "minivae_version": __version__,
    }


def _latent_results(model, test_x, batch_size):
    """The active units and the KL per latent dimension of eq. (47), for the JSON document."""
    variance, kl = latent_statistics(model, test_x, batch_size)
    return {"active_units": int((variance > ACTIVE_UNIT_THRESHOLD).sum()), "latent_dim": int(len(variance)),
            "active_unit_threshold": ACTIVE_UNIT_THRESHOLD, "posterior_mean_variance": variance.tolist(),
            "kl_per_dimension": kl.tolist()}


def format_table(results):
    """The results as a small table (nats per test point): ELBO and log p(x), their negatives (which
    compare with the training loss), and how far the estimate of log p(x) lies above the ELBO."""
    lower_bound, log_likelihood = results["elbo"], results["log_likelihood"]
    rows = [("ELBO", lower_bound), (f"log p(x), IW K={results['iw_samples']}", log_likelihood),
            ("-ELBO", {**lower_bound, "mean": -lower_bound["mean"]}),
            ("-log p(x)", {**log_likelihood, "mean": -log_likelihood["mean"]}),
            ("log p(x) - ELBO", results["log_likelihood_minus_elbo"])]
    data = results["dataset"] or f"the IDX files in {results['data_source']}"
    lines = [f"{results['checkpoint']} (epoch {results['epoch']}) on {data}: "
             f"{results['test_points']} of {results['test_set_size']} test points, {results['backend']} "
             f"{results['dtype']}, {results['seconds']:.1f} s",
             f"{'nats per test point':<24}{'mean':>12}{'std. error':>12}"]
    lines += [f"{name:<24}{value['mean']:>12.3f}{value['standard_error']:>12.3f}" for name, value in rows]
    if "active_units" in results:
        kl = " ".join(f"{value:.2f}" for value in results["kl_per_dimension"])
        lines.append(f"active units (Var_x E_q[z_u] > {results['active_unit_threshold']:g}): "
                     f"{results['active_units']} of {results['latent_dim']}")
        lines.append(f"KL per latent dimension (nats): {kl}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
