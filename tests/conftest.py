"""Shared test set-up: the two tiers, Hypothesis profiles, the backend fixture every test body runs on,
pictures drawn only where they are tested, and a session-wide tiny dataset.

Tiers: ``python -m pytest -q`` (the README's command) deselects the tests marked ``slow`` (setup.cfg's
addopts) and runs in about a minute on two cores; ``python -m pytest -q -m slow`` runs the rest. CI
(.ci/run) runs both, so every check runs somewhere.
"""

import io
import os

import matplotlib.image
import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from device_guard import backend_by_name
from minivae import plots
from minivae.backend import cupy_unavailable_reason
from minivae.fileio import atomic_write
from tiny_data import write_dataset

# Hypothesis profiles, all without a deadline (shared 2-core runners time erratically).
# `fast`: the default tier on a developer's machine (the README's command). `dev`: the slow tier there
# (-m slow). `ci`: both tiers when CI is set, so CI tries more examples than any local run.
# `thorough`: for hunting rare failures by hand: pytest --hypothesis-profile=thorough
_QUIET = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("fast", max_examples=10, **_QUIET)
settings.register_profile("dev", max_examples=25, **_QUIET)
settings.register_profile("ci", max_examples=50, **_QUIET)
settings.register_profile("thorough", max_examples=1000, **_QUIET)
settings.load_profile("ci" if os.environ.get("CI") else "fast")


def pytest_configure(config):
    """Outside CI, a run that selects the slow tier gets the `dev` profile (an explicit
    --hypothesis-profile wins: Hypothesis's plugin loads it after this conftest is imported)."""
    if not os.environ.get("CI") and config.getoption("hypothesis_profile", None) is None and \
            "not slow" not in config.getoption("markexpr", ""):
        settings.load_profile("dev")


# numpy, with its fused Numba kernels (minivae/kernels/cpu.py); the device guard (NumPy refusing
# what CuPy refuses: host/device mixing, implicit conversion), so every test body also proves the
# device path on a machine without a GPU; and cupy itself wherever it imports and sees a GPU.
# The guard runs twice: with the plain xp code (the reference every fused kernel is checked against,
# and the CPU's path without Numba or with MINIVAE_KERNELS=plain) and with the fused-kernel path
# CuPy takes. So both paths run every backend-parametrised test body, with no backend added.
# Tiers: NumPy in the default tier (every backward against finite differences); the two guards in
# the slow tier (test_kernels.py checks every fused kernel against the plain code in the default tier).
BACKEND_NAMES = ["numpy", "device-guard", "device-guard-fused"] + (
    ["cupy"] if cupy_unavailable_reason() is None else [])
BACKEND_PARAMS = [pytest.param(name, marks=pytest.mark.slow) if name.startswith("device-guard") else name
                  for name in BACKEND_NAMES]


@pytest.fixture(params=BACKEND_PARAMS, scope="session")
def make_backend(request):
    """A factory ``make_backend(dtype="float64", seed=0)`` for each available backend."""
    return backend_by_name(request.param)


# ------------------------------------------------------------------------------------------- pictures
# Drawing a run's PNGs costs about half a second an epoch, and most tests that train are not about
# pictures. For the whole session, the figure builders of minivae.plots are replaced by stand-ins
# that only take their arrays to the host the way matplotlib would (np.asarray: so a device array
# still fails on the device guard), and the writer puts a fixed 1x1 PNG through the real atomic
# write. Every save_* function keeps its own checks, and every file a run writes is still there.
# test_plots.py, and any test marked `pictures`, get the real drawing.

_BUILDERS = ("_image_figure", "_loss_figure", "_scatter_figure")


def _tiny_png():
    handle = io.BytesIO()
    matplotlib.image.imsave(handle, np.zeros((1, 1)), format="png", cmap="gray")
    return handle.getvalue()


def _no_figure(*arrays, **kwargs):
    for value in arrays + tuple(kwargs.values()):
        if value is not None and not isinstance(value, str):
            np.asarray(value)
    return None


@pytest.fixture(scope="session", autouse=True)
def _no_drawing():
    png = _tiny_png()

    def save_figure(fig, path):
        with atomic_write(path, "wb") as handle:
            handle.write(png)

    patch = pytest.MonkeyPatch()
    real = {name: getattr(plots, name) for name in _BUILDERS + ("_save_figure",)}
    for name in _BUILDERS:
        patch.setattr(plots, name, _no_figure)
    patch.setattr(plots, "_save_figure", save_figure)
    yield real
    patch.undo()


@pytest.fixture(autouse=True)
def _real_pictures_where_tested(request, _no_drawing, monkeypatch):
    if request.node.get_closest_marker("pictures") or request.path.name == "test_plots.py":
        for name, function in _no_drawing.items():
            monkeypatch.setattr(plots, name, function)


# -------------------------------------------------------------------------- tiny datasets and runs

@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory):
    """The default tiny dataset of tests/tiny_data.py (128 + 32 images of 8x8), written once. Read only."""
    return write_dataset(tmp_path_factory.mktemp("tiny") / "data")
