"""Figures of a trained VAE: reconstructions, prior samples, loss curves, the 2-D manifold, latent means.

A host-side leaf: every input is a host NumPy array (call ``backend.to_numpy`` first), and the only
minivae module imported is ``fileio``. Figures are built with matplotlib's object API
(``matplotlib.figure.Figure`` on a ``FigureCanvasAgg``), never with ``pyplot``: no global figure
registry, no backend switch, safe to call from any thread. Nothing keeps a reference to a figure
once its ``save_*`` call returns, so a figure is freed as soon as it is written and memory does not
grow over many epochs. Every file is written atomically with ``fileio.atomic_write``: a crash or an
exception while drawing or saving leaves the previous file at ``path`` as it was, and no temporary
file behind.

Each ``save_*`` function is split in two: ``_*_figure`` (or a ``*_grid`` helper) builds the picture
from arrays, and ``_save_figure`` writes it. Images are drawn in grey with ``vmin=0, vmax=1``,
nearest-neighbour, without ticks, at an integer number of screen pixels per image pixel.

matplotlib and scipy.special are imported where a figure or a quantile is first needed, not with
this module: together they take longer to import than the rest of minivae, and
``python -m minivae.train --help`` or a run's first training step need neither.
"""

import numpy as np

from minivae.fileio import atomic_write

_DPI = 100
_TARGET_PIXELS = 800  # the longer side of a drawn image grid is scaled up to about this many pixels


# --------------------------------------------------------------------------------------------------
# Pure NumPy: tiling images into one picture
# --------------------------------------------------------------------------------------------------

def image_grid(images, nrow, pad=2, pad_value=0.0):
    """Tile images into one 2-D array, ``nrow`` images per row (like torchvision's ``make_grid``).

    images: (N, H, W) array, values in [0, 1] (not checked; drawn later with vmin=0, vmax=1).
    nrow: images per row of the grid, >= 1. When N < nrow the grid is N images wide, as in
        torchvision; when N is not a multiple of nrow the last row is completed with blank tiles.
    pad: pixels of padding between tiles and around the border, >= 0.
    pad_value: the value of padding and blank tiles (0 = black, torchvision's default).

    Returns a new (rows * (H + pad) + pad, cols * (W + pad) + pad) array, with cols = min(nrow, N)
    and rows = ceil(N / cols). Image k sits at row k // cols, column k % cols, its top-left pixel at
    (pad + (k // cols) * (H + pad), pad + (k % cols) * (W + pad)). The dtype is the images' dtype
    when it is floating, float64 otherwise.
    """
    images = np.asarray(images)
    if images.ndim != 3:
        raise ValueError(f"image_grid: expected images of shape (N, H, W), got shape {images.shape}")
    n, height, width = images.shape
    if n == 0 or height == 0 or width == 0:
        raise ValueError(f"image_grid: need at least one non-empty image, got shape {images.shape}")
    nrow = _positive_int("nrow", nrow)
    pad = _int_at_least("pad", pad, 0)
    cols = min(nrow, n)
    rows = -(-n // cols)
    dtype = images.dtype if np.issubdtype(images.dtype, np.floating) else np.float64
    grid = np.full((rows * (height + pad) + pad, cols * (width + pad) + pad), pad_value, dtype=dtype)
    for k in range(n):
        top = pad + (k // cols) * (height + pad)
        left = pad + (k % cols) * (width + pad)
        grid[top:top + height, left:left + width] = images[k]
    return grid


def reconstruction_grid(originals, reconstructions, image_shape, n=8, pad=2):
    """The classic PyTorch VAE picture as an array: n originals on top, their reconstructions below.

    originals, reconstructions: (N, D) rows with D = H * W (row k of one matches row k of the other).
    image_shape: (H, W). n: how many pairs; the first min(n, N) rows of each are used.
    Returns the (2 * (H + pad) + pad, m * (W + pad) + pad) grid, m = min(n, N).
    """
    image_shape = _image_shape(image_shape)
    originals = _rows("originals", originals, image_shape)
    reconstructions = _rows("reconstructions", reconstructions, image_shape)
    n = min(_positive_int("n", n), len(originals), len(reconstructions))
    if n == 0:
        raise ValueError("save_reconstructions: originals and reconstructions need at least one row each")
    images = np.concatenate([originals[:n], reconstructions[:n]]).reshape((2 * n,) + image_shape)
    return image_grid(images, nrow=n, pad=pad)


def manifold_latents(n=20):
    """The latent points of the AEVB paper's Figure 4: a grid at the prior's quantiles.

    Returns z of shape (n * n, 2), float64, in the row-major order of the picture: row i (counted
    from the top) and column j hold z = (q[j], q[n - 1 - i]) with q = norm.ppf(linspace(0.05, 0.95, n)),
    so z1 increases to the right and z2 increases upward. The end points 0 and 1 are excluded
    (their quantiles are infinite).
    """
    from scipy.special import ndtri  # the standard normal quantile function, scipy.stats.norm.ppf

    n = _int_at_least("n", n, 2)
    q = ndtri(np.linspace(0.05, 0.95, n))
    z1, z2 = np.meshgrid(q, q[::-1])  # z1[i, j] = q[j], z2[i, j] = q[n - 1 - i]
    return np.stack([z1.ravel(), z2.ravel()], axis=1)


def manifold_grid(decode, image_shape, n=20):
    """Decode ``manifold_latents(n)`` and tile the means into one (n * H, n * W) picture, no padding.

    decode: a callable mapping a (n * n, 2) float64 host array of latent points to (n * n, D) host
        decoder means in [0, 1], D = H * W (e.g. ``lambda z: to_numpy(model.decode(to_device(z)))``).
    image_shape: (H, W).
    """
    image_shape = _image_shape(image_shape)
    n = _int_at_least("n", n, 2)
    z = manifold_latents(n)
    means = np.asarray(decode(z))
    if means.shape != (n * n, image_shape[0] * image_shape[1]):
        raise ValueError(
            f"save_manifold: decode must return ({n * n}, {image_shape[0] * image_shape[1]}) means for "
            f"{n * n} latent points and image_shape {image_shape}, got shape {means.shape}"
        )
    return image_grid(means.reshape((n * n,) + image_shape), nrow=n, pad=0)


# --------------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------------

def save_reconstructions(path, originals, reconstructions, image_shape, n=8):
    """Save the first n test images (top row) above their reconstructions (bottom row) as a PNG.

    originals, reconstructions: (N, D) host arrays of rows in [0, 1], D = H * W; for a Bernoulli
        decoder the reconstructions are the decoder means sigmoid(logits).
    image_shape: (H, W), e.g. (28, 28). n: images per row (at most N are shown).
    """
    grid = reconstruction_grid(originals, reconstructions, image_shape, n=n)
    _save_figure(_image_figure(grid, title="top: test images; bottom: reconstructions"), path)


def save_samples(path, samples, image_shape, nrow=8):
    """Save a grid of decoder means for z ~ N(0, I) as a PNG (64 rows -> the usual 8 x 8 grid).

    samples: (N, D) host array of rows in [0, 1], D = H * W. image_shape: (H, W).
    nrow: images per row of the grid.
    """
    image_shape = _image_shape(image_shape)
    samples = _rows("samples", samples, image_shape)
    if len(samples) == 0:
        raise ValueError("save_samples: samples has no rows")
    grid = image_grid(samples.reshape((len(samples),) + image_shape), nrow=nrow)
    _save_figure(_image_figure(grid, title="decoder means for z ~ N(0, I)"), path)


def save_loss_curves(path, epochs, train_loss, test_loss, test_loss_mean=None):
    """Save train and test loss per sample (negative ELBO, nats) against epoch as a PNG.

    epochs, train_loss, test_loss: 1-D host arrays (or lists) of one length E >= 1.
    test_loss_mean: optional (E,) test loss with z = mu instead of a sampled z (drawn dashed).
    NaN entries (an epoch without evaluation) leave a gap in their curve.
    """
    _save_figure(_loss_figure(epochs, train_loss, test_loss, test_loss_mean), path)


def save_manifold(path, decode, image_shape, n=20):
    """Save the AEVB paper's Figure 4: decoder means on an n x n grid of the 2-D prior's quantiles.

    decode: a callable mapping a (n * n, 2) float64 host array of latent points to (n * n, D) host
        means in [0, 1], D = H * W. The points are z = (norm.ppf(u1), norm.ppf(u2)) for u1, u2 in
        linspace(0.05, 0.95, n); see ``manifold_latents`` for their order. In the picture z1
        increases to the right and z2 increases upward, as in the paper.
    image_shape: (H, W). n: points per axis, >= 2.
    If decode raises, the exception propagates and the file at ``path`` is left as it was.
    """
    grid = manifold_grid(decode, image_shape, n=n)
    _save_figure(_image_figure(grid, title="learned 2-D manifold", xlabel="z1 \u2192", ylabel="z2 \u2192"), path)


def save_latent_scatter(path, means, labels=None, class_names=None):
    """Save a scatter plot of 2-D latent means (e.g. the encoder's mu on the test set) as a PNG.

    means: (N, 2) host array. labels: optional (N,) host array of class labels; each distinct label
    gets its own colour and its own entry in the legend. Without labels every point has one colour.
    class_names: optional sequence of strings, ``class_names[k]`` naming the integer label k (e.g.
    Fashion-MNIST's "T-shirt/top" for label 0); the legend then shows the names instead of the
    numbers. Every label must then be an integer in [0, len(class_names)).
    """
    _save_figure(_scatter_figure(means, labels, class_names), path)


# --------------------------------------------------------------------------------------------------
# Figure builders (return an unsaved Figure) and the one place a figure is written
# --------------------------------------------------------------------------------------------------

def _new_figure(width_in, height_in):
    """A Figure on its own Agg canvas: no pyplot, no global state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def _image_figure(grid, title=None, xlabel=None, ylabel=None):
    """Draw a 2-D grid in grey (vmin=0, vmax=1, no ticks) at an integer pixel scale, with margins
    only for the labels that are given."""
    height, width = grid.shape
    scale = max(1, _TARGET_PIXELS // max(height, width))
    image_w, image_h = width * scale / _DPI, height * scale / _DPI
    top = 0.35 if title else 0.05
    bottom = 0.3 if xlabel else 0.05
    left = 0.3 if ylabel else 0.05
    right = 0.05
    fig_w, fig_h = image_w + left + right, image_h + top + bottom
    fig = _new_figure(fig_w, fig_h)
    ax = fig.add_axes([left / fig_w, bottom / fig_h, image_w / fig_w, image_h / fig_h])
    ax.imshow(grid, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest", aspect="equal")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=10)
    if xlabel:
        ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    return fig


def _loss_figure(epochs, train_loss, test_loss, test_loss_mean=None):
    """The loss-curve Figure (see ``save_loss_curves``)."""
    curves = {"epochs": epochs, "train_loss": train_loss, "test_loss": test_loss}
    if test_loss_mean is not None:
        curves["test_loss_mean"] = test_loss_mean
    curves = {name: np.asarray(values, dtype=np.float64) for name, values in curves.items()}
    shapes = {name: values.shape for name, values in curves.items()}
    length = len(curves["epochs"]) if curves["epochs"].ndim == 1 else -1
    if length < 1 or any(shape != (length,) for shape in shapes.values()):
        described = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise ValueError(f"save_loss_curves: expected 1-D arrays of one length >= 1, got shapes {described}")
    fig = _new_figure(6.4, 4.0)
    ax = fig.add_subplot()
    x = curves["epochs"]
    ax.plot(x, curves["train_loss"], marker="o", markersize=3, label="train")
    ax.plot(x, curves["test_loss"], marker="o", markersize=3, label="test")
    if "test_loss_mean" in curves:
        ax.plot(x, curves["test_loss_mean"], marker="o", markersize=3, linestyle="--", label="test, z = mu")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # whole epochs: no tick at 1.5
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss per sample (nats)")
    ax.set_title("negative ELBO per sample")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def _scatter_figure(means, labels=None, class_names=None):
    """The latent-scatter Figure (see ``save_latent_scatter``)."""
    means = np.asarray(means)
    if means.ndim != 2 or means.shape[1] != 2 or len(means) == 0:
        raise ValueError(f"save_latent_scatter: expected (N, 2) latent means, got shape {means.shape}")
    fig = _new_figure(7.2 if labels is not None else 6.0, 5.0)
    ax = fig.add_subplot()
    style = dict(s=4, alpha=0.7, linewidths=0)
    if labels is None:
        if class_names is not None:
            raise ValueError("save_latent_scatter: class_names given without labels; pass the labels too")
        ax.scatter(means[:, 0], means[:, 1], color="tab:blue", **style)
    else:
        labels = np.asarray(labels)
        if labels.shape != (len(means),):
            raise ValueError(
                f"save_latent_scatter: expected ({len(means)},) labels for {len(means)} means, "
                f"got shape {labels.shape}"
            )
        classes = np.unique(labels)
        names = _class_names(classes, class_names)
        colours = _class_colours(len(classes))
        for colour, label, name in zip(colours, classes, names):
            rows = labels == label
            ax.scatter(means[rows, 0], means[rows, 1], color=colour, label=name, **style)
        ax.legend(title="class", loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
                  markerscale=3, fontsize=8, title_fontsize=9, frameon=False)
    ax.set_xlabel("z1 (posterior mean)")
    ax.set_ylabel("z2 (posterior mean)")
    ax.set_title("latent means")
    ax.set_aspect("equal", adjustable="datalim")
    fig.tight_layout()
    return fig


def _class_names(classes, class_names):
    """The legend entry of each distinct label: ``class_names[label]`` when names are given, else the
    label itself as text."""
    if class_names is None:
        return [str(c) for c in classes]
    class_names = [str(name) for name in class_names]
    integers = np.issubdtype(classes.dtype, np.integer)
    unnamed = [c for c in classes.tolist() if not (integers and 0 <= c < len(class_names))]
    if unnamed:
        raise ValueError(
            f"save_latent_scatter: class_names has {len(class_names)} names, so every label must be an "
            f"integer in [0, {len(class_names)}); these labels have no name: {unnamed[:5]}"
        )
    return [class_names[c] for c in classes]


def _class_colours(k):
    """k distinct colours: tab10 up to 10 classes, tab20 up to 20, viridis beyond."""
    import matplotlib

    if k <= 20:
        cmap = matplotlib.colormaps["tab10" if k <= 10 else "tab20"]
        return [cmap(i) for i in range(k)]
    return [matplotlib.colormaps["viridis"](i / (k - 1)) for i in range(k)]


def _save_figure(fig, path):
    """Write ``fig`` as a PNG to ``path`` atomically (old file kept and temp file removed on error)."""
    with atomic_write(path, "wb") as handle:
        fig.savefig(handle, format="png")


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------

def _int_at_least(name, value, low):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _positive_int(name, value):
    return _int_at_least(name, value, 1)


def _image_shape(image_shape):
    try:
        shape = tuple(image_shape)
    except TypeError:
        shape = None
    if shape is None or len(shape) != 2 or not all(
        isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0 for s in shape
    ):
        raise ValueError(f"image_shape must be (H, W) with two positive integers, got {image_shape!r}")
    return (int(shape[0]), int(shape[1]))


def _rows(name, rows, image_shape):
    """Check that ``rows`` is an (N, H * W) array: "expected (N, 784) rows for image_shape (28, 28)"."""
    rows = np.asarray(rows)
    d = image_shape[0] * image_shape[1]
    if rows.ndim != 2 or rows.shape[1] != d:
        got = f"(N, {rows.shape[1]})" if rows.ndim == 2 else f"shape {rows.shape}"
        raise ValueError(f"{name}: expected (N, {d}) rows for image_shape {image_shape}, got {got}")
    return rows
