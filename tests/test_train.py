"""``python -m minivae.train`` end to end on tiny generated datasets (issue 4).

Most runs call ``train.main([...])`` in this process (fast); one runs the real command in a
subprocess. The faults (resume, crashes, NaN, bad input, locks) are in test_faults.py.
"""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from tiny_data import cli_args, command_stderr_lines, read_metrics, write_dataset

from minivae import plots, train
from minivae.checkpoint import load_checkpoint

TRAIN_COUNT, TEST_COUNT, ROWS, COLUMNS = 128, 32, 10, 12
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EXPECTED_COLUMNS = ["epoch", "train_loss", "train_reconstruction", "train_kl", "test_loss", "test_loss_mean",
                    "test_reconstruction", "test_kl", "seconds", "samples_per_second", "train_objective", "kl_weight"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """128 training and 32 test images of 10x12 pixels, MNIST-named IDX files."""
    return write_dataset(tmp_path_factory.mktemp("tiny") / "data", TRAIN_COUNT, TEST_COUNT, ROWS, COLUMNS)


@pytest.fixture(scope="module")
def baseline(data_dir, tmp_path_factory):
    """The history of a plain 2-epoch run, to tell that a flag changed something."""
    out = tmp_path_factory.mktemp("baseline") / "run"
    assert train.main(cli_args(data_dir, out, "--quiet")) == 0
    return load_checkpoint(out / "checkpoint.npz").extra["history"]


def is_png(path):
    with open(path, "rb") as handle:
        return handle.read(8) == PNG_SIGNATURE


@pytest.mark.slow
def test_command_end_to_end_writes_every_output(tmp_path):
    """The real command, no --dataset, on a --data-dir of gzipped 10x12 IDX files, latent dim 2."""
    data = write_dataset(tmp_path / "data", 64, 16, ROWS, COLUMNS, gz=True)
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "minivae.train",
                             *cli_args(data, out, epochs=2, latent_dim=2)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert command_stderr_lines(result.stderr) == []
    lines = result.stdout.splitlines()
    # stdout is a pipe, not a terminal: no progress bar, just one line per epoch, then the explorer's command
    assert "\r" not in result.stdout
    assert [line.split()[:2] for line in lines[:-1]] == [["epoch", "1/2"], ["epoch", "2/2"]]
    assert lines[-1] == f"explore the latent space in a browser: python -m minivae.explore {out}"
    expected = {"config.json", "metrics.csv", "loss.png", "checkpoint.npz", "manifold.png", "latent_scatter.png",
                "reconstruction_1.png", "reconstruction_2.png", "sample_1.png", "sample_2.png"}
    assert set(os.listdir(out)) == expected  # and no .lock or temporary file left behind
    assert all(is_png(out / name) for name in expected if name.endswith(".png"))
    config = json.loads((out / "config.json").read_text())
    # --data-dir alone: the IDX files there, named by no dataset; and only what the model used is recorded
    assert config["dataset"] is None and config["epochs"] == 2 and config["latent_dim"] == 2
    assert "variance" not in config and "channels" not in config and config["n_samples"] == 1
    assert config["data_dir"] == str(data)  # absolute, so a resume may run from another folder
    checkpoint = load_checkpoint(out / "checkpoint.npz")
    assert checkpoint.epoch == 2
    assert checkpoint.config["input_dim"] == ROWS * COLUMNS
    assert len(checkpoint.extra["history"]) == 2


def test_sample_grid_is_8x8_and_no_manifold_without_2d_latent(data_dir, tmp_path, monkeypatch):
    grids = []
    save_samples = plots.save_samples

    def spy(path, samples, image_shape, nrow=8):
        grids.append((os.path.basename(path), samples.shape, tuple(image_shape), nrow))
        save_samples(path, samples, image_shape, nrow)

    monkeypatch.setattr(plots, "save_samples", spy)
    out = tmp_path / "run"
    assert train.main(cli_args(data_dir, out, "--quiet", latent_dim=3)) == 0
    pixels = ROWS * COLUMNS
    assert grids == [(f"sample_{epoch}.png", (64, pixels), (ROWS, COLUMNS), 8) for epoch in (1, 2)]
    files = set(os.listdir(out))
    assert {"sample_1.png", "sample_2.png", "reconstruction_1.png", "reconstruction_2.png", "loss.png"} <= files
    assert "manifold.png" not in files and "latent_scatter.png" not in files


def test_metrics_csv_has_one_row_per_epoch_with_the_right_columns(data_dir, tmp_path):
    out = tmp_path / "run"
    assert train.main(cli_args(data_dir, out, "--quiet", epochs=3)) == 0
    header, rows = read_metrics(out)
    assert header == EXPECTED_COLUMNS
    assert [row["epoch"] for row in rows] == ["1", "2", "3"]
    for row in rows:
        values = {key: float(value) for key, value in row.items()}
        assert all(math.isfinite(value) for value in values.values())
        for split in ("train", "test"):
            total = values[f"{split}_reconstruction"] + values[f"{split}_kl"]
            assert values[f"{split}_loss"] == pytest.approx(total, rel=1e-6)
            assert values[f"{split}_kl"] >= 0
        assert values["seconds"] > 0
        assert values["samples_per_second"] == pytest.approx(TRAIN_COUNT / values["seconds"], rel=1e-6)
    history = load_checkpoint(out / "checkpoint.npz").extra["history"]
    assert [repr(record["train_loss"]) for record in history] == [row["train_loss"] for row in rows]


def test_loss_goes_down_on_a_learnable_dataset(data_dir, tmp_path):
    out = tmp_path / "run"
    assert train.main(cli_args(data_dir, out, "--quiet", "--lr", "1e-2", epochs=4)) == 0
    _, rows = read_metrics(out)
    train_loss = [float(row["train_loss"]) for row in rows]
    test_loss = [float(row["test_loss"]) for row in rows]
    assert all(later < earlier for earlier, later in zip(train_loss, train_loss[1:])), train_loss
    assert train_loss[-1] < 0.95 * train_loss[0], train_loss
    assert test_loss[-1] < 0.95 * test_loss[0], test_loss


def test_a_run_ends_with_the_command_that_explores_it(data_dir, tmp_path, capsys):
    """Issue 22: the last line of a run is the explorer's command for its folder (a page of its own,
    not written after every run)."""
    out = tmp_path / "run"
    assert train.main(cli_args(data_dir, out, epochs=1)) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == f"explore the latent space in a browser: python -m minivae.explore {out}"
    assert not (out / "explorer.html").exists()


def test_quiet_prints_nothing_on_stdout(data_dir, tmp_path, capsys):
    assert train.main(cli_args(data_dir, tmp_path / "run", "--quiet", epochs=1)) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == ""


@pytest.mark.parametrize("terminal, flags, bar", [
    (False, [], False),
    (True, [], True),
    (True, ["--no-progress"], False),
    (True, ["--quiet"], False),
], ids=["pipe", "terminal", "terminal-no-progress", "terminal-quiet"])
def test_progress_bar_only_on_a_terminal(data_dir, tmp_path, capsys, monkeypatch, terminal, flags, bar):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: terminal)
    assert train.main(cli_args(data_dir, tmp_path / "run", "--log-interval", "2", *flags, epochs=1)) == 0
    out = capsys.readouterr().out
    assert ("img/s" in out or "img]" in out) == bar, out
    assert ("\r" in out) == bar
    if "--quiet" not in flags:
        assert "epoch 1/1  train loss" in out


@pytest.mark.parametrize("flags, hidden, check", [
    (["--binarize", "static"], (16,), lambda c: c["settings"]["binarize"] == "static"),
    (["--binarize", "dynamic"], (16,), lambda c: c["settings"]["binarize"] == "dynamic"),
    (["--likelihood", "gaussian"], (16,), lambda c: c["config"]["likelihood"] == "gaussian"),
    (["--samples", "2"], (16,), lambda c: c["config"]["n_samples"] == 2),
    ([], (16, 8), lambda c: c["config"]["hidden"] == [16, 8] and c["config"]["decoder_hidden"] == [8, 16]),
    (["--decoder-hidden", "12"], (16,), lambda c: c["config"]["decoder_hidden"] == [12]),
    (["--activation", "tanh"], (16,), lambda c: c["config"]["activation"] == "tanh"),
    (["--dtype", "float64"], (16,), lambda c: c["dtype"] == "float64"),
    (["--seed", "7"], (16,), lambda c: c["settings"]["seed"] == 7),
], ids=["binarize-static", "binarize-dynamic", "gaussian", "samples-2", "hidden-16-8", "decoder-hidden",
        "tanh", "float64", "seed"])
def test_options_train_and_take_effect(data_dir, tmp_path, baseline, flags, hidden, check):
    out = tmp_path / "run"
    assert train.main(cli_args(data_dir, out, "--quiet", *flags, hidden=hidden)) == 0
    checkpoint = load_checkpoint(out / "checkpoint.npz")
    assert checkpoint.epoch == 2
    assert check({"settings": checkpoint.extra["settings"], "config": checkpoint.config, "dtype": checkpoint.dtype})
    history = checkpoint.extra["history"]
    assert all(math.isfinite(record["train_loss"]) for record in history)
    # the flag changed the run: its losses are not the plain run's
    assert [r["train_loss"] for r in history] != [r["train_loss"] for r in baseline]
    saved = json.loads((out / "config.json").read_text())
    assert saved == {**checkpoint.extra["settings"], "version": saved["version"]}


def test_static_binarization_trains_on_zeros_and_ones(data_dir, tmp_path, monkeypatch):
    seen = []
    loss_and_backward = train.VAE.loss_and_backward

    def spy(self, x, eps=None, kl_weight=1.0, checked=False):
        seen.append(np.unique(x))
        return loss_and_backward(self, x, eps, kl_weight, checked)

    monkeypatch.setattr(train.VAE, "loss_and_backward", spy)
    assert train.main(cli_args(data_dir, tmp_path / "run", "--quiet", "--binarize", "static", epochs=1)) == 0
    assert set(np.concatenate(seen).tolist()) == {0.0, 1.0}
    seen.clear()
    assert train.main(cli_args(data_dir, tmp_path / "plain", "--quiet", epochs=1)) == 0
    assert len(set(np.concatenate(seen).tolist())) > 2


def test_epochs_is_the_total_and_resume_continues_to_it(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert train.main(cli_args(data_dir, out, epochs=1)) == 0
    assert load_checkpoint(out / "checkpoint.npz").epoch == 1
    capsys.readouterr()
    assert train.main(["--resume", str(out), "--epochs", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"resuming {out} after epoch 1"
    assert [line.split()[:2] for line in lines[1:-1]] == [["epoch", "2/3"], ["epoch", "3/3"]]
    assert lines[-1].startswith("explore the latent space in a browser: ")
    assert load_checkpoint(out / "checkpoint.npz").epoch == 3
    assert [row["epoch"] for row in read_metrics(out)[1]] == ["1", "2", "3"]
    assert {f"reconstruction_{epoch}.png" for epoch in (1, 2, 3)} <= set(os.listdir(out))
    assert json.loads((out / "config.json").read_text())["epochs"] == 3
    # nothing left to do: says so, and rewrites nothing
    before = (out / "checkpoint.npz").stat().st_mtime_ns
    assert train.main(["--resume", str(out)]) == 0
    assert "already trained all 3 epochs; pass --epochs 4 or more" in capsys.readouterr().out
    assert (out / "checkpoint.npz").stat().st_mtime_ns == before


def test_default_dataset_falls_back_to_a_fashion_mnist_copy(tmp_path, monkeypatch, capsys):
    """No --dataset and MNIST unreachable (--no-download, not on this machine): a Fashion-MNIST copy."""
    monkeypatch.setenv("MINIVAE_DATA", str(tmp_path / "datasets"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    write_dataset(tmp_path / "datasets" / "fashion-mnist", 32, 8, 8, 8)
    out = tmp_path / "run"
    argv = ["--out", str(out), "--no-download", "--epochs", "1", "--batch-size", "8", "--hidden", "8",
            "--latent-dim", "2"]
    assert train.main(argv) == 0
    assert "training on the Fashion-MNIST copy" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["dataset"] == "fashion-mnist"
    assert load_checkpoint(out / "checkpoint.npz").config["input_dim"] == 64



def test_the_two_test_losses_share_one_encoder_pass_and_equal_two_separate_passes(data_dir, tmp_path, monkeypatch):
    """Issue 25 item 3: the test losses with z sampled and with z = mu come from one encoder pass per
    chunk of the test set, bit for bit what two separate forward passes give (``elbo_terms``, the noise
    drawn as the trainer draws it)."""
    from minivae import load_model
    from minivae.data import load_run_data
    from minivae.model import VAE

    encodes, passes, test_sums, encode = [], [], train.Trainer._test_sums, VAE._encode

    def counted(self, epoch):  # the encoder passes of one test pass: their batch sizes
        encodes.clear()
        result = test_sums(self, epoch)
        passes.append(list(encodes))
        return result

    monkeypatch.setattr(VAE, "_encode", lambda self, x: encodes.append(x.shape[0]) or encode(self, x))
    monkeypatch.setattr(train.Trainer, "_test_sums", counted)
    out = tmp_path / "run"
    assert train.main(cli_args(data_dir, out, "--quiet", "--seed", "4", epochs=1)) == 0
    assert passes == [[TEST_COUNT]]
    model, record = load_model(out), load_checkpoint(out / "checkpoint.npz").extra["history"][0]
    backend = model.backend
    x = backend.to_device(load_run_data({"data_dir": str(data_dir)}).test_x.astype(backend.dtype))
    eps = backend.with_seed(4 * 100_003 + 1).standard_normal((1, TEST_COUNT, model.latent_dim))
    sampled = [float(term.sum()) for term in model.elbo_terms(x, eps)]
    mean = [float(term.sum()) for term in model.elbo_terms(x, use_mean=True)]
    assert record["test_loss"] == (sampled[0] + sampled[1]) / TEST_COUNT
    assert record["test_loss_mean"] == (mean[0] + mean[1]) / TEST_COUNT
    assert record["test_reconstruction"] == sampled[0] / TEST_COUNT
