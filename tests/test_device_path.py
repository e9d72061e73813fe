"""The device path, proven without a GPU: training, test evaluation, pictures and checkpoints run on
the device guard (NumPy refusing what CuPy refuses), with a bounded number of explicit transfers in
the training loop, and give bit for bit the NumPy backend's results."""

import json
import math

import numpy as np
import pytest

import device_guard
from minivae import train
from minivae.backend import get_backend


MLP, CONV = ("--hidden", "12"), ("--architecture", "conv", "--channels", "2", "3")


def _train(data_dir, out, backend_factory, monkeypatch, extra_flags=(), model_flags=MLP):
    """A 2-epoch run on ``data_dir`` (tiny_data's default: 128 + 32 images of 8x8) into ``out``."""
    monkeypatch.setattr(train, "get_backend", backend_factory)
    flags = ["--data-dir", str(data_dir), "--out", str(out), "--epochs", "2",
             "--batch-size", "16", *model_flags, "--latent-dim", "2", "--log-interval", "2", "--quiet",
             *extra_flags]
    assert train.main(flags) == 0
    return out


def _guard_backend(name, dtype, seed):
    return device_guard.GuardBackend(dtype=dtype, seed=seed)


def _fused_guard_backend(name, dtype, seed):
    return device_guard.GuardBackend(dtype=dtype, seed=seed, fused=True)


@pytest.mark.filterwarnings("ignore:MINIVAE_KERNELS=plain")
def test_training_on_the_device_guard_matches_numpy_bit_for_bit(tiny_data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("MINIVAE_KERNELS", "plain")  # the guard runs the plain xp code: so must NumPy here
    guard_out = _train(tiny_data_dir, tmp_path / "guard", _guard_backend, monkeypatch, ["--binarize", "dynamic"])
    numpy_out = _train(tiny_data_dir, tmp_path / "numpy", get_backend, monkeypatch, ["--binarize", "dynamic"])
    for out in (guard_out, numpy_out):
        for name in ("checkpoint.npz", "metrics.csv", "loss.png", "sample_2.png", "reconstruction_2.png",
                     "manifold.png", "latent_scatter.png"):
            assert (out / name).is_file(), name
    guard_metrics = np.genfromtxt(guard_out / "metrics.csv", delimiter=",", names=True)
    numpy_metrics = np.genfromtxt(numpy_out / "metrics.csv", delimiter=",", names=True)
    for column in ("train_loss", "test_loss", "test_loss_mean"):
        assert (guard_metrics[column] == numpy_metrics[column]).all(), column
    with np.load(guard_out / "checkpoint.npz") as a, np.load(numpy_out / "checkpoint.npz") as b:
        for key in a.files:
            if key.startswith("param/"):
                assert (a[key] == b[key]).all(), key


@pytest.mark.pictures  # the one in-process run that draws its PNGs for real: matplotlib gets host arrays
def test_resume_on_the_device_guard(tiny_data_dir, tmp_path, monkeypatch):
    out = _train(tiny_data_dir, tmp_path / "run", _guard_backend, monkeypatch)
    config = json.loads((out / "config.json").read_text())
    assert config["epochs"] == 2
    assert train.main(["--resume", str(out), "--epochs", "3", "--quiet"]) == 0
    for name in ("sample_3.png", "reconstruction_3.png", "loss.png", "manifold.png", "latent_scatter.png"):
        header = (out / name).read_bytes()[:24]  # the PNG signature, then the IHDR chunk: width, height
        assert header.startswith(b"\x89PNG") and int.from_bytes(header[16:20], "big") > 100, name  # drawn, not stubbed


@pytest.mark.parametrize(("backend_factory", "model_flags"), [
    pytest.param(_guard_backend, MLP, id="plain-mlp"),
    pytest.param(_fused_guard_backend, MLP, id="fused-mlp", marks=pytest.mark.slow),
    pytest.param(_guard_backend, CONV, id="plain-conv", marks=pytest.mark.slow),
    pytest.param(_fused_guard_backend, CONV, id="fused-conv", marks=pytest.mark.slow)])
def test_the_training_loop_moves_no_data_and_reads_back_once_per_log_interval(tiny_data_dir, tmp_path, monkeypatch,
                                                                            backend_factory, model_flags):
    """The MLP and the conv VAE, with CuPy's fused kernels (col2im_gather among them) and without (the
    default tier runs the first; the slow tier the others)."""
    counts = []
    original = train.Trainer._train

    def counted(self, epoch):
        device_guard.TRANSFERS.clear()
        result = original(self, epoch)
        counts.append(dict(device_guard.TRANSFERS))
        return result

    monkeypatch.setattr(train.Trainer, "_train", counted)
    _train(tiny_data_dir, tmp_path / "run", backend_factory, monkeypatch, model_flags=model_flags)
    steps = math.ceil(128 / 16)
    assert len(counts) == 2  # one per epoch
    for count in counts:
        assert count.get("to_device", 0) == 0
        # one read of the step losses per --log-interval (2 steps), and the epoch's sums
        assert count.get("to_host", 0) <= math.ceil(steps / 2) + 1


def test_the_guard_refuses_what_cupy_refuses():
    backend = device_guard.GuardBackend("float32", 0)
    device = backend.standard_normal((2, 3))
    host = np.ones((2, 3), dtype=np.float32)
    with pytest.raises(TypeError, match="host"):
        device + host
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.asarray(device)
    with pytest.raises(TypeError):
        np.exp(device)
    with pytest.raises(TypeError, match="host"):
        backend.xp.matmul(device, host.T)
    assert isinstance(backend.to_numpy(device), np.ndarray)
    assert float(device.sum()) == pytest.approx(float(backend.to_numpy(device).sum()))
