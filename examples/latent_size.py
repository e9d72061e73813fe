"""The AEVB paper's Figure 2 at laptop scale: the ELBO against the size of the latent space.

Trains one short run per latent size (2, 5, 10, 20 by default) on the same subset of the dataset (the
first ``--train-size`` training and ``--test-size`` test images, written as IDX files under ``--out``,
since the training command has no flag for a subset), then computes, with each run's final weights,
the ELBO per data point (``minivae.estimators.elbo``) on the training and on the test images, and plots
both against the latent size. The paper plots whole learning curves over 10^8 training samples; here
every run sees ``--epochs`` x ``--train-size`` of them, far from converged: after one epoch the larger
latent spaces are still behind (their KL term is still being paid down), which is not the paper's
finding that more latent variables do not overfit and help; give the runs more --epochs to see that.

    python examples/latent_size.py                   # 4 runs of 1 epoch on 10000 images: 6 s to 1 min
    python examples/latent_size.py --quick           # made-up blob images, sizes 2 and 5: seconds

Writes OUT/latent_size.png, OUT/latent_size.csv and one run folder OUT/latent_<J> per size.
"""

import csv
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
from example_data import network_flags, write_blobs, write_subset
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from minivae import load_model, train
from minivae.backend import get_backend
from minivae.cli import quiet_on_closed_pipe
from minivae.data import DATASETS, IDX_FILES, load_dataset, read_idx, resolve_default_dataset
from minivae.errors import MinivaeError
from minivae.estimators import elbo
from minivae.fileio import atomic_write


def build_parser():
    parser = Parser(description="Train one short run per latent size and plot the ELBO "
                                                 "against it (the AEVB paper's Figure 2).")
    parser.add_argument("--out", default=os.path.join("results", "latent_size"), help="folder (a new one)")
    parser.add_argument("--latent-dims", type=count, nargs="+", default=[2, 5, 10, 20], help="sizes of z")
    parser.add_argument("--epochs", type=count, default=1, help="epochs per run (default: 1)")
    parser.add_argument("--train-size", type=count, default=10000, help="training images (default: 10000)")
    parser.add_argument("--test-size", type=count, default=2000, help="test images (default: 2000)")
    parser.add_argument("--dataset", choices=sorted(DATASETS),
                        help="dataset (default: the training command's choice, fashion-mnist-small offline)")
    parser.add_argument("--data-dir", help="folder holding the dataset's IDX files")
    parser.add_argument("--backend", default="numpy", help="numpy, cupy or auto (default: numpy)")
    parser.add_argument("--architecture", choices=("mlp", "conv"), default="mlp",
                        help="mlp, or conv: the convolutional VAE (default: mlp)")
    parser.add_argument("--quick", action="store_true",
                        help="made-up 16x16 blob images, sizes 2 and 5, a small net: seconds")
    add_json_flag(parser, "latent_size")
    return parser


def write_data(args, parser):
    """The subset (or, with --quick, the blobs) as IDX files in OUT/data; returns the folder."""
    folder = os.path.join(args.out, "data")
    if args.quick:
        return write_blobs(folder)
    if args.dataset:
        dataset = load_dataset(args.dataset, data_dir=args.data_dir)
    else:
        dataset = resolve_default_dataset(data_dir=args.data_dir)
    check_within(parser, "--train-size", args.train_size, len(dataset.train_x), dataset.name)
    check_within(parser, "--test-size", args.test_size, len(dataset.test_x), dataset.name)
    print(f"using the first {args.train_size} training and {args.test_size} test images of {dataset.name} "
          f"({dataset.source})")
    return write_subset(dataset, folder, args.train_size, args.test_size)


def read_pixels(data_dir, name):
    """The images of one IDX file of ``data_dir`` as (N, H*W) float32 rows in [0, 1], as training reads them."""
    images = read_idx(os.path.join(data_dir, name))
    return images.reshape(len(images), -1).astype(np.float32) / np.float32(255)


def train_run(args, data_dir, latent_dim):
    """One training run with a latent space of ``latent_dim``; returns its folder."""
    out = os.path.join(args.out, f"latent_{latent_dim}")
    argv = ["--data-dir", data_dir, "--out", out, "--latent-dim", str(latent_dim), "--backend", args.backend,
            "--no-progress"]
    if args.quick:
        argv += ["--epochs", "1", *network_flags(args.architecture, 32), "--batch-size", "32"]
    else:
        argv += ["--epochs", str(args.epochs)] + (["--architecture", "conv"] if args.architecture == "conv" else [])
    if train.main(argv) != 0:
        raise MinivaeError(f"the run with latent size {latent_dim} failed (see above)")
    return out


def mean_elbo(model, pixels, batch_size=1000):
    """The ELBO per data point (eq. (2), one sample of z per point) of host rows ``pixels``, averaged."""
    backend = model.backend
    noise = backend.with_seed(0)
    values = [backend.to_numpy(elbo(model, backend.to_device(pixels[start:start + batch_size]), noise))
              for start in range(0, len(pixels), batch_size)]
    return float(np.concatenate(values).mean())


def save_plot(path, latent_dims, train_elbo, test_elbo):
    """ELBO per data point (nats) against the latent size, train and test, as a PNG written atomically."""
    figure = Figure(figsize=(5, 3.6), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.plot(latent_dims, train_elbo, "o-", label="train")
    axes.plot(latent_dims, test_elbo, "s--", label="test")
    axes.set_xscale("log")
    axes.set_xticks(latent_dims, [str(j) for j in latent_dims])
    axes.minorticks_off()
    axes.set_xlabel("latent size J")
    axes.set_ylabel("ELBO per data point (nats)")
    axes.legend()
    figure.tight_layout()
    with atomic_write(path, "wb") as handle:
        figure.savefig(handle, format="png")


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    refuse_beside_quick(parser, args, ("--latent-dims", "--epochs", "--train-size", "--test-size", "--dataset",
                                       "--data-dir"))
    latent_dims = [2, 5] if args.quick else sorted(args.latent_dims)
    try:
        data_dir = write_data(args, parser)
        runs = [train_run(args, data_dir, j) for j in latent_dims]
        backend = get_backend(args.backend, dtype="float32", seed=0)
        models = [load_model(run, backend) for run in runs]
    except MinivaeError as error:
        print(f"latent_size: error: {error}", file=sys.stderr)
        return 1
    train_x, test_x = read_pixels(data_dir, IDX_FILES[0]), read_pixels(data_dir, IDX_FILES[2])
    train_elbo = [mean_elbo(model, train_x) for model in models]
    test_elbo = [mean_elbo(model, test_x) for model in models]
    table = os.path.join(args.out, "latent_size.csv")
    with atomic_write(table, "w") as handle:
        writer = csv.writer(handle)
        writer.writerow(["latent_dim", "train_elbo", "test_elbo"])
        writer.writerows(zip(latent_dims, train_elbo, test_elbo))
    save_plot(os.path.join(args.out, "latent_size.png"), latent_dims, train_elbo, test_elbo)
    print(f"{'J':>3}  {'train ELBO':>11}  {'test ELBO':>10}")
    for row in zip(latent_dims, train_elbo, test_elbo):
        print(f"{row[0]:>3}  {row[1]:>11.2f}  {row[2]:>10.2f}")
    print(f"wrote {table} and {os.path.join(args.out, 'latent_size.png')}")
    write_json(args, "latent_size", {"latent_dims": latent_dims, "train_elbo": train_elbo, "test_elbo": test_elbo})
    return 0


if __name__ == "__main__":
    sys.exit(quiet_on_closed_pipe(main))
