"""The AEVB paper's Figure 4 at laptop scale: the learned 2-D latent manifold of a VAE.

Trains a VAE with a 2-D latent space (``python -m minivae.train --latent-dim 2``) and keeps what the
training command writes for it: ``manifold.png``, the decoder's means over a 20 x 20 grid of the
prior's quantiles (the paper's figure), and ``latent_scatter.png``, the encoder's means of the test
set coloured by label. The dataset is the training command's default: MNIST when it is on the
machine or can be downloaded, else a Fashion-MNIST copy on the machine, else the packaged
fashion-mnist-small.

    python examples/manifold.py                      # 5 epochs: 20 s to 4 min on 2 CPU cores
    python examples/manifold.py --quick              # made-up blob images, a few seconds

See examples/README.md for what it prints and writes.
"""

import os
import pathlib
import sys

# minivae before NumPy (which example_data imports): importing it tunes OpenBLAS's threads
# (README, "Speed and threads")
try:
    import minivae  # noqa: F401  (installed, e.g. `pip install -e .`)
except ImportError:  # run from a source checkout without installing: use the checkout's package
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
    import minivae  # noqa: F401

from example_args import Parser, add_json_flag, count, refuse_beside_quick, write_json
from example_data import network_flags, write_blobs

from minivae import train
from minivae.checkpoint import load_checkpoint
from minivae.cli import quiet_on_closed_pipe
from minivae.data import DATASETS


def build_parser():
    parser = Parser(description="Train a VAE with a 2-D latent space and draw its manifold "
                                                 "(the AEVB paper's Figure 4).")
    parser.add_argument("--out", default=os.path.join("results", "manifold"), help="run folder (a new one)")
    parser.add_argument("--epochs", type=count, default=5, help="epochs (default: 5)")
    parser.add_argument("--dataset", choices=sorted(DATASETS),
                        help="dataset (default: the training command's choice, fashion-mnist-small offline)")
    parser.add_argument("--data-dir", help="folder holding the dataset's IDX files")
    parser.add_argument("--backend", default="numpy", help="numpy, cupy or auto (default: numpy)")
    parser.add_argument("--architecture", choices=("mlp", "conv"), default="mlp",
                        help="mlp, or conv: the convolutional VAE (default: mlp)")
    parser.add_argument("--quick", action="store_true",
                        help="a made-up dataset of 16x16 blob images and one epoch of a small net: seconds")
    add_json_flag(parser, "manifold")
    return parser


def train_arguments(args):
    """The command line of ``python -m minivae.train`` for this example."""
    argv = ["--latent-dim", "2", "--out", args.out, "--backend", args.backend, "--no-progress"]
    if args.quick:
        data = write_blobs(os.path.join(args.out, "data"))
        return argv + ["--epochs", "1", *network_flags(args.architecture, 64), "--batch-size", "32", "--data-dir", data]
    argv += ["--epochs", str(args.epochs)]
    if args.architecture == "conv":
        argv += ["--architecture", "conv"]
    if args.dataset:
        argv += ["--dataset", args.dataset]
    if args.data_dir:
        argv += ["--data-dir", args.data_dir]
    return argv


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    refuse_beside_quick(parser, args, ("--epochs", "--dataset", "--data-dir"))
    status = train.main(train_arguments(args))
    if status != 0:
        return status
    history = load_checkpoint(os.path.join(args.out, "checkpoint.npz")).extra["history"]
    results = {key: [record[key] for record in history] for key in ("test_loss", "test_loss_mean", "train_loss")}
    print("test loss per epoch (nats per image): " + " ".join(f"{loss:.2f}" for loss in results["test_loss"]))
    write_json(args, "manifold", results)
    for name in ("manifold.png", "latent_scatter.png"):
        print(f"wrote {os.path.join(args.out, name)}")
    print(f"evaluate it with: python -m minivae.evaluate {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(quiet_on_closed_pipe(main))
