"""``python -m minivae.explore RUN [--out FILE]``: one self-contained HTML page to look at a run's latent space.

The page (default ``RUN/explorer.html``) holds the run's decoder, its weights embedded as base64
float32 with the model config, and runs it in JavaScript (``explore_page/decoder.js``): the decoded
image under the pointer follows it live over a latent plane on which a few hundred test images'
posterior means are drawn, coloured by class. Sliders set every coordinate of z, an interpolation
strip decodes 8 points on the line between two picked test images' means, and the run's settings and
final test losses are listed. ``window.minivae.decode(z)`` is the function the page draws with.

The plane: for J = 2, z itself, with the prior's quantile lines (as ``manifold.png``); for J > 2, the
plane through the mean m of the test means mu_i along their two principal directions u, v (the first
two right singular vectors of the centred means): z = m + a u + b v, and a test point sits at
a_i = (mu_i - m) . u, b_i = (mu_i - m) . v (its projection).

Nothing on the page touches the network (no URL, no fetch, no CDN): it opens from disk, offline.
"""

import base64
import csv
import json
import math
import os
import re
import sys

import numpy as np
from scipy.special import ndtri

from .checkpoint import CONFIG_NAME, checkpoint_path, load_model, read_run_settings
from .cli import Parser, add_output_flags, positive_int, run_command
from .conv import ConvTranspose2d, Reshape
from .data import load_run_data, names_data
from .errors import DataError, MinivaeError
from .fileio import atomic_write
from .layers import Linear, ReLU, Sigmoid, Tanh
from .likelihoods import Bernoulli, ContinuousBernoulli, Gaussian, LearnedVarianceGaussian

PROGRAM = "minivae-explore"
PAGE_NAME = "explorer.html"
METRICS_NAME = "metrics.csv"  # what minivae.train names its per-epoch metrics (train.METRICS_NAME)
TEMPLATE_FOLDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "explore_page")
SCRIPTS = ("decoder.js", "page.js")  # inlined in this order: the decoder, then the page that draws with it
DEFAULT_POINTS = 300
POINT_SEED = 0  # which test images are embedded: a fixed draw, so a page is rebuilt the same
GRID_QUANTILES = np.linspace(0.05, 0.95, 10)  # the J = 2 plane's grid lines, at the prior's quantiles
METRIC_COLUMNS = ("epoch", "test_loss", "test_loss_mean", "test_reconstruction", "test_kl")

ACTIVATION_KINDS = {ReLU: "relu", Tanh: "tanh", Sigmoid: "sigmoid"}
MEAN_KINDS = {
    Bernoulli: "sigmoid",                         # sigmoid(l)
    ContinuousBernoulli: "continuous-bernoulli",  # eq. (38): sigmoid(l) - g(l), g of eq. (37)
    Gaussian: "identity",                         # the decoder outputs the mean y
    LearnedVarianceGaussian: "first-half",        # [y | r] (eq. (39)): the mean is y
}
"""How the page turns the decoder's output into the mean of p(x|z), per likelihood class."""


def build_parser():
    parser = Parser(prog=PROGRAM, description="Write one self-contained HTML page (no network access) where "
                    "the run's decoder runs in the browser: a latent plane with the test points, the decoded "
                    "image under the pointer, sliders for z, an interpolation strip, the run's settings and losses.")
    parser.add_argument("run", metavar="RUN", help="the --out folder of a minivae.train run (or its checkpoint.npz)")
    parser.add_argument("--out", metavar="FILE", help=f"the page to write (default: RUN/{PAGE_NAME})")
    parser.add_argument("--points", type=positive_int, default=DEFAULT_POINTS,
                        help=f"how many test images (and their posterior means) the page holds (default: {DEFAULT_POINTS})")
    parser.add_argument("--no-download", action="store_true", help="never download the run's dataset")
    add_output_flags(parser)
    return parser


def main(argv=None):
    """The command: 0 when the page is written, 1 with one line on stderr for a failure, 130 for Ctrl-C."""
    return run_command(PROGRAM, build_parser(), write_page, lambda args: "no page was written", "the output folder",
                       "pass a smaller --points", argv)


def write_page(args):
    """Build the page of ``args.run`` and write it (atomically) to ``args.out``; returns its path."""
    log = (lambda message: None) if args.quiet else print
    out = args.out or os.path.join(args.run if os.path.isdir(args.run) else os.path.dirname(args.run), PAGE_NAME)
    html = build_page(args.run, points=args.points, download=not args.no_download, log=log)
    with atomic_write(out, "w") as handle:
        handle.write(html)
    log(f"wrote {out} ({os.path.getsize(out) / 1e6:.1f} MB): open it in a browser, it needs no network")
    return out


def build_page(run, points=DEFAULT_POINTS, download=True, log=print):
    """The HTML text of the explorer page of ``run`` (a run folder or a checkpoint file)."""
    model = load_model(run)
    folder = os.path.dirname(os.path.abspath(checkpoint_path(run)))
    settings = _run_settings(folder)
    test = test_points(model, settings, folder, points, download, log)
    weights = WeightBlob()
    data = {
        "config": {**settings, **model.config, "image_shape": test["image_shape"]},
        "decoder": {"layers": decoder_layers(model.decoder, weights, model.backend.to_numpy),
                    "mean": mean_kind(model.likelihood), "input_dim": model.config["input_dim"],
                    "weights": weights.base64()},
        "plane": latent_plane(test["means"], model.latent_dim),
        "points": {key: value for key, value in test.items() if key not in ("means", "image_shape")},
        "metrics": final_metrics(os.path.join(folder, METRICS_NAME)),
        "run": os.path.basename(folder),
    }
    data["points"]["means"] = _base64(test["means"].astype("<f4"))
    return render(data)


class WeightBlob:
    """The decoder's parameters laid end to end in one little-endian float32 array; ``add`` returns
    where one starts (in float32 values), ``base64`` the whole array as text."""

    def __init__(self):
        self.arrays, self.size = [], 0

    def add(self, array):
        array = np.ascontiguousarray(array, dtype="<f4").ravel()
        offset = self.size
        self.arrays.append(array)
        self.size += array.size
        return offset

    def base64(self):
        return _base64(np.concatenate(self.arrays) if self.arrays else np.zeros(0, "<f4"))


def decoder_layers(decoder, weights, to_numpy):
    """The decoder's layers as the page runs them (``explore_page/decoder.js``), in order; each
    parameter goes into ``weights`` and the layer keeps its offset there.

    linear: ``y = x W + b``, W (in, out) row-major (eq. (6)); relu / tanh / sigmoid: elementwise;
    reshape: the shape the flat values are read as next (C, H, W); conv-transpose: eq. (32), W (in,
    out, kh, kw) as PyTorch's, ``y[o, s h - p + i, s w - p + j] += x[c, h, w] W[c, o, i, j]`` plus b[o].
    """
    layers = []
    for layer in decoder.layers:
        kind = type(layer)
        if kind in ACTIVATION_KINDS:
            layers.append({"kind": ACTIVATION_KINDS[kind]})
        elif kind is Reshape:
            layers.append({"kind": "reshape", "shape": list(layer.shape)})
        elif kind in (Linear, ConvTranspose2d):
            W, b = (to_numpy(p.data) for p in layer.parameters())
            entry = {"kind": "linear" if kind is Linear else "conv-transpose", "name": layer.name,
                     "W": weights.add(W), "b": weights.add(b), "in": int(W.shape[0]), "out": int(W.shape[1])}
            if kind is ConvTranspose2d:
                entry.update(kernel=list(W.shape[2:]), stride=layer.stride, padding=layer.padding)
            layers.append(entry)
        else:
            raise MinivaeError(f"the explorer cannot run a {kind.__name__} layer ({layer.name}) in JavaScript; "
                               f"it knows Linear, ConvTranspose2d, Reshape, ReLU, Tanh and Sigmoid")
    return layers


def mean_kind(likelihood):
    """The name the page knows ``likelihood``'s mean by (``MEAN_KINDS``)."""
    kind = MEAN_KINDS.get(type(likelihood))
    if kind is None:
        raise MinivaeError(f"the explorer does not know the mean of the {type(likelihood).__name__} likelihood")
    return kind


def test_points(model, settings, folder, count, download, log):
    """``count`` test images of the run's dataset (read as minivae.evaluate reads it: binarized as
    training binarized it), a fixed draw spread over the whole test set: their posterior means
    (count, J) (eq. (4)), the images as uint8 (base64), their labels and the class names."""
    if not names_data(settings):
        raise DataError(f"{os.path.join(folder, CONFIG_NAME)}: the run's settings do not name its dataset; "
                        f"the explorer draws that dataset's test images")
    dataset = load_run_data(settings, download=download, log=log)
    if dataset.test_x.shape[1] != model.config["input_dim"]:
        raise DataError(f"{dataset.source}: its images have {dataset.test_x.shape[1]} values, the run's model "
                        f"{model.config['input_dim']}; the run's config.json must name the data it trained on")
    total = dataset.test_x.shape[0]
    pick = np.sort(np.random.default_rng(POINT_SEED).choice(total, size=min(count, total), replace=False))
    x = dataset.test_x[pick]
    backend = model.backend
    means = backend.to_numpy(model.encode(backend.to_device(x.astype(backend.dtype)))[0]).astype(np.float64)
    labels = None if dataset.test_y is None else [int(label) for label in dataset.test_y[pick]]
    images = np.rint(np.clip(x, 0, 1) * 255).astype(np.uint8)
    return {"means": means, "images": _base64(images), "labels": labels, "indices": [int(i) for i in pick],
            "class_names": list(dataset.class_names) if dataset.class_names else None,
            "image_shape": list(model.config.get("image_shape") or dataset.image_shape), "dataset": dataset.name}


def latent_plane(means, latent_dim):
    """The plane the page draws (module docstring): its centre (J,), unit directions u, v (J,), the
    half-width ``extent`` of the square shown in plane coordinates, the grid lines (the prior's
    quantiles for J = 2, none otherwise) and the slider range of every z coordinate."""
    J = latent_dim
    if J == 2:
        center, u, v = np.zeros(2), np.array([1.0, 0.0]), np.array([0.0, 1.0])
        grid = [float(q) for q in ndtri(GRID_QUANTILES)]
    else:
        center = means.mean(axis=0)
        directions = np.linalg.svd(means - center, full_matrices=True)[2]  # rows: principal directions
        u = directions[0]
        v = directions[1] if J > 1 else np.zeros(J)
        grid = []
    a, b = (means - center) @ u, (means - center) @ v
    floor = float(ndtri(0.975)) if J == 2 else 1.0
    extent = 1.1 * max(floor, float(np.abs(a).max(initial=0)), float(np.abs(b).max(initial=0)))
    corners = [center + sa * extent * u + sb * extent * v for sa in (-1, 1) for sb in (-1, 1)]
    reach = max(3.0, float(np.abs(means).max(initial=0)), float(np.abs(corners).max()))
    return {"center": center.tolist(), "u": u.tolist(), "v": v.tolist(), "extent": extent, "grid": grid,
            "slider": math.ceil(reach * 2) / 2, "kind": "z" if J == 2 else "principal"}


def final_metrics(path):
    """The last row of the run's ``metrics.csv`` (``METRIC_COLUMNS`` that it has), or None when there
    is no such file or it holds no complete row."""
    try:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
    except OSError:
        return None
    values = {}
    for column in METRIC_COLUMNS:
        try:
            values[column] = float(rows[-1][column])
        except (IndexError, KeyError, TypeError, ValueError):
            continue
    return values or None


def render(data):
    """The page: ``explore_page/page.html`` with its style sheet, its scripts and ``data`` (JSON, with
    every ``<`` escaped so that no text in it can close the script element) put in."""
    fills = {"STYLE": _template("style.css"), "SCRIPT": "\n".join(_template(name) for name in SCRIPTS),
             "DATA": json.dumps(data, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")}
    # one pass: a marker inside what is put in (a class name, a setting) is left as it is
    return re.sub(r"/\*(STYLE|SCRIPT|DATA)\*/", lambda marker: fills[marker.group(1)], _template("page.html"))


def _template(name):
    with open(os.path.join(TEMPLATE_FOLDER, name), encoding="utf-8") as handle:
        return handle.read()


def _run_settings(folder):
    """The run's config.json (its dataset, how it was binarized, what it trained with)."""
    path = os.path.join(folder, CONFIG_NAME)
    if not os.path.isfile(path):
        raise DataError(f"{folder}: holds no {CONFIG_NAME}; the explorer needs it to find the run's test set: "
                        f"pass the --out folder of a minivae.train run")
    return read_run_settings(path, "pass the --out folder of a minivae.train run")


def _base64(array):
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii")


if __name__ == "__main__":
    sys.exit(main())
