"""The IWAE paper's Table 1 at laptop scale: a VAE and an IWAE with the same K, network and budget.

Burda, Grosse & Salakhutdinov (2015, arXiv 1509.00519) train the same network two ways: on the ELBO
averaged over K samples (the VAE, eq. (3) of docs/derivation.md with L = K) and on the importance-
weighted bound with K samples (the IWAE, eq. (43)). This script does the same on the first
``--train-size`` training images of the dataset with dynamic binarisation (a fresh Bernoulli draw of
every training image each epoch; the test images are drawn once), on the paper's one-stochastic-layer
network (784-200-200-50 tanh, both ways), then reports for each model on the first ``--test-size``
test images:

- the test ELBO (one draw of K samples per image, the KL exact, eq. (2)),
- the importance-weighted estimate of log p(x) with ``--iw-samples`` (5000, as the paper) samples
  (eq. (22)), and
- the active units (eq. (47)),

as a table (markdown, for examples/README.md) and ``OUT/iwae_vs_vae.json`` (or ``--json PATH``). Both
models start from the same weights and see the same images in the same order, and are evaluated on the
same test images, so their difference is also reported paired, image by image: the mean of the
per-image differences VAE - IWAE and its standard error. That error measures the difference itself;
the errors of the two means mostly measure how the test images differ from one another.

    python examples/iwae_vs_vae.py                # 10 epochs of 10000 images, K = 5: a few minutes
    python examples/iwae_vs_vae.py --quick        # made-up blob images, a small net: seconds
"""

import os
import pathlib
import sys

# minivae before NumPy: importing it tunes OpenBLAS's threads (README, "Speed and threads")
try:
    import minivae  # noqa: F401  (installed, e.g. `pip install -e .`)
except ImportError:  # run from a source checkout without installing: use the checkout's package
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
    import minivae  # noqa: F401

import numpy as np
from example_args import Parser, add_json_flag, check_within, count, refuse_beside_quick, write_json
from example_data import write_blobs, write_subset

from minivae import train
from minivae.backend import get_backend
from minivae.checkpoint import model_from_checkpoint, read_run
from minivae.cli import quiet_on_closed_pipe
from minivae.data import DATASETS, binarize_dataset, load_dataset, resolve_default_dataset
from minivae.errors import MinivaeError
from minivae.estimators import (ACTIVE_UNIT_THRESHOLD, evaluate_test_set, latent_statistics, mean_and_standard_error,
                                samples_per_chunk)

OBJECTIVES = ("elbo", "iwae")
PAPER = {"elbo": 86.47, "iwae": 85.54}  # Table 1, MNIST, one stochastic layer, k = 5: -log p(x), nats


def build_parser():
    parser = Parser(description="Train a VAE and an IWAE with the same K and budget, and "
                                                 "compare their test ELBO, log p(x) and active units.")
    parser.add_argument("--out", default=os.path.join("results", "iwae_vs_vae"), help="folder (a new one)")
    parser.add_argument("--samples", type=count, default=5, help="K, samples per image in training (default: 5)")
    parser.add_argument("--epochs", type=count, default=10, help="epochs per model (default: 10)")
    parser.add_argument("--train-size", type=count, default=10000, help="training images (default: 10000)")
    parser.add_argument("--test-size", type=count, default=500, help="test images evaluated (default: 500)")
    parser.add_argument("--iw-samples", type=count, default=5000, help="K of the log p(x) estimate (default: 5000)")
    parser.add_argument("--dataset", choices=sorted(DATASETS),
                        help="dataset (default: the training command's choice, fashion-mnist-small offline)")
    parser.add_argument("--data-dir", help="folder holding the dataset's IDX files")
    parser.add_argument("--backend", default="numpy", help="numpy, cupy or auto (default: numpy)")
    parser.add_argument("--quick", action="store_true", help="made-up 16x16 blob images, a small net: seconds")
    add_json_flag(parser, "iwae_vs_vae")
    return parser


def write_data(args, parser):
    """The subset (or, with --quick, the blobs) as IDX files in OUT/data; returns the folder."""
    folder = os.path.join(args.out, "data")
    if args.quick:
        return write_blobs(folder)
    dataset = load_dataset(args.dataset, data_dir=args.data_dir) if args.dataset else \
        resolve_default_dataset(data_dir=args.data_dir)
    check_within(parser, "--train-size", args.train_size, len(dataset.train_x), dataset.name)
    check_within(parser, "--test-size", args.test_size, len(dataset.test_x), dataset.name)
    print(f"using the first {args.train_size} training and {args.test_size} test images of {dataset.name} "
          f"({dataset.source})")
    return write_subset(dataset, folder, args.train_size, args.test_size)


def train_run(args, data_dir, objective):
    """One training run (same seed, so the same initial weights and image order); returns its folder."""
    out = os.path.join(args.out, objective)
    argv = ["--data-dir", data_dir, "--out", out, "--objective", objective, "--samples", str(args.samples),
            "--binarize", "dynamic", "--activation", "tanh", "--backend", args.backend, "--no-progress"]
    if args.quick:
        argv += ["--epochs", "2", "--hidden", "32", "--latent-dim", "5", "--batch-size", "32"]
    else:
        argv += ["--epochs", str(args.epochs), "--hidden", "200", "--hidden", "200", "--latent-dim", "50",
                 "--batch-size", "100"]
    print(f"training the {'VAE' if objective == 'elbo' else 'IWAE'} (--objective {objective}, K = {args.samples})")
    if train.main(argv) != 0:
        raise MinivaeError(f"the {objective} run failed (see above)")
    return out


def evaluate_run(run, data_dir, args):
    """Test ELBO, importance-weighted log p(x) and active units of the run's final model, on the test
    images binarised exactly as training binarised them (one fixed draw)."""
    saved = read_run(run)  # minivae.load_model, with the run's settings (its seed) beside the model
    model = model_from_checkpoint(saved.checkpoint, get_backend(args.backend, dtype="float32", seed=0))
    dataset = load_dataset("mnist", data_dir=data_dir, download=False, log=lambda message: None)  # as training
    binarize_dataset(dataset, "dynamic", saved.settings["seed"])
    iw_samples = 50 if args.quick else args.iw_samples
    chunk = samples_per_chunk(model, 100, 32 * 2 ** 20)
    elbos, log_likelihoods = evaluate_test_set(model, dataset.test_x, iw_samples, 100, chunk, seed=0)
    variance, _ = latent_statistics(model, dataset.test_x, 100)
    return {"elbo": mean_and_standard_error(elbos), "log_likelihood": mean_and_standard_error(log_likelihoods),
            "active_units": int((variance > ACTIVE_UNIT_THRESHOLD).sum()), "latent_dim": len(variance),
            "iw_samples": iw_samples, "test_points": len(elbos),
            "per_image": {"elbo": [float(v) for v in elbos], "log_likelihood": [float(v) for v in log_likelihoods]}}


def paired_differences(results):
    """VAE - IWAE, image by image on the same test images: (mean, standard error) of the per-image
    differences of the ELBO and of the log p(x) estimate."""
    return {key: mean_and_standard_error(np.subtract(results["elbo"]["per_image"][key],
                                                     results["iwae"]["per_image"][key]))
            for key in ("elbo", "log_likelihood")}


def format_paired(paired):
    """The paired differences as lines, with how many standard errors each is from zero."""
    lines = []
    for key, name in (("elbo", "test ELBO"), ("log_likelihood", "test log p(x)")):
        mean, error = paired[key]
        lines.append(f"VAE - IWAE, paired over the same test images, {name}: {mean:+.2f} ± {error:.2f} nats "
                     f"({abs(mean) / error if error else float('inf'):.1f} standard errors from 0)")
    return "\n".join(lines)


def format_table(results, samples):
    """The results as a markdown table, beside the IWAE paper's numbers."""
    lines = [f"| model | K | test -ELBO (nats) | test -log p(x), IW K={results['elbo']['iw_samples']} (nats) | "
             f"active units | paper -log p(x) (MNIST) |", "| --- | --- | --- | --- | --- | --- |"]
    for objective, name in (("elbo", "VAE"), ("iwae", "IWAE")):
        row = results[objective]
        (elbo, elbo_se), (ll, ll_se) = row["elbo"], row["log_likelihood"]
        lines.append(f"| {name} | {samples} | {-elbo:.2f} ± {elbo_se:.2f} | {-ll:.2f} ± {ll_se:.2f} | "
                     f"{row['active_units']} of {row['latent_dim']} | {PAPER[objective]} (k=5) |")
    return "\n".join(lines)


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    refuse_beside_quick(parser, args, ("--epochs", "--train-size", "--test-size", "--iw-samples", "--dataset",
                                       "--data-dir"))
    try:
        data_dir = write_data(args, parser)
        runs = {objective: train_run(args, data_dir, objective) for objective in OBJECTIVES}
        results = {objective: evaluate_run(run, data_dir, args) for objective, run in runs.items()}
    except MinivaeError as error:
        print(f"iwae_vs_vae: error: {error}", file=sys.stderr)
        return 1
    results["paired_vae_minus_iwae"] = paired_differences(results)
    print(format_table(results, args.samples))
    print(format_paired(results["paired_vae_minus_iwae"]))
    write_json(args, "iwae_vs_vae", results)
    return 0


if __name__ == "__main__":
    sys.exit(quiet_on_closed_pipe(main))
