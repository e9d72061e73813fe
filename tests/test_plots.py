"""Tests of minivae.plots: exact grid layouts, manifold latents, PNG output, atomic writes, validation."""

import ast
import gc
import io
import os
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from matplotlib.figure import Figure
from scipy.stats import norm

from minivae import plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SHAPE = (6, 5)  # small images keep the tests fast; D = 30
D = SHAPE[0] * SHAPE[1]


def _read_png(path):
    """Check the PNG signature and size, and return the decoded (height, width, channels) image."""
    data = Path(path).read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) < 1_000_000
    image = matplotlib.image.imread(io.BytesIO(data), format="png")
    assert image.ndim == 3 and image.shape[0] > 0 and image.shape[1] > 0
    return image


def _leftovers(folder):
    """Files other than the expected PNGs (e.g. temporary files of atomic_write)."""
    return sorted(name for name in os.listdir(folder) if not name.endswith(".png"))


def _rows(n, seed=0):
    return np.random.default_rng(seed).random((n, D))


# ---- image_grid ------------------------------------------------------------------------------------

def test_image_grid_tiny_literal_layout_with_padding_and_blank_tile():
    images = np.array([0.1, 0.2, 0.3]).reshape(3, 1, 1)
    expected = np.array([
        [0.0, 0.0, 0.0, 0.0, 0.0],
        [0.0, 0.1, 0.0, 0.2, 0.0],
        [0.0, 0.0, 0.0, 0.0, 0.0],
        [0.0, 0.3, 0.0, 0.0, 0.0],
        [0.0, 0.0, 0.0, 0.0, 0.0],
    ])
    np.testing.assert_array_equal(plots.image_grid(images, nrow=2, pad=1), expected)


def test_image_grid_positions_of_every_pixel():
    n, h, w, nrow, pad = 5, 2, 3, 3, 2
    images = (np.arange(n * h * w, dtype=np.float64) + 1).reshape(n, h, w) / 100
    grid = plots.image_grid(images, nrow=nrow, pad=pad)
    assert grid.shape == (2 * (h + pad) + pad, 3 * (w + pad) + pad) == (10, 17)
    covered = np.zeros(grid.shape, dtype=bool)
    for k in range(n):
        top, left = pad + (k // nrow) * (h + pad), pad + (k % nrow) * (w + pad)
        np.testing.assert_array_equal(grid[top:top + h, left:left + w], images[k])
        covered[top:top + h, left:left + w] = True
    assert np.all(grid[~covered] == 0.0)  # padding and the one blank tile (row 1, column 2)
    assert covered.sum() == n * h * w


def test_image_grid_without_padding_is_a_plain_tiling():
    images = np.random.default_rng(1).random((6, 2, 3))
    grid = plots.image_grid(images, nrow=3, pad=0)
    expected = np.block([[images[0], images[1], images[2]], [images[3], images[4], images[5]]])
    np.testing.assert_array_equal(grid, expected)


def test_image_grid_pad_value_fewer_images_than_nrow_and_integer_input():
    grid = plots.image_grid(np.ones((2, 1, 1), dtype=np.uint8), nrow=8, pad=1, pad_value=0.5)
    # Two images, nrow 8: the grid is two images wide (as torchvision's make_grid).
    np.testing.assert_array_equal(grid, [[0.5] * 5, [0.5, 1.0, 0.5, 1.0, 0.5], [0.5] * 5])
    assert grid.dtype == np.float64
    assert plots.image_grid(np.zeros((1, 2, 2), dtype=np.float32), nrow=1).dtype == np.float32


@pytest.mark.parametrize(
    "images, kwargs, message",
    [
        (np.zeros((4, 4)), {"nrow": 2}, r"\(N, H, W\).*\(4, 4\)"),
        (np.zeros((0, 2, 2)), {"nrow": 2}, r"\(0, 2, 2\)"),
        (np.zeros((2, 2, 2)), {"nrow": 0}, "nrow"),
        (np.zeros((2, 2, 2)), {"nrow": 2, "pad": -1}, "pad"),
        (np.zeros((2, 2, 2)), {"nrow": 1.5}, "nrow"),
    ],
)
def test_image_grid_rejects_bad_input(images, kwargs, message):
    with pytest.raises(ValueError, match=message):
        plots.image_grid(images, **kwargs)


# ---- reconstructions and samples ------------------------------------------------------------------

def test_reconstruction_grid_puts_originals_on_top_and_reconstructions_below():
    originals, reconstructions = _rows(10, seed=1), _rows(10, seed=2)
    grid = plots.reconstruction_grid(originals, reconstructions, SHAPE, n=4, pad=2)
    h, w = SHAPE
    assert grid.shape == (2 * (h + 2) + 2, 4 * (w + 2) + 2)
    for k in range(4):
        left = 2 + k * (w + 2)
        np.testing.assert_array_equal(grid[2:2 + h, left:left + w], originals[k].reshape(SHAPE))
        np.testing.assert_array_equal(grid[4 + h:4 + 2 * h, left:left + w], reconstructions[k].reshape(SHAPE))


def test_reconstruction_grid_uses_at_most_the_rows_given():
    grid = plots.reconstruction_grid(_rows(3), _rows(5), SHAPE, n=8, pad=0)
    assert grid.shape == (2 * SHAPE[0], 3 * SHAPE[1])


def test_save_reconstructions_writes_png(tmp_path):
    path = tmp_path / "reconstructions.png"
    plots.save_reconstructions(path, _rows(16, seed=1), _rows(16, seed=2), SHAPE, n=8)
    _read_png(path)
    assert _leftovers(tmp_path) == []


def test_save_samples_writes_png_of_an_8x8_grid(tmp_path, monkeypatch):
    drawn = []
    real = plots._image_figure
    monkeypatch.setattr(plots, "_image_figure", lambda grid, **kw: drawn.append(grid) or real(grid, **kw))
    samples = _rows(64)
    path = tmp_path / "samples.png"
    plots.save_samples(str(path), samples, SHAPE)
    _read_png(path)
    (grid,) = drawn
    h, w = SHAPE
    assert grid.shape == (8 * (h + 2) + 2, 8 * (w + 2) + 2)
    np.testing.assert_array_equal(grid[2 + 7 * (h + 2):, 2 + 7 * (w + 2):][:h, :w], samples[63].reshape(SHAPE))


def test_image_figure_is_grey_unit_range_without_ticks():
    fig = plots._image_figure(np.full((4, 4), 0.5), title="t", xlabel="x", ylabel="y")
    (ax,) = fig.axes
    (image,) = ax.get_images()
    assert image.get_clim() == (0.0, 1.0)
    assert image.get_cmap().name == "gray"
    assert list(ax.get_xticks()) == [] and list(ax.get_yticks()) == []
    assert (ax.get_title(), ax.get_xlabel(), ax.get_ylabel()) == ("t", "x", "y")


# ---- loss curves ------------------------------------------------------------------------------------

def test_loss_figure_axes_labels_legend_and_data():
    epochs, train, test, test_mu = [1, 2, 3], [200.0, 150.0, 120.0], [190.0, 140.0, 125.0], [185.0, 139.0, 121.0]
    fig = plots._loss_figure(epochs, train, test, test_mu)
    (ax,) = fig.axes
    assert ax.get_xlabel() == "epoch"
    assert ax.get_ylabel() == "loss per sample (nats)"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["train", "test", "test, z = mu"]
    for line, values in zip(ax.get_lines(), [train, test, test_mu]):
        np.testing.assert_array_equal(line.get_xdata(), epochs)
        np.testing.assert_array_equal(line.get_ydata(), values)
    fig = plots._loss_figure(epochs, train, test)
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["train", "test"]


@pytest.mark.parametrize("n_epochs", [1, 2, 3, 7, 50])
def test_loss_curve_ticks_are_whole_epochs(n_epochs):
    epochs = np.arange(1, n_epochs + 1)
    fig = plots._loss_figure(epochs, 100 + 50 / epochs, 105 + 50 / epochs)
    (ax,) = fig.axes
    fig.canvas.draw()
    low, high = ax.get_xlim()
    ticks = [t for t in ax.get_xticks() if low <= t <= high]  # the ticks that are drawn
    assert ticks, "no tick on the epoch axis"
    assert all(t == round(t) for t in ticks), ticks
    labels = [label.get_text() for label in ax.get_xticklabels() if label.get_text()]
    assert labels and all(text.lstrip("\u2212-").isdigit() for text in labels), labels


@pytest.mark.parametrize("with_mean", [False, True])
def test_save_loss_curves_writes_png(tmp_path, with_mean):
    path = tmp_path / "loss.png"
    epochs = np.arange(1, 11)
    plots.save_loss_curves(path, epochs, 100 + 50 / epochs, 105 + 50 / epochs,
                           (103 + 50 / epochs) if with_mean else None)
    _read_png(path)
    plots.save_loss_curves(path, [1], [120.0], [121.0])  # one epoch is enough
    _read_png(path)


@pytest.mark.parametrize(
    "args",
    [
        ([1, 2, 3], [1.0, 2.0, 3.0], [1.0, 2.0], None),
        ([1, 2], [1.0, 2.0], [1.0, 2.0], [1.0]),
        ([], [], [], None),
        ([[1, 2]], [[1.0, 2.0]], [[1.0, 2.0]], None),
    ],
)
def test_save_loss_curves_rejects_mismatched_lengths(tmp_path, args):
    with pytest.raises(ValueError, match="shapes"):
        plots.save_loss_curves(tmp_path / "loss.png", *args)
    assert os.listdir(tmp_path) == []


# ---- manifold ----------------------------------------------------------------------------------------

def test_manifold_latents_are_normal_quantiles_with_z2_increasing_upward():
    n = 5
    z = plots.manifold_latents(n)
    q = norm.ppf(np.linspace(0.05, 0.95, n))
    assert z.shape == (n * n, 2) and z.dtype == np.float64
    np.testing.assert_allclose(np.unique(z[:, 0]), q, rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.unique(z[:, 1]), q, rtol=0, atol=1e-12)
    grid = z.reshape(n, n, 2)  # [row from the top, column]
    np.testing.assert_allclose(grid[0, :, 0], q, atol=1e-12)  # z1 increases to the right
    np.testing.assert_allclose(grid[:, 0, 1], q[::-1], atol=1e-12)  # z2 increases upward
    assert np.all(np.isfinite(z))


def test_save_manifold_decodes_the_quantile_grid_and_orients_it(tmp_path):
    n = 4
    calls = []

    def decode(z):
        calls.append(np.array(z, copy=True))
        # Each image is constant: white where z2 > 0 (upper half of the latent grid), black below.
        return np.repeat((z[:, 1:2] > 0).astype(np.float64), D, axis=1)

    path = tmp_path / "manifold.png"
    plots.save_manifold(path, decode, SHAPE, n=n)
    (z,) = calls
    assert z.shape == (n * n, 2)
    assert z.min() == pytest.approx(norm.ppf(0.05), abs=1e-12)
    assert z.max() == pytest.approx(norm.ppf(0.95), abs=1e-12)
    np.testing.assert_allclose(np.unique(z[:, 0]), norm.ppf(np.linspace(0.05, 0.95, n)), atol=1e-12)

    grid = plots.manifold_grid(decode, SHAPE, n=n)
    h, w = SHAPE
    assert grid.shape == (n * h, n * w)
    assert np.all(grid[: n * h // 2] == 1.0) and np.all(grid[n * h // 2:] == 0.0)

    # The written PNG shows the same picture: white above, black below (grey levels, RGB equal).
    image = _read_png(path)
    column = image.shape[1] // 2
    assert image[image.shape[0] // 4, column, :3] == pytest.approx([1.0, 1.0, 1.0])
    assert image[3 * image.shape[0] // 4, column, :3] == pytest.approx([0.0, 0.0, 0.0])


def test_save_manifold_rejects_decode_output_of_the_wrong_shape(tmp_path):
    with pytest.raises(ValueError, match=r"\(16, 30\).*got shape \(16, 29\)"):
        plots.save_manifold(tmp_path / "m.png", lambda z: np.zeros((len(z), D - 1)), SHAPE, n=4)
    with pytest.raises(ValueError, match="n must be an integer >= 2"):
        plots.save_manifold(tmp_path / "m.png", lambda z: np.zeros((len(z), D)), SHAPE, n=1)
    assert os.listdir(tmp_path) == []


# ---- latent scatter ---------------------------------------------------------------------------------

FASHION_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                 "Ankle boot")


def _legend_entries(fig):
    return [t.get_text() for t in fig.axes[0].get_legend().get_texts()]


def test_scatter_figure_with_labels_has_one_legend_entry_and_colour_per_class():
    rng = np.random.default_rng(0)
    means, labels = rng.normal(size=(50, 2)), rng.integers(0, 10, size=50)
    labels[:10] = np.arange(10)
    fig = plots._scatter_figure(means, labels)
    (ax,) = fig.axes
    assert _legend_entries(fig) == [str(k) for k in range(10)]
    assert len(ax.collections) == 10
    for k, points in enumerate(ax.collections):  # class k's points, in the legend's order
        np.testing.assert_array_equal(points.get_offsets(), means[labels == k])
    colours = np.concatenate([points.get_facecolors() for points in ax.collections])
    assert len(np.unique(colours, axis=0)) == 10


def test_scatter_legend_shows_class_names_when_given():
    labels = np.array([3, 0, 9, 3, 0], dtype=np.uint8)  # IDX label files hold uint8
    fig = plots._scatter_figure(np.random.default_rng(0).normal(size=(5, 2)), labels, class_names=FASHION_NAMES)
    assert _legend_entries(fig) == ["T-shirt/top", "Dress", "Ankle boot"]
    assert fig.axes[0].get_legend().get_title().get_text() == "class"


def test_save_latent_scatter_with_class_names_writes_png(tmp_path):
    path = tmp_path / "latent.png"
    plots.save_latent_scatter(path, np.random.default_rng(0).normal(size=(100, 2)), np.arange(100) % 10,
                              class_names=FASHION_NAMES)
    _read_png(path)


@pytest.mark.parametrize("labels, class_names, message", [
    (np.array([0, 1, 10]), FASHION_NAMES, r"10 names.*\[0, 10\).*no name: \[10\]"),
    (np.array([-1, 0]), FASHION_NAMES, r"no name: \[-1\]"),
    (np.array(["a", "b"]), FASHION_NAMES, r"no name: \['a', 'b'\]"),
    (None, FASHION_NAMES, "class_names given without labels"),
])
def test_scatter_rejects_labels_without_a_class_name(tmp_path, labels, class_names, message):
    means = np.zeros((2, 2)) if labels is None else np.zeros((len(labels), 2))
    with pytest.raises(ValueError, match=message):
        plots.save_latent_scatter(tmp_path / "latent.png", means, labels, class_names)
    assert os.listdir(tmp_path) == []


def test_scatter_figure_without_labels_uses_one_colour():
    fig = plots._scatter_figure(np.random.default_rng(0).normal(size=(30, 2)))
    (ax,) = fig.axes
    (points,) = ax.collections
    fig.canvas.draw()
    assert len(np.unique(points.get_facecolors(), axis=0)) == 1


@pytest.mark.parametrize("labels", [None, np.arange(100) % 10, np.array(["a", "b"] * 50)])
def test_save_latent_scatter_writes_png(tmp_path, labels):
    path = tmp_path / "latent.png"
    plots.save_latent_scatter(path, np.random.default_rng(0).normal(size=(100, 2)), labels)
    _read_png(path)


@pytest.mark.parametrize(
    "means, labels, message",
    [
        (np.zeros((5, 3)), None, r"\(N, 2\).*\(5, 3\)"),
        (np.zeros(10), None, r"\(N, 2\).*\(10,\)"),
        (np.zeros((5, 2)), np.zeros(4), r"\(5,\) labels.*\(4,\)"),
    ],
)
def test_save_latent_scatter_rejects_bad_shapes(tmp_path, means, labels, message):
    with pytest.raises(ValueError, match=message):
        plots.save_latent_scatter(tmp_path / "latent.png", means, labels)


# ---- validation of image rows ------------------------------------------------------------------------

def test_bad_row_width_names_the_expected_and_actual_shapes(tmp_path):
    message = r"expected \(N, 784\) rows for image_shape \(28, 28\), got \(N, 780\)"
    with pytest.raises(ValueError, match="originals: " + message):
        plots.save_reconstructions(tmp_path / "r.png", np.zeros((5, 780)), np.zeros((5, 784)), (28, 28))
    with pytest.raises(ValueError, match="reconstructions: " + message):
        plots.save_reconstructions(tmp_path / "r.png", np.zeros((5, 784)), np.zeros((5, 780)), (28, 28))
    with pytest.raises(ValueError, match="samples: " + message):
        plots.save_samples(tmp_path / "s.png", np.zeros((64, 780)), (28, 28))
    with pytest.raises(ValueError, match=r"samples: expected \(N, 784\).*got shape \(64, 28, 28\)"):
        plots.save_samples(tmp_path / "s.png", np.zeros((64, 28, 28)), (28, 28))
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("image_shape", [(28,), (28, 0), (28, 28, 1), (2.5, 2), 784, (True, 2)])
def test_bad_image_shape_is_rejected(tmp_path, image_shape):
    with pytest.raises(ValueError, match="image_shape"):
        plots.save_samples(tmp_path / "s.png", np.zeros((4, 784)), image_shape)


def test_empty_rows_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="at least one row"):
        plots.save_reconstructions(tmp_path / "r.png", np.zeros((0, D)), np.zeros((0, D)), SHAPE)
    with pytest.raises(ValueError, match="no rows"):
        plots.save_samples(tmp_path / "s.png", np.zeros((0, D)), SHAPE)


# ---- atomic writes ----------------------------------------------------------------------------------

def test_decode_raising_midway_leaves_the_previous_file_and_no_temp_files(tmp_path):
    path = tmp_path / "manifold.png"
    plots.save_manifold(path, lambda z: np.full((len(z), D), 0.5), SHAPE, n=3)
    before = path.read_bytes()

    def decode(z):
        raise RuntimeError("decoder failed")

    with pytest.raises(RuntimeError, match="decoder failed"):
        plots.save_manifold(path, decode, SHAPE, n=3)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["manifold.png"]


def test_savefig_failing_after_a_partial_write_leaves_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "samples.png"
    path.write_bytes(b"previous figure")

    def broken_savefig(self, handle, **kwargs):
        handle.write(PNG_SIGNATURE + b"half a picture")
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    with pytest.raises(OSError, match="disk full"):
        plots.save_samples(path, _rows(4), SHAPE)
    assert path.read_bytes() == b"previous figure"
    assert sorted(os.listdir(tmp_path)) == ["samples.png"]


def test_saving_replaces_an_existing_file(tmp_path):
    path = tmp_path / "samples.png"
    path.write_bytes(b"previous figure")
    plots.save_samples(path, _rows(4), SHAPE)
    _read_png(path)
    assert sorted(os.listdir(tmp_path)) == ["samples.png"]


# ---- the module's place in the design ----------------------------------------------------------------

def test_plots_imports_only_numpy_scipy_matplotlib_without_pyplot_and_fileio():
    tree = ast.parse(Path(plots.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module)
    allowed_roots = {"numpy", "scipy", "matplotlib", "minivae"}
    assert {name.split(".")[0] for name in imported} <= allowed_roots | {"contextlib", "os", "io"}
    assert not any(name == "matplotlib.pyplot" or name.startswith("cupy") for name in imported)
    assert {name for name in imported if name.startswith("minivae")} <= {"minivae.fileio"}


def test_no_figure_outlives_its_save_call(tmp_path):
    plots.save_samples(tmp_path / "s.png", _rows(4), SHAPE)
    plots.save_loss_curves(tmp_path / "l.png", [1, 2], [2.0, 1.0], [2.0, 1.5])
    gc.collect()
    assert not any(isinstance(obj, Figure) for obj in gc.get_objects())
    pyplot = sys.modules.get("matplotlib.pyplot")
    assert pyplot is None or pyplot.get_fignums() == []
