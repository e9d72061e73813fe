"""Backend selection and its errors."""

import builtins

import numpy as np
import pytest

from minivae import backend as backend_module
from minivae.backend import get_backend
from minivae.errors import BackendUnavailable


def _hide_cupy(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "cupy" or name.startswith("cupy."):
            raise ImportError("No module named 'cupy'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)


def test_cupy_without_cupy_is_one_clear_line(monkeypatch):
    _hide_cupy(monkeypatch)
    with pytest.raises(BackendUnavailable) as info:
        get_backend("cupy")
    message = str(info.value)
    assert "\n" not in message
    assert "CuPy is not installed" in message
    assert "pip install minivae[cuda12]" in message and "--backend numpy" in message


def test_auto_falls_back_to_numpy_without_cupy(monkeypatch):
    _hide_cupy(monkeypatch)
    assert get_backend("auto").name == "numpy"


def test_cupy_without_a_device_says_so(monkeypatch):
    monkeypatch.setattr(backend_module, "cupy_unavailable_reason", lambda: "CuPy is installed but no CUDA device is visible")
    with pytest.raises(BackendUnavailable, match="no CUDA device is visible"):
        get_backend("cupy")
    assert get_backend("auto").name == "numpy"


def test_unknown_backend_and_dtype_are_refused():
    with pytest.raises(ValueError, match="unknown backend 'jax'"):
        get_backend("jax")
    with pytest.raises(ValueError, match="dtype must be one of"):
        get_backend("numpy", dtype="float16")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_random_draws_have_the_backend_dtype_and_follow_the_seed(make_backend, dtype):
    a, b, c = make_backend(dtype, 1), make_backend(dtype, 1), make_backend(dtype, 2)
    for draw in ("standard_normal", "uniform"):
        x, y, z = (getattr(be, draw)((3, 4)) for be in (a, b, c))
        assert x.dtype == np.dtype(dtype)
        assert (x == y).all() and not (x == z).all()
    assert sorted(a.to_numpy(a.permutation(10)).tolist()) == list(range(10))


def test_rng_state_round_trip(make_backend):
    """The state, restored, gives the same draws again (CuPy's: the cuRAND device state)."""
    backend = make_backend("float32", 3)
    state = backend.rng_state()
    first = backend.standard_normal((5,))
    backend.set_rng_state(state)
    assert (backend.standard_normal((5,)) == first).all()
