"""``python -m minivae.evaluate RUN``: the test-set ELBO and the importance-weighted estimate of log p(x).

RUN is a training run's ``--out`` folder (its ``checkpoint.npz`` is evaluated) or a checkpoint file.
For every test point it computes

- the ELBO of eq. (2), estimated as the training loss is (eq. (3): L = the model's samples of z,
  the KL of eq. (7) exact), and
- the importance-weighted estimate of log p(x) of eq. (22) with K samples (``--iw-samples``, 5000 as
  in the IWAE paper), its log-weights from eq. (44) and the NLL of eq. (8), (9), (35) or (40),
  reduced by the stable logsumexp of eq. (23) in chunks of samples that fit in memory,

and reports their means over the test set with standard errors, in nats, with the active units and
the KL per latent dimension (eq. (47)), as a table on stdout and as JSON (``evaluation.json`` beside the checkpoint, written atomically).

The math is in minivae/estimators.py (``log_importance_weights``, ``importance_weighted_log_likelihood``,
``elbo``, ``latent_statistics``); this module is the command line on top of it.
"""

import json
import os
import sys
import time

import numpy as np

from .version import __version__
from .backend import get_backend
from .checkpoint import model_from_checkpoint, read_run
from .cli import (Parser, add_output_flags, add_setting_flags, dataset_label, positive_int, run_command,
                  setting_values, unnamed_data_label)
from .data import load_run_data, names_data
from .errors import DataError, NumericalError
from .fileio import atomic_write
from .estimators import (ACTIVE_UNIT_THRESHOLD, evaluate_test_set, latent_statistics, mean_and_standard_error,
                         samples_per_chunk)

PROGRAM = "minivae-evaluate"
RESULTS_NAME = "evaluation.json"
DEFAULT_IW_SAMPLES = 5000
DEFAULT_BATCH_SIZE = 100
# One pass's memory: small on the CPU, where smaller passes run faster (on two cores, 32 MiB passes
# took 0.7 of the time of 256 MiB ones and 0.4 of 1 GiB ones), large on a GPU, which needs big passes.
CPU_MEMORY_MB = 32
GPU_MEMORY_MB = 1024


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
    if args.dataset is not None or args.data_dir is not None:  # the command line names the data instead
        settings = {"dataset": args.dataset or settings.get("dataset"),
                    "data_dir": args.data_dir or (settings.get("data_dir") if args.dataset is None else None),
                    "binarize": settings.get("binarize", "none"), "seed": settings.get("seed", 1)}
    name = settings.get("dataset")
    if not names_data(settings):
        raise DataError(f"{path}: the run's settings do not name its dataset; pass --dataset (and --data-dir)")
    dataset = load_run_data(settings, download=not args.no_download, log=log)
    trained_on, here = saved.checkpoint.config.get("input_dim"), dataset.test_x.shape[1]
    if trained_on != here:
        height, width = dataset.image_shape
        raise DataError(f"{path} was trained on data of {trained_on} values per point, but "
                        f"{dataset_label(dataset, name)} holds {height}x{width} = {here} pixels per image; pass "
                        f"the --dataset or --data-dir the run was trained on")
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
    data = results["dataset"] or unnamed_data_label(results["data_source"])
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
