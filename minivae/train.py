"""``python -m minivae.train``: train a VAE on a dataset, with progress, metrics, pictures and checkpoints.

Everything a run writes goes into ``--out`` (default ``results/``): ``config.json``, ``metrics.csv``,
``reconstruction_<epoch>.png``, ``sample_<epoch>.png``, ``loss.png``, ``checkpoint.npz`` after every
epoch and, with ``--latent-dim 2``, ``manifold.png`` and ``latent_scatter.png``. Every file is written
atomically. ``--resume DIR`` continues the run in DIR up to ``--epochs`` (the total), exactly as if it
had never stopped. The training loop itself (``Trainer``) is minivae/train_loop.py.
"""

import io
import json
import os
import sys

import numpy as np

from . import plots
from . import settings as table
from .backend import get_backend
from .checkpoint import CHECKPOINT_NAME, CONFIG_NAME, load_checkpoint, restore, save_checkpoint
from .cli import (Parser, UsageError, add_output_flags, add_setting_flags, dataset_label, given_settings,
                  positive_int, refuse_unused, run_command)
from .conv import check_image_shape
from .data import DATASETS, load_run_data, names_data
from .errors import CheckpointError, MinivaeError
from .fileio import atomic_write
from .interrupts import deferred_interrupts
from .model import VAE
from .optim import Adam
from .run_folder import merge, opened
from .safetensors_io import init_from, read_weights
from .train_loop import Trainer
from .train_ranks import check_same_model, main_on_ranks, run_folder, wants_ranks
from .version import __version__

METRICS_NAME = "metrics.csv"
METRICS_COLUMNS = ("epoch", "train_loss", "train_reconstruction", "train_kl", "test_loss", "test_loss_mean",
                   "test_reconstruction", "test_kl", "seconds", "samples_per_second", "train_objective", "kl_weight")
# train_loss is always the negative ELBO (reconstruction + KL, beta = 1); train_objective is what was
# optimised (the same with beta = 1 and the ELBO; eq. (42) or eq. (43) otherwise); kl_weight is beta_t
# at the epoch's last step.
INIT_FLAGS_FIX = ("pass the flags of the model the file holds (--hidden, --latent-dim, --architecture, ...), or "
                  "another --init-from file")

SETTINGS = ("dataset", "data_dir", "data_file", "test_fraction", "backend", "dtype", "epochs", "batch_size", "lr", "latent_dim", "n_samples",
            "hidden", "decoder_hidden", "architecture", "channels", "activation", "likelihood", "variance",
            "objective", "beta", "kl_warmup", "binarize", "seed", "init_from")
"""The settings of a run (minivae/settings.py), in the order of ``--help``: the classic PyTorch example's
defaults where it has one. Those not given take their defaults (or, with --resume, the saved run's)."""
DEFAULTS = table.defaults(SETTINGS)
CHANGEABLE_ON_RESUME = table.resumable(SETTINGS)  # every other setting must match the saved run


def build_parser():
    parser = Parser(
        prog="python -m minivae.train", description="Train a VAE whose every gradient is written by hand.")
    add_setting_flags(parser, SETTINGS)
    add = parser.add_argument
    add("--no-download", action="store_true", help="never download a dataset (as MINIVAE_NO_DOWNLOAD=1 does)")
    add("--out", default="results", help="folder for the run's files (default: results/)")
    add("--resume", metavar="DIR", help="continue the run in DIR up to --epochs")
    add("--distributed", action="store_true",
        help="data-parallel training on the ranks an MPI launcher started: mpiexec -n N python -m minivae.train "
             "--distributed ... (the same run as one process, to summation order; the mpi extra)")
    add("--log-interval", type=positive_int, default=10,
        help="steps between progress-bar updates and, on a GPU, between checks for NaN (default: 10)")
    add_output_flags(parser)
    return parser


PROGRAM = "minivae-train"


def main(argv=None):
    """The command: 0 when done, 1 with one line on stderr for a failure, 2 for a flag the chosen model
    does not use, 130 for Ctrl-C (wherever it lands: minivae/interrupts.py). With --distributed, on
    each rank of an MPI launcher (minivae/train_ranks.py)."""
    if wants_ranks(argv):
        return main_on_ranks(PROGRAM, lambda program, comm: _command(program, argv, comm))
    return _command(PROGRAM, argv, None)


def _command(program, argv, comm):
    return run_command(program, build_parser(), lambda args: run(args, comm), _what_is_kept, "the --out folder",
                       _memory_hint, argv)


def _memory_hint(args):
    """The flags that the memory of a training step grows with, for the model the command line chose."""
    return f"choose a smaller {table.memory_flags({**DEFAULTS, **given_settings(args, SETTINGS)})}"


def _what_is_kept(args):
    """After Ctrl-C: the checkpoint the run can be resumed from, if it has one."""
    if args is None:
        return "nothing was written"
    out = args.resume or args.out
    if os.path.isfile(os.path.join(out, CHECKPOINT_NAME)):
        return f"{os.path.join(out, CHECKPOINT_NAME)} holds the last complete epoch; continue with --resume {out}"
    return "no epoch was complete, so there is no checkpoint to resume from"


def run(args, comm=None):
    """Train as the parsed command line says; returns the metrics history (a list of dicts). ``comm``:
    this rank's Communicator with --distributed (minivae/distributed.py), else None."""
    if args.distributed and comm is None:
        raise UsageError("--distributed: write the flag in full, so that each rank joins the others before it starts")
    root = comm is None or comm.is_root
    log = (lambda message: None) if args.quiet or not root else print
    out = args.resume if args.resume else args.out
    given, loaded = given_settings(args, SETTINGS), None
    for name in ("data_dir", "data_file", "init_from"):  # a resume may run from another folder
        if name in given:
            given[name] = os.path.abspath(given[name])
    if not args.resume:  # before anything is created: what the command line alone rules out
        _refuse_conflicts(given)
        dataset = given.get("dataset")
        refuse_unused({**DEFAULTS, **given, "likelihood": given.get("likelihood") or (
            DATASETS[dataset].likelihood_hint if dataset else None)}, given)
        if "init_from" in given:  # a file that does not fit the model is refused before --out is made
            loaded = _checked_init_data(given, args, log)
    elif "init_from" in given:
        raise UsageError(f"--init-from starts a new run from a file's weights, and --resume {args.resume} "
                         f"continues a run from its checkpoint: drop one of them")
    with run_folder(opened, out, bool(args.resume), comm) as saved:
        settings = merge(given, saved, SETTINGS, args.resume)
        _refuse_conflicts(settings, args.resume)
        dataset = loaded if loaded is not None else _load_data(settings, args, log)
        settings = _completed(settings, dataset, given)
        backend = get_backend(settings["backend"], dtype=settings["dtype"], seed=settings["seed"])
        if comm is not None:
            backend = comm.attach(backend)  # on a GPU: this rank's, and NCCL joined
        model = _build_model(settings, dataset, backend)
        if settings["init_from"] is not None and not os.path.exists(os.path.join(out, CHECKPOINT_NAME)):
            init_from(model, settings["init_from"])  # also when a resume starts over from epoch 1
            log(f"starting from the weights of {settings['init_from']}")
        optimizer = Adam(model.parameters(), lr=settings["lr"])
        history, first_epoch = _resume_state(out, model, optimizer, dataset, log) if args.resume else ([], 1)
        done = first_epoch - 1
        if done > settings["epochs"]:
            raise MinivaeError(f"--resume {out}: the run has already trained {done} epochs, more than "
                               f"--epochs {settings['epochs']} (the total); pass --epochs {done + 1} or more "
                               f"to train it further")
        if done == settings["epochs"]:
            log(f"{out}: the run has already trained all {done} epochs; pass --epochs {done + 1} or more "
                f"to train it further")
            return history
        if root:
            with atomic_write(os.path.join(out, CONFIG_NAME), "w") as handle:
                json.dump({**settings, "version": __version__}, handle, indent=2)
        trainer = Trainer(model, optimizer, dataset, settings, out, args, log, comm)
        # A NaN or inf is reported by the Trainer as one NumericalError; NumPy's warnings about it
        # (overflow in exp, invalid value in matmul, ...) would only spill lines onto stderr.
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            for epoch in range(first_epoch, settings["epochs"] + 1):
                history.append(trainer.run_epoch(epoch, history))
                check_same_model(comm, model, epoch)
                if root:
                    _write_epoch_outputs(trainer, epoch, history)
        # The explorer page is a command of its own (2 MB and a pass over the test set per page), so
        # a run says how to make it rather than writing one after every run.
        log(f"explore the latent space in a browser: python -m minivae.explore {out}")
        return history


def _refuse_conflicts(settings, resumed=None):
    """UsageError for two flags that each name the data: --data-file with --dataset or --data-dir, both
    given, or (``resumed``: the run's folder) the saved run's --data-file and a --data-dir given now."""
    if settings.get("data_file") is None:
        return
    for name in ("dataset", "data_dir"):
        if settings.get(name) is not None:
            flag = table.option(name)
            if resumed:
                raise UsageError(f"--resume {resumed}: the run trains on --data-file "
                                 f"{settings['data_file']}, which {flag} would replace: drop {flag}")
            raise UsageError(f"--data-file names the data, and so does {flag}: drop one of them")


def _checked_init_data(given, args, log):
    """The data of a fresh run with --init-from, after checking that the file's tensors fit the model the
    command line describes (a missing or extra tensor, a wrong shape or dtype, a non-finite value: one
    CheckpointError naming the tensor), so that nothing of the run is written for a file that does not.
    The model's sizes come from the data (D, the image shape), hence the data are loaded here, once, and
    its config from a NumPy model of the run's dtype, thrown away (the run builds its own on its backend)."""
    settings = merge(given, None, SETTINGS)
    dataset = _load_data(settings, args, log)
    settings = _completed(settings, dataset, given)
    host = get_backend("numpy", dtype=settings["dtype"], seed=settings["seed"])
    read_weights(settings["init_from"], config=_build_model(settings, dataset, host).config, fix=INIT_FLAGS_FIX)
    return dataset


def _completed(settings, dataset, given):
    """The run's settings with what its data decide (the dataset the default chose; the likelihood, when
    none was given; the share of --data-file held out), a given setting its model does not use refused
    (UsageError), and those it does not use dropped (what config.json records)."""
    settings = dict(settings)
    if not names_data(settings):
        settings["dataset"] = dataset.name  # the one the default chose (with --data-dir alone: none)
    if settings["likelihood"] is None:
        settings["likelihood"] = dataset.likelihood_hint
    if settings["data_file"] is not None:
        settings["test_fraction"] = dataset.test_fraction  # the share held out (None: the file's x_test)
    refuse_unused(settings, given)
    return table.used(settings)


def _load_data(settings, args, log):
    dataset = load_run_data(settings, download=not args.no_download, log=log)
    n_train = dataset.train_x.shape[0]
    if settings["batch_size"] > n_train:
        raise MinivaeError(f"--batch-size {settings['batch_size']} is larger than the {n_train} training examples "
                           f"of {dataset_label(dataset, settings['dataset'])}; pass --batch-size {n_train} or less")
    return dataset


def _build_model(settings, dataset, backend):
    """The VAE the settings describe, for images of the dataset's size (the conv VAE: sides multiples of 4)."""
    if settings["architecture"] == "conv":
        try:
            check_image_shape(dataset.image_shape)
        except ValueError as error:
            raise MinivaeError(f"{dataset_label(dataset, settings['dataset'])}: {error}") from None
    model_settings = {name: value for name, value in settings.items() if table.SETTINGS[name].model}
    return VAE(input_dim=dataset.train_x.shape[1], image_shape=dataset.image_shape, backend=backend,
               **model_settings)


def _resume_state(out, model, optimizer, dataset, log):
    """Load the run's last complete checkpoint into model and optimizer; returns (history, next epoch).
    A run killed before its first checkpoint starts again from epoch 1."""
    path = os.path.join(out, CHECKPOINT_NAME)
    if not os.path.exists(path):
        log(f"{out}: no checkpoint yet; starting the run from epoch 1")
        return [], 1
    checkpoint = load_checkpoint(path)
    trained_on, here = checkpoint.config.get("input_dim"), model.config["input_dim"]
    if trained_on != here:
        height, width = dataset.image_shape
        raise CheckpointError(f"--resume {out}: the run was trained on images of {trained_on} pixels, but "
                              f"{dataset.source} holds {height}x{width} = {here}; pass the --data-dir of the "
                              f"dataset it was trained on, or start a new run with another --out")
    if not restore(checkpoint, model, optimizer):
        log(f"{path}: the random generator's state cannot be restored on the {model.backend.name} backend; "
            f"the resumed run will not repeat the uninterrupted one bit for bit")
    history = checkpoint.extra.get("history")
    if not isinstance(history, list) or len(history) != checkpoint.epoch:
        raise CheckpointError(f"{path}: its metrics history does not match its epoch {checkpoint.epoch}; "
                              f"start a new run with another --out")
    log(f"resuming {out} after epoch {checkpoint.epoch}")
    return history, checkpoint.epoch + 1


def _write_epoch_outputs(trainer, epoch, history):
    """Metrics, pictures, then the checkpoint (last, so a checkpoint implies its epoch's files)."""
    model, backend, out = trainer.model, trainer.backend, trainer.out
    image_shape = trainer.dataset.image_shape
    _write_metrics(os.path.join(out, METRICS_NAME), history)
    with deferred_interrupts():  # a Ctrl-C inside matplotlib's drawing is raised after it
        originals = trainer.test_x[:8]
        plots.save_reconstructions(os.path.join(out, f"reconstruction_{epoch}.png"), backend.to_numpy(originals),
                                   backend.to_numpy(model.reconstruct(originals)), image_shape)
        plots.save_samples(os.path.join(out, f"sample_{epoch}.png"), backend.to_numpy(model.decode(trainer.fixed_z)),
                           image_shape)
        plots.save_loss_curves(os.path.join(out, "loss.png"), [r["epoch"] for r in history],
                               [r["train_loss"] for r in history], [r["test_loss"] for r in history],
                               [r["test_loss_mean"] for r in history])
        if model.latent_dim == 2:
            def decode(z):
                return backend.to_numpy(model.decode(backend.to_device(z)))

            plots.save_manifold(os.path.join(out, "manifold.png"), decode, image_shape)
            means = backend.to_numpy(model.encode(trainer.test_x[:5000])[0])
            labels = trainer.dataset.test_y[:5000] if trainer.dataset.test_y is not None else None
            plots.save_latent_scatter(os.path.join(out, "latent_scatter.png"), means, labels,
                                      trainer.dataset.class_names)
    save_checkpoint(os.path.join(out, CHECKPOINT_NAME), model, trainer.optimizer, epoch=epoch,
                    extra={"history": history, "settings": trainer.settings})


def _write_metrics(path, history):
    """metrics.csv: one row per epoch, rewritten whole (atomically) from the history."""
    text = io.StringIO()
    text.write(",".join(METRICS_COLUMNS) + "\n")
    for record in history:
        # a run resumed from before a column existed has no value for it in its first epochs
        text.write(",".join(repr(record[column]) if column in record else "" for column in METRICS_COLUMNS) + "\n")
    with atomic_write(path, "w") as handle:
        handle.write(text.getvalue())


if __name__ == "__main__":
    sys.exit(main())
