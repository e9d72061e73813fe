"""``python -m minivae.export RUN --format safetensors [--out FILE]``: a run's weights for the ecosystem.

Writes the trained VAE of RUN (a run folder, a checkpoint, or a safetensors file) as a safetensors
file with PyTorch's names and layouts (minivae/safetensors_io.py; README.md, "Export and import"):
the default MLP loads into the classic PyTorch example's ``VAE`` with ``strict=True``. The model's
config, the run's config.json and the minivae version go into the file's metadata, so that
``minivae.load_model(FILE)`` rebuilds the model from the file alone.
"""

import os
import sys

from .checkpoint import CONFIG_NAME, load_model, read_run_settings
from .cli import Parser, run_command
from .errors import CheckpointError
from .safetensors_io import SUFFIX, save_safetensors

PROGRAM = "minivae-export"
FORMATS = ("safetensors",)
DEFAULT_NAME = "model" + SUFFIX


def build_parser():
    parser = Parser(prog="python -m minivae.export", description=(
        "Write a trained VAE's weights as a safetensors file that PyTorch (and NumPy, JAX) reads: the "
        "classic PyTorch example's names (fc1, fc21, fc22, fc3, fc4) for a one-hidden-layer MLP, "
        "nn.Sequential names otherwise; the config in its metadata."))
    add = parser.add_argument
    add("run", metavar="RUN", help="a training run's --out folder, a checkpoint .npz file, or a .safetensors file")
    add("--format", choices=FORMATS, default="safetensors", help="file format (default: safetensors)")
    add("--out", metavar="FILE", help=f"where to write it, a name ending in {SUFFIX} (default: {DEFAULT_NAME} "
                                      f"in the run folder, or beside the checkpoint)")
    add("--quiet", action="store_true", help="print only errors")
    add("--debug", action="store_true", help="show the traceback of an error")
    return parser


def export(run, out=None):
    """Write RUN's model to ``out`` (default: ``model.safetensors`` beside its checkpoint); returns
    (the path written, its size in bytes)."""
    run = os.fspath(run)
    folder = run if os.path.isdir(run) else os.path.dirname(os.path.abspath(run))
    out = out if out is not None else os.path.join(folder, DEFAULT_NAME)
    if not out.endswith(SUFFIX):
        raise CheckpointError(f"--out {out}: the file name must end in {SUFFIX} (minivae.load_model reads a file by "
                         f"its suffix); add {SUFFIX}")
    model = load_model(run)
    config_file = os.path.join(folder, CONFIG_NAME)
    settings = None
    if not run.endswith(SUFFIX) and os.path.isfile(config_file):
        settings = read_run_settings(config_file, "the folder's config.json and checkpoint must come from one run")
    return out, save_safetensors(model, out, settings)


def main(argv=None):
    """The command: 0 when the file is written; 1 with one line on stderr for a failure; 130 for Ctrl-C."""
    def body(args):
        path, size = export(args.run, args.out)
        if not args.quiet:
            print(f"wrote {path} ({size} bytes)")

    return run_command(PROGRAM, build_parser(), body, lambda args: "nothing was written", "the folder",
                       "the model does not fit in memory", argv)


if __name__ == "__main__":
    sys.exit(main())
