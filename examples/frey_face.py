"""The AEVB paper's Frey Face experiment at laptop scale: a VAE with a Gaussian decoder on real-valued pixels.

Trains ``python -m minivae.train --dataset frey --likelihood gaussian`` (1765 training and 200 test
frames of 28x20 pixels, 200 hidden units and batches of 100 as in the paper, a 2-D latent space so
that the run also draws the Frey Face manifold of Figure 4), then evaluates the test set with
``python -m minivae.evaluate`` (ELBO and importance-weighted log p(x)).

The real data is one file, ``frey_rawface.mat`` (from Sam Roweis' data page), which the training
command downloads when it can. Without it (no network) the example says so and exits with status 1:
put the file in a folder and pass ``--data-dir``. ``--synthetic`` runs the same pipeline on made-up
Frey-like faces (a .mat file of the same layout, written under ``--out``): a test of the pipeline,
not a reproduction of the paper.

    python examples/frey_face.py --data-dir DIR      # the real data; 25 s to 1.5 min on 2 CPU cores
    python examples/frey_face.py --synthetic         # made-up faces, same size
    python examples/frey_face.py --quick             # made-up faces, 300 frames, 2 epochs: seconds

The decoder's variance is fixed (``--variance``, here 0.01: a pixel standard deviation of 0.1), where
the paper learns it, so the numbers are not the paper's. A density of real values can exceed 1:
log p(x) of these 560-pixel images is positive, in the hundreds of nats.
"""

import json
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
from example_data import FREY_FILE, network_flags, write_frey_like

from minivae import evaluate, train
from minivae.cli import quiet_on_closed_pipe
from minivae.data import DATASETS, load_dataset
from minivae.errors import DataError


def build_parser():
    parser = Parser(description="Train and evaluate a Gaussian-decoder VAE on Frey Face.")
    parser.add_argument("--data-dir", help=f"folder holding {FREY_FILE} (default: the cache, or a download)")
    parser.add_argument("--out", default=os.path.join("results", "frey"), help="run folder (a new one)")
    parser.add_argument("--epochs", type=count, default=50, help="epochs (default: 50)")
    parser.add_argument("--latent-dim", type=count, default=2, help="size of z (default: 2, draws the manifold)")
    parser.add_argument("--variance", type=float, default=0.01,
                        help="fixed variance of the Gaussian decoder, for pixels in [0, 1] (default: 0.01)")
    parser.add_argument("--iw-samples", type=count, default=5000, help="K for the evaluation (default: 5000)")
    parser.add_argument("--backend", default="numpy", help="numpy, cupy or auto (default: numpy)")
    parser.add_argument("--architecture", choices=("mlp", "conv"), default="mlp",
                        help="mlp, or conv: the convolutional VAE (default: mlp)")
    parser.add_argument("--synthetic", action="store_true",
                        help=f"made-up Frey-like faces in OUT/data/{FREY_FILE} instead of the real file")
    parser.add_argument("--quick", action="store_true",
                        help="--synthetic with 300 frames, 2 epochs and K = 100: seconds")
    add_json_flag(parser, "frey_face")
    return parser


def frey_data_dir(args):
    """The folder to train from: the synthetic one written now, or --data-dir (None: the loader's search).
    Raises DataError, saying what to do, when the real file cannot be found or downloaded."""
    if args.synthetic or args.quick:
        return write_frey_like(os.path.join(args.out, "data"), count=300 if args.quick else 1965)
    load_dataset("frey", data_dir=args.data_dir, log=lambda message: None)  # found or downloadable?
    return args.data_dir


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    refuse_beside_quick(parser, args, ("--epochs", "--iw-samples", "--data-dir"))
    if not args.variance > 0:
        parser.error(f"--variance must be a number > 0, got {args.variance}")
    try:
        data_dir = frey_data_dir(args)
    except DataError as error:
        url = DATASETS["frey"].mirrors[0] + FREY_FILE
        print(f"frey_face: the Frey Face data is not available here, so the real experiment cannot run.\n"
              f"{error}\n"
              f"Fetch {url} on a machine with network access, put it in a folder and pass --data-dir FOLDER; "
              f"or run with --synthetic to try the pipeline on made-up faces.", file=sys.stderr)
        return 1
    epochs, iw_samples = (2, 100) if args.quick else (args.epochs, args.iw_samples)
    argv = ["--dataset", "frey", "--likelihood", "gaussian", "--variance", str(args.variance),
            *network_flags(args.architecture, 200), "--batch-size", "100", "--latent-dim", str(args.latent_dim), "--epochs", str(epochs),
            "--out", args.out, "--backend", args.backend, "--no-progress"]
    status = train.main(argv + (["--data-dir", data_dir] if data_dir else []))
    if status != 0:
        return status
    status = evaluate.main([args.out, "--iw-samples", str(iw_samples), "--backend", args.backend, "--no-progress"])
    if status == 0:
        with open(os.path.join(args.out, "evaluation.json")) as handle:
            write_json(args, "frey_face", json.load(handle))
    return status


if __name__ == "__main__":
    sys.exit(quiet_on_closed_pipe(main))
