"""Faults the training command survives or refuses cleanly (issue 5), each one provoked.

1. exact resume: stopped after epoch k (or SIGKILLed mid-epoch) and resumed, a run ends bit-identical
   to the one never stopped: parameters, optimizer state, random state, the loss columns of metrics;
2. atomic writes: a crash while epoch 2's checkpoint is written leaves epoch 1's loadable;
4. NaN / inf in a loss term or a gradient: exit 1 naming epoch, step and term, no poisoned checkpoint;
5. bad input and bad flags: one line on stderr naming the problem and the fix, exit non-zero, no
   traceback unless --debug;
6. concurrent runs: a folder a live run holds is refused; the lock of a dead run is taken over.
"""

import errno
import gzip
import io
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import scipy.special
from tiny_data import (TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES, TRAIN_LABELS, cli_args, command_stderr_lines,
                       idx_bytes, images_and_labels, read_metrics, write_dataset)

import minivae.backend
from minivae import data, plots, train
from minivae.backend import Backend
from minivae.checkpoint import load_checkpoint
from minivae.errors import NumericalError
from minivae.model import VAE, LossTerms

TRAIN_COUNT, TEST_COUNT, BATCH, SIDE = 64, 16, 8, 8
STEPS = TRAIN_COUNT // BATCH  # steps per epoch
LOSS_COLUMNS = ["epoch", "train_loss", "train_reconstruction", "train_kl", "test_loss", "test_loss_mean",
                "test_reconstruction", "test_kl"]

# Run by the SIGKILL tests as `python -c DRIVER MODE AT_CALL MARKER ARGS...`: the real training
# command, with a hook that makes the kill land at an exact point instead of at a lucky moment.
#   block: at the AT_CALL-th training step, create MARKER and sleep (the test then sends SIGKILL);
#   kill-in-savez: at the AT_CALL-th checkpoint, write half of it, create MARKER and SIGKILL itself.
DRIVER = r"""
import io, os, signal, sys, time
import numpy as np
import minivae.model
from minivae import train

mode, at_call, marker = sys.argv[1], int(sys.argv[2]), sys.argv[3]
calls = []
if mode == "block":
    original = minivae.model.VAE.loss_and_backward

    def loss_and_backward(self, x, eps=None, kl_weight=1.0, checked=False):
        calls.append(1)
        if len(calls) == at_call:
            open(marker, "w").close()
            time.sleep(300)
        return original(self, x, eps, kl_weight, checked)

    minivae.model.VAE.loss_and_backward = loss_and_backward
elif mode == "kill-in-savez":
    original = np.savez

    def savez(file, *args, **kwds):
        calls.append(1)
        if len(calls) == at_call:
            whole = io.BytesIO()
            original(whole, *args, **kwds)
            file.write(whole.getvalue()[:len(whole.getvalue()) // 2])
            file.flush()
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return original(file, *args, **kwds)

    np.savez = savez
sys.exit(train.main(sys.argv[4:]))
"""


# ------------------------------------------------------------------------------------------ helpers

@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """64 training and 16 test images of 8x8 pixels: 8 steps per epoch at --batch-size 8."""
    return write_dataset(tmp_path_factory.mktemp("faults") / "data", TRAIN_COUNT, TEST_COUNT, SIDE, SIDE)


@pytest.fixture
def run_args(data_dir):
    """``run_args(out, *flags, epochs=3)``: the argv of a small quiet run on the module's dataset."""
    def make(out, *flags, epochs=3, data=None):
        return cli_args(data or data_dir, out, "--quiet", *flags, epochs=epochs, batch_size=BATCH,
                        hidden=(16,), latent_dim=3)
    return make


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory):
    """``reference(*flags)``: the folder of the uninterrupted 3-epoch run with those flags (run once)."""
    runs = {}

    def get(*flags):
        if flags not in runs:
            out = tmp_path_factory.mktemp("reference") / "run"
            argv = cli_args(data_dir, out, "--quiet", *flags, epochs=3, batch_size=BATCH, hidden=(16,),
                            latent_dim=3)
            assert train.main(argv) == 0
            runs[flags] = out
        return runs[flags]
    return get


@pytest.fixture(scope="module")
def finished_run(data_dir, tmp_path_factory):
    """A finished 2-epoch run, to be copied (``shutil.copytree``) by tests that resume or break it."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert train.main(cli_args(data_dir, out, "--quiet", epochs=2, batch_size=BATCH, hidden=(16,),
                               latent_dim=3)) == 0
    return out


def copy_of(run, tmp_path):
    return shutil.copytree(run, tmp_path / "copy")


def bits(array):
    return array.dtype.str, array.shape, array.tobytes()


def assert_same_run(resumed, uninterrupted):
    """Bit-identical parameters, optimizer state, random state, history and metrics loss columns."""
    a, b = load_checkpoint(resumed / "checkpoint.npz"), load_checkpoint(uninterrupted / "checkpoint.npz")
    assert a.epoch == b.epoch
    assert list(a.params) == list(b.params)
    for name in b.params:
        assert bits(a.params[name]) == bits(b.params[name]), f"parameter {name} differs"
    assert a.optimizer_state["step"] == b.optimizer_state["step"]
    assert a.optimizer_state["hyperparameters"] == b.optimizer_state["hyperparameters"]
    for kind in ("m", "v"):
        for name in b.params:
            assert bits(a.optimizer_state[kind][name]) == bits(b.optimizer_state[kind][name]), f"{kind} {name}"
    assert a.rng_state == b.rng_state
    history = [[record[c] for c in LOSS_COLUMNS] for record in a.extra["history"]]
    assert history == [[record[c] for c in LOSS_COLUMNS] for record in b.extra["history"]]
    rows = [[row[c] for c in LOSS_COLUMNS] for row in read_metrics(resumed)[1]]
    assert rows == [[row[c] for c in LOSS_COLUMNS] for row in read_metrics(uninterrupted)[1]]
    assert len(rows) == b.epoch
    assert (resumed / "config.json").read_text() == (uninterrupted / "config.json").read_text()


def temporaries(out):
    return [name for name in os.listdir(out) if name.endswith(".tmp")]


def assert_one_line_error(err, *words):
    """stderr is exactly one line, minivae-train's error, holding every one of ``words``."""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("minivae-train: error: "), err
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert "Traceback" not in err


def start_driver(mode, at_call, marker, argv):
    return subprocess.Popen([sys.executable, "-c", DRIVER, mode, str(at_call), str(marker), *argv],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for(path, process, timeout=120):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if process.poll() is not None:
            pytest.fail(f"the training process ended ({process.returncode}) before {path}: "
                        f"{process.stderr.read()}")
        if time.monotonic() > deadline:
            pytest.fail(f"{path} did not appear within {timeout} s")
        time.sleep(0.01)


# ------------------------------------------------------------------------------- 1. exact resume

@pytest.mark.parametrize("flags, stopped_after", [
    ((), 1),
    ((), 2),
    (("--binarize", "dynamic", "--samples", "2"), 1),
], ids=["after-epoch-1", "after-epoch-2", "dynamic-binarization-2-samples"])
def test_a_resumed_run_is_bit_identical_to_the_uninterrupted_one(run_args, reference, tmp_path, flags,
                                                                 stopped_after):
    out = tmp_path / "run"
    assert train.main(run_args(out, *flags, epochs=stopped_after)) == 0
    assert train.main(["--resume", str(out), "--epochs", "3", "--quiet"]) == 0
    assert_same_run(out, reference(*flags))


def test_the_comparison_catches_a_resume_that_loses_the_random_state(run_args, reference, tmp_path,
                                                                     monkeypatch):
    out = tmp_path / "run"
    assert train.main(run_args(out, epochs=1)) == 0
    monkeypatch.setattr(Backend, "set_rng_state", lambda self, state: None)
    assert train.main(["--resume", str(out), "--quiet"]) == 0
    with pytest.raises(AssertionError):
        assert_same_run(out, reference())


@pytest.mark.slow
def test_sigkill_in_the_middle_of_an_epoch_then_resume_is_bit_identical(run_args, reference, tmp_path, capsys):
    """Killed at epoch 2, step 5, while holding the folder's lock: other runs are refused meanwhile;
    the resumed run takes the dead run's lock over, restarts from epoch 1's checkpoint and ends
    identical to the uninterrupted run."""
    out, marker = tmp_path / "run", tmp_path / "in-epoch-2"
    process = start_driver("block", STEPS + 5, marker, run_args(out))
    try:
        wait_for(marker, process)
        assert load_checkpoint(out / "checkpoint.npz").epoch == 1
        assert (out / ".lock").read_text() == str(process.pid)
        for argv in (run_args(out), ["--resume", str(out)]):
            assert train.main(argv) == 1
            assert_one_line_error(capsys.readouterr().err, f"another run (process {process.pid}) is writing to")
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == -signal.SIGKILL
    assert (out / ".lock").read_text() == str(process.pid)  # left behind by the dead run
    assert load_checkpoint(out / "checkpoint.npz").epoch == 1
    assert train.main(["--resume", str(out), "--quiet"]) == 0
    assert not (out / ".lock").exists()
    assert_same_run(out, reference())


@pytest.mark.slow
def test_sigkill_while_writing_a_checkpoint_leaves_the_previous_one(run_args, reference, tmp_path):
    out, marker = tmp_path / "run", tmp_path / "in-savez"
    process = start_driver("kill-in-savez", 2, marker, run_args(out))
    process.wait(timeout=120)
    assert process.returncode == -signal.SIGKILL, process.stderr.read()
    assert marker.exists()  # it died inside epoch 2's checkpoint write
    assert temporaries(out)  # the half-written file, under a temporary name
    assert load_checkpoint(out / "checkpoint.npz").epoch == 1
    assert train.main(["--resume", str(out), "--quiet"]) == 0
    assert temporaries(out) == []
    assert_same_run(out, reference())


# ------------------------------------------------------------------------------- 2. atomic writes

@pytest.mark.parametrize("crash, status, words", [
    (OSError(errno.ENOSPC, "No space left on device"), 1, ["cannot write checkpoint", "No space left"]),
    (KeyboardInterrupt(), 130, ["interrupted; ", "checkpoint.npz holds the last complete epoch; continue with --resume"]),
], ids=["disk-full", "interrupt"])
def test_a_crash_while_writing_epoch_2s_checkpoint_keeps_epoch_1s(run_args, reference, tmp_path, monkeypatch,
                                                                  capsys, crash, status, words):
    real_savez = np.savez
    calls = []

    def savez(file, *args, **kwds):
        calls.append(1)
        if len(calls) == 2:  # epoch 2's checkpoint: write half of it, then fail
            whole = io.BytesIO()
            real_savez(whole, *args, **kwds)
            file.write(whole.getvalue()[:len(whole.getvalue()) // 2])
            raise crash
        return real_savez(file, *args, **kwds)

    monkeypatch.setattr(np, "savez", savez)
    out = tmp_path / "run"
    assert train.main(run_args(out)) == status
    monkeypatch.setattr(np, "savez", real_savez)
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert all(word in err for word in words), err
    assert load_checkpoint(out / "checkpoint.npz").epoch == 1
    assert temporaries(out) == [] and not (out / ".lock").exists()
    assert train.main(["--resume", str(out), "--quiet"]) == 0
    assert_same_run(out, reference())


def test_a_failed_picture_write_is_one_line_and_writes_no_checkpoint(run_args, tmp_path, monkeypatch, capsys):
    def disk_full(path, *args, **kwds):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(plots, "save_loss_curves", disk_full)
    out = tmp_path / "run"
    assert train.main(run_args(out)) == 1
    assert_one_line_error(capsys.readouterr().err, "loss.png: No space left on device",
                          "check that the --out folder is writable and has free space")
    assert not (out / "checkpoint.npz").exists()


# ------------------------------------------------------------------------------- 4. numerical faults

def poison(monkeypatch, at_call, where, value):
    """Make the ``at_call``-th training step's ``where`` (reconstruction, kl or gradient) ``value``."""
    original = VAE.loss_and_backward
    calls = []

    def loss_and_backward(self, x, eps=None, kl_weight=1.0, checked=False):
        terms = original(self, x, eps, kl_weight, checked)
        calls.append(1)
        if len(calls) == at_call:
            bad = self.backend.xp.asarray(value, dtype=self.backend.dtype)
            if where == "reconstruction":
                terms = LossTerms(terms.reconstruction + bad, terms.kl, terms.total + bad)
            elif where == "kl":
                terms = LossTerms(terms.reconstruction, terms.kl + bad, terms.total + bad)
            else:
                grad = self.parameters()[1].grad  # encoder.0.b
                grad[(0,) * grad.ndim] = value
        return terms

    monkeypatch.setattr(VAE, "loss_and_backward", loss_and_backward)


def assert_epoch_1_is_the_last_good_checkpoint(out):
    checkpoint = load_checkpoint(out / "checkpoint.npz")
    assert checkpoint.epoch == 1
    assert all(np.isfinite(array).all() for array in checkpoint.params.values())
    assert all(np.isfinite(array).all() for kind in ("m", "v") for array in checkpoint.optimizer_state[kind].values())
    assert len(checkpoint.extra["history"]) == 1
    assert len(read_metrics(out)[1]) == 1
    assert not (out / "reconstruction_2.png").exists()
    assert not (out / ".lock").exists()


@pytest.mark.parametrize("value, word", [(math.nan, "NaN"), (math.inf, "infinite")], ids=["nan", "inf"])
@pytest.mark.parametrize("where, term", [
    ("reconstruction", "reconstruction loss"), ("kl", "KL"), ("gradient", "gradient"),
])
def test_a_nan_or_inf_stops_training_at_that_step(run_args, reference, tmp_path, monkeypatch, capsys, where,
                                                  term, value, word):
    poison(monkeypatch, STEPS + 3, where, value)
    out = tmp_path / "run"
    assert train.main(run_args(out)) == 1
    assert_one_line_error(capsys.readouterr().err, f"training stopped at epoch 2, step 3: the {term} became {word}",
                          "no checkpoint was written", "--lr")
    assert_epoch_1_is_the_last_good_checkpoint(out)
    # the last good checkpoint carries on as if nothing had happened
    monkeypatch.undo()
    assert train.main(["--resume", str(out), "--quiet"]) == 0
    assert_same_run(out, reference())


def test_on_a_device_the_deferred_check_still_names_the_first_bad_step(run_args, tmp_path, monkeypatch, capsys):
    """A device backend reads its losses back every --log-interval steps, after the optimizer has
    already taken the bad steps; the message still names the first one, and no checkpoint is written."""
    monkeypatch.setattr(train, "get_backend", lambda name, dtype, seed: Backend(
        "fake-device", np, scipy.special, dtype=dtype, seed=seed))
    poison(monkeypatch, STEPS + 3, "gradient", math.nan)
    out = tmp_path / "run"
    assert train.main(run_args(out, "--log-interval", "5")) == 1
    assert_one_line_error(capsys.readouterr().err, "training stopped at epoch 2, step 3: the gradient became NaN")
    assert_epoch_1_is_the_last_good_checkpoint(out)


def test_a_non_finite_test_loss_writes_no_checkpoint(run_args, tmp_path, monkeypatch, capsys):
    original = VAE.forward
    calls = []

    def forward(self, x, eps=None, use_mean=False, for_backward=True, **kwargs):
        terms, cache = original(self, x, eps, use_mean, for_backward=for_backward, **kwargs)
        if not for_backward and not use_mean:  # a test pass with z sampled
            calls.append(1)
            if len(calls) == 2:  # epoch 2's
                terms = terms._replace(reconstruction=terms.reconstruction * np.nan)
        return terms, cache

    monkeypatch.setattr(VAE, "forward", forward)
    out = tmp_path / "run"
    assert train.main(run_args(out)) == 1
    assert_one_line_error(capsys.readouterr().err, "evaluation after epoch 2: the test loss became NaN",
                          "no checkpoint")
    assert_epoch_1_is_the_last_good_checkpoint(out)


def test_a_diverging_run_stops_with_one_message_and_no_numpy_warnings(run_args, tmp_path, capsys):
    out = tmp_path / "run"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert train.main(run_args(out, "--lr", "1e6", "--likelihood", "gaussian")) == 1
    assert [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)] == []
    assert_one_line_error(capsys.readouterr().err, "training stopped at epoch 1, step", "Start a new run")
    assert not (out / "checkpoint.npz").exists()


def test_debug_shows_the_numerical_error_itself(run_args, tmp_path, monkeypatch):
    poison(monkeypatch, 2, "kl", math.nan)
    with pytest.raises(NumericalError, match="epoch 1, step 2: the KL became NaN"):
        train.main(run_args(tmp_path / "run", "--debug"))


# --------------------------------------------------------------------------- 5. bad input, bad flags

def rewrite(name, transform):
    """A breaker that replaces the bytes of file ``name`` with ``transform(bytes)``."""
    def breaker(folder):
        path = folder / name
        path.write_bytes(transform(path.read_bytes()))
    return breaker


def replace_array(name, array):
    def breaker(folder):
        (folder / name).write_bytes(idx_bytes(array))
    return breaker


def gzip_truncated(folder):
    content = gzip.compress((folder / TRAIN_IMAGES).read_bytes())
    (folder / TRAIN_IMAGES).unlink()
    (folder / (TRAIN_IMAGES + ".gz")).write_bytes(content[:len(content) // 2])


def float_pixels_out_of_range(folder):
    data.write_idx(folder / TRAIN_IMAGES, np.full((TRAIN_COUNT, SIDE, SIDE), 2.0, dtype=np.float32))


BROKEN_DATASETS = [
    ("wrong-magic", rewrite(TRAIN_IMAGES, lambda b: b"\x12\x34" + b[2:]), [TRAIN_IMAGES, "is not an IDX file"]),
    ("unknown-type", rewrite(TRAIN_IMAGES, lambda b: b[:2] + b"\x07" + b[3:]), ["unknown IDX type code 0x07"]),
    ("truncated", rewrite(TRAIN_IMAGES, lambda b: b[:len(b) // 2]), [TRAIN_IMAGES, "is truncated"]),
    ("truncated-header", rewrite(TEST_IMAGES, lambda b: b[:7]), [TEST_IMAGES, "truncated inside its header"]),
    ("extra-bytes", rewrite(TEST_LABELS, lambda b: b + b"\0" * 5), [TEST_LABELS, "5 extra bytes"]),
    ("empty", rewrite(TEST_LABELS, lambda b: b""), [TEST_LABELS, "is empty"]),
    ("no-images", replace_array(TEST_IMAGES, np.zeros((0, SIDE, SIDE))), [TEST_IMAGES, "holds no items"]),
    ("image-size-mismatch", replace_array(TEST_IMAGES, images_and_labels(TEST_COUNT, 7, 9)[0]),
     [TEST_IMAGES, "7x9 pixels", "8x8", "use a test set of the training set's image size"]),
    ("label-count-mismatch", replace_array(TRAIN_LABELS, np.zeros(TRAIN_COUNT - 4)),
     [f"has {TRAIN_COUNT} images", f"has {TRAIN_COUNT - 4} labels"]),
    ("labels-are-images", rewrite(TRAIN_LABELS, lambda b: idx_bytes(np.zeros((TRAIN_COUNT, 2, 2)))),
     [TRAIN_LABELS, "must be 1-D"]),
    ("missing-file", lambda folder: (folder / TEST_LABELS).unlink(), ["missing " + TEST_LABELS]),
    ("corrupt-gzip", gzip_truncated, [TRAIN_IMAGES + ".gz", "corrupt or incomplete gzip"]),
    ("float-pixels-out-of-range", float_pixels_out_of_range, [TRAIN_IMAGES, "outside [0, 1]"]),
]


@pytest.mark.parametrize("breaker, words", [case[1:] for case in BROKEN_DATASETS],
                         ids=[case[0] for case in BROKEN_DATASETS])
def test_a_malformed_dataset_is_one_line_naming_the_file(run_args, tmp_path, capsys, breaker, words):
    folder = write_dataset(tmp_path / "data", TRAIN_COUNT, TEST_COUNT, SIDE, SIDE)
    breaker(folder)
    out = tmp_path / "run"
    assert train.main(run_args(out, data=folder)) == 1
    assert_one_line_error(capsys.readouterr().err, *words)
    assert os.listdir(out) == []


BAD_FLAGS = [  # a flag's value is checked by the rule of minivae/settings.py that checks it in a file
    (["--epochs", "0"], "argument --epochs: must be an integer >= 1, got 0"),
    (["--epochs", "-3"], "argument --epochs: must be an integer >= 1, got -3"),
    (["--epochs", "1.5"], "argument --epochs: must be an integer >= 1, got 1.5"),
    (["--batch-size", "-1"], "argument --batch-size: must be an integer >= 1, got -1"),
    (["--batch-size", "0"], "argument --batch-size: must be an integer >= 1, got 0"),
    (["--latent-dim", "0"], "argument --latent-dim: must be an integer >= 1, got 0"),
    (["--samples", "0"], "argument --samples: must be an integer >= 1, got 0"),
    (["--hidden", "0"], "argument --hidden: must be an integer >= 1, got 0"),
    (["--decoder-hidden", "-4"], "argument --decoder-hidden: must be an integer >= 1, got -4"),
    (["--channels", "32", "0"], "argument --channels: must be an integer >= 1, got 0"),
    (["--channels", "32"], "argument --channels: expected 2 arguments"),
    (["--log-interval", "0"], "argument --log-interval: must be an integer >= 1, got 0"),
    (["--lr", "0"], "argument --lr: must be a finite number > 0, got 0"),
    (["--lr", "-0.1"], "argument --lr: must be a finite number > 0, got -0.1"),
    (["--lr", "nan"], "argument --lr: must be a finite number > 0, got nan"),
    (["--lr", "inf"], "argument --lr: must be a finite number > 0, got inf"),
    (["--lr", "fast"], "argument --lr: must be a finite number > 0, got fast"),
    (["--variance", "0"], "argument --variance: must be 'learned' or a finite number > 0, got 0"),
    (["--beta", "-1"], "argument --beta: must be a finite number >= 0, got -1"),
    (["--seed", "-1"], "argument --seed: must be an integer >= 0, got -1"),
    (["--dataset", "cifar10"], "argument --dataset: invalid choice: 'cifar10'"),
    (["--likelihood", "poisson"], "argument --likelihood: invalid choice: 'poisson'"),
    (["--binarize", "sometimes"], "argument --binarize: invalid choice: 'sometimes'"),
    (["--backend", "tpu"], "argument --backend: invalid choice: 'tpu'"),
    (["--dtype", "float16"], "argument --dtype: invalid choice: 'float16'"),
    (["--activation", "gelu"], "argument --activation: invalid choice: 'gelu'"),
    (["--learning-rate", "0.1"], "unrecognized arguments: --learning-rate 0.1"),
]


@pytest.mark.parametrize("flags, message", BAD_FLAGS, ids=[" ".join(flags) for flags, _ in BAD_FLAGS])
def test_a_bad_flag_is_refused_by_argparse_in_one_line(tmp_path, capsys, flags, message):
    out = tmp_path / "run"
    # --data-dir and --no-download: a flag wrongly accepted must not start a download
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--out", str(out), "--data-dir", str(tmp_path / "no-data"), "--no-download", *flags])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1, err  # no usage block: the problem, and where to look for the fix
    assert lines[0].startswith(f"python -m minivae.train: error: {message}"), lines[0]
    assert lines[0].endswith("; see python -m minivae.train --help")
    if "invalid choice" in message:
        assert "choose from" in lines[0]
    assert not out.exists()


def test_a_batch_larger_than_the_data_is_refused(run_args, tmp_path, capsys):
    assert train.main(run_args(tmp_path / "run", "--batch-size", "1000")) == 1
    assert_one_line_error(capsys.readouterr().err,
                          f"--batch-size 1000 is larger than the {TRAIN_COUNT} training examples",
                          f"pass --batch-size {TRAIN_COUNT} or less")


def test_an_out_folder_that_cannot_be_created_is_refused(run_args, tmp_path, capsys):
    regular_file = tmp_path / "a-file"
    regular_file.write_text("not a folder")
    assert train.main(run_args(regular_file / "run")) == 1
    assert_one_line_error(capsys.readouterr().err, f"--out {regular_file / 'run'}: cannot create the folder "
                          "(Not a directory); choose a writable folder")
    assert train.main(run_args(regular_file)) == 1
    assert_one_line_error(capsys.readouterr().err, f"--out {regular_file}: is a file, not a folder")
    assert regular_file.read_text() == "not a folder"


def test_a_missing_dataset_lists_what_was_tried_without_a_traceback(tmp_path, monkeypatch, capsys):
    """The one error allowed several lines: every place looked in, then the ways out."""
    monkeypatch.delenv("MINIVAE_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert train.main(["--dataset", "mnist", "--no-download", "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("minivae-train: error: mnist: the dataset is not on this machine")
    assert "Tried:" in err and str(tmp_path / "cache") in err and "--data-dir" in err
    assert "Traceback" not in err


def test_a_missing_data_dir_file_for_another_dataset(run_args, tmp_path, capsys):
    assert train.main(run_args(tmp_path / "run", "--dataset", "frey")) == 1
    assert_one_line_error(capsys.readouterr().err, "cannot load frey from this --data-dir folder",
                          "frey_rawface.mat")


def test_an_unavailable_gpu_backend_is_one_line(run_args, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(minivae.backend, "cupy_unavailable_reason", lambda: "no CUDA device here")
    assert train.main(run_args(tmp_path / "run", "--backend", "cupy")) == 1
    assert_one_line_error(capsys.readouterr().err, "cannot use the cupy backend: no CUDA device here",
                          "--backend numpy")


def test_a_fresh_run_into_a_folder_holding_a_run_is_refused(run_args, finished_run, tmp_path, capsys):
    out = copy_of(finished_run, tmp_path)
    before = (out / "checkpoint.npz").read_bytes()
    assert train.main(run_args(out)) == 1
    assert_one_line_error(capsys.readouterr().err, "already holds a run", f"--resume {out}")
    assert (out / "checkpoint.npz").read_bytes() == before


def test_resume_of_a_folder_that_does_not_exist_creates_nothing(tmp_path, capsys):
    out = tmp_path / "no-such-run"
    assert train.main(["--resume", str(out)]) == 1
    assert_one_line_error(capsys.readouterr().err, f"--resume {out}: no such folder")
    assert not out.exists()


def test_resume_of_a_folder_without_a_run(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert train.main(["--resume", str(tmp_path / "empty")]) == 1
    assert_one_line_error(capsys.readouterr().err, "no config.json there", "start one with --out")


@pytest.mark.parametrize("flags, words", [
    (["--lr", "0.5"], ["the run was started with --lr 0.001, not 0.5", "drop --lr"]),
    (["--latent-dim", "5"], ["the run was started with --latent-dim 3, not 5"]),
    (["--epochs", "1"], ["already trained 2 epochs, more than --epochs 1", "pass --epochs 3 or more"]),
], ids=["lr", "latent-dim", "fewer-epochs"])
def test_resume_refuses_a_changed_setting(finished_run, tmp_path, capsys, flags, words):
    out = copy_of(finished_run, tmp_path)
    before = (out / "checkpoint.npz").read_bytes()
    assert train.main(["--resume", str(out), *flags]) == 1
    assert_one_line_error(capsys.readouterr().err, *words)
    assert (out / "checkpoint.npz").read_bytes() == before


def test_resume_on_a_dataset_of_another_image_size_is_refused(finished_run, tmp_path, capsys):
    out = copy_of(finished_run, tmp_path)
    other = write_dataset(tmp_path / "other", TRAIN_COUNT, TEST_COUNT, 10, 12)
    assert train.main(["--resume", str(out), "--data-dir", str(other)]) == 1
    assert_one_line_error(capsys.readouterr().err, f"the run was trained on images of {SIDE * SIDE} pixels",
                          "10x12 = 120", "pass the --data-dir of the dataset it was trained on")


def test_resume_after_the_dataset_moved_names_the_folder(finished_run, data_dir, tmp_path, capsys):
    out = copy_of(finished_run, tmp_path)
    moved = shutil.copytree(data_dir, tmp_path / "moved")
    config = (out / "config.json").read_text()
    (out / "config.json").write_text(config.replace(str(data_dir), str(tmp_path / "gone")))
    assert train.main(["--resume", str(out)]) == 1
    assert_one_line_error(capsys.readouterr().err, str(tmp_path / "gone"), "no such folder")
    assert train.main(["--resume", str(out), "--data-dir", str(moved), "--epochs", "3"]) == 0


@pytest.mark.parametrize("damage, words", [
    (lambda out: (out / "config.json").write_text("{not json"),
     ["cannot read the saved settings", "start a new run with another --out"]),
    (lambda out: (out / "checkpoint.npz").write_bytes((out / "checkpoint.npz").read_bytes()[:1000]),
     ["checkpoint.npz is truncated or corrupted", "start a new --out folder"]),
], ids=["config-json", "checkpoint"])
def test_resume_of_a_damaged_run_is_one_line(finished_run, tmp_path, capsys, damage, words):
    out = copy_of(finished_run, tmp_path)
    damage(out)
    assert train.main(["--resume", str(out)]) == 1
    assert_one_line_error(capsys.readouterr().err, *words)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["bad-dataset", "bad-dataset-debug", "bad-flag", "out-under-a-file"])
def test_the_command_reports_errors_in_one_line_and_tracebacks_only_with_debug(data_dir, tmp_path, case):
    folder = shutil.copytree(data_dir, tmp_path / "data")
    rewrite(TRAIN_IMAGES, lambda b: b"\x12\x34" + b[2:])(folder)
    (tmp_path / "a-file").write_text("")
    argv, status, words = {
        "bad-dataset": (cli_args(folder, tmp_path / "run"), 1, [TRAIN_IMAGES, "is not an IDX file"]),
        "bad-dataset-debug": (cli_args(folder, tmp_path / "run", "--debug"), 1, ["DataError", "is not an IDX"]),
        "bad-flag": (cli_args(data_dir, tmp_path / "run", epochs=0), 2, ["argument --epochs"]),
        "out-under-a-file": (cli_args(data_dir, tmp_path / "a-file" / "run"), 1, ["Not a directory"]),
    }[case]
    result = subprocess.run([sys.executable, "-m", "minivae.train", *argv], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == status
    assert result.stdout == ""
    assert all(word in result.stderr for word in words), result.stderr
    if case.endswith("debug"):
        assert "Traceback (most recent call last)" in result.stderr
    else:
        assert len(command_stderr_lines(result.stderr)) == 1, result.stderr
        assert "Traceback" not in result.stderr


# ------------------------------------------------------------------------------ 6. concurrent runs

@pytest.fixture
def live_pid():
    """The id of a process that stays alive for the whole test."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield process.pid
    process.kill()
    process.wait()


def test_a_folder_locked_by_a_live_process_is_refused(run_args, finished_run, tmp_path, capsys, live_pid):
    live = live_pid
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").write_text(str(live))
    assert train.main(run_args(out)) == 1
    assert_one_line_error(capsys.readouterr().err, f"another run (process {live}) is writing to {out}",
                          "choose another --out", "delete")
    assert (out / ".lock").read_text() == str(live)  # not ours to remove
    assert os.listdir(out) == [".lock"]
    # --resume is refused as well: the live run is still writing there
    resumed = copy_of(finished_run, tmp_path)
    (resumed / ".lock").write_text(str(live))
    before = (resumed / "checkpoint.npz").read_bytes()
    assert train.main(["--resume", str(resumed)]) == 1
    assert f"another run (process {live})" in capsys.readouterr().err
    assert (resumed / "checkpoint.npz").read_bytes() == before


@pytest.mark.parametrize("content", ["dead", "garbage", ""])
def test_a_stale_lock_is_taken_over(run_args, tmp_path, content):
    if content == "dead":
        finished = subprocess.Popen([sys.executable, "-c", "pass"])
        finished.wait()
        content = str(finished.pid)
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").write_text(content)
    assert train.main(run_args(out, epochs=1)) == 0
    assert load_checkpoint(out / "checkpoint.npz").epoch == 1
    assert not (out / ".lock").exists()


# ------------------------------------------------------------------- issue 13: every failure one line

def edit_checkpoint(path, meta_edit=None, arrays=None):
    """Rewrite the checkpoint at ``path`` with its metadata edited and some arrays replaced."""
    with np.load(path) as npz:
        members = {key: npz[key] for key in npz.files}
    if meta_edit is not None:
        meta = json.loads(str(members["meta"][()]))
        meta_edit(meta)
        members["meta"] = np.array(json.dumps(meta))
    members.update(arrays or {})
    np.savez(path, **members)


def _set_meta(*keys, value):
    def edit(meta):
        for key in keys[:-1]:
            meta = meta[key]
        meta[keys[-1]] = value
    return edit


@pytest.mark.parametrize("damage, words", [
    (lambda out: (out / "config.json").write_text("[1, 2]"),
     ["config.json: the run's settings are a JSON list, not an object", "start a new run with another --out"]),
    (lambda out: (out / "config.json").write_text(
        json.dumps({**json.loads((out / "config.json").read_text()), "batch_size": None})),
     ['config.json: the field "batch_size" is null; it must be an integer >= 1 (the value of --batch-size)']),
    (lambda out: (out / "config.json").write_text(json.dumps(
        {key: value for key, value in json.loads((out / "config.json").read_text()).items() if key != "latent_dim"})),
     ['config.json: the field "latent_dim" is missing; it must be an integer >= 1 (the value of --latent-dim)']),
    (lambda out: (out / "config.json").write_text(
        json.dumps({**json.loads((out / "config.json").read_text()), "objective": None})),
     ['config.json: the field "objective" is null; it must be one of elbo, iwae (the value of --objective)']),
    (lambda out: (out / "config.json").write_text(
        json.dumps({**json.loads((out / "config.json").read_text()), "lr": "1e-3"})),
     ["config.json: lr='1e-3' must be a finite number > 0"]),
    (lambda out: edit_checkpoint(out / "checkpoint.npz", arrays={
        "param/encoder.0.W": np.zeros((SIDE * SIDE, 16), dtype="<U2")}),
     ["checkpoint.npz holds values no model can take: array 'param/encoder.0.W' has dtype <U2"]),
    (lambda out: edit_checkpoint(out / "checkpoint.npz", arrays={
        "param/encoder.0.W": np.zeros((SIDE * SIDE, 16), dtype=np.complex64)}),
     ["array 'param/encoder.0.W' has dtype complex64"]),
    (lambda out: edit_checkpoint(out / "checkpoint.npz", arrays={
        "optim/v/decoder.0.b": np.full(16, np.inf, dtype=np.float32)}),
     ["array 'optim/v/decoder.0.b' holds inf"]),
    (lambda out: edit_checkpoint(out / "checkpoint.npz", arrays={
        "param/decoder.2.b": np.full(SIDE * SIDE, np.nan, dtype=np.float32)}),
     ["array 'param/decoder.2.b' holds NaN"]),
    (lambda out: edit_checkpoint(out / "checkpoint.npz", _set_meta("optimizer", "step", value=-3)),
     ["optimizer: step=-3 must be an integer >= 0"]),
    (lambda out: edit_checkpoint(out / "checkpoint.npz", _set_meta("optimizer", "hyperparameters", "lr", value="x")),
     ["optimizer hyperparameter lr='x' must be a finite number > 0"]),
], ids=["config-list", "config-null", "config-missing", "config-null-objective", "config-string-lr", "string-dtype", "complex", "v-inf", "nan", "negative-step",
        "string-lr"])
def test_resume_of_a_run_with_unusable_values_is_one_line(finished_run, tmp_path, capsys, damage, words):
    """issue 13, items 5 and 7: each of these was a traceback, or accepted (complex: imaginary part
    dropped with a warning; v = inf: the parameter froze; NaN: blamed later on the learning rate)."""
    out = copy_of(finished_run, tmp_path)
    damage(out)
    before = (out / "checkpoint.npz").read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert train.main(["--resume", str(out), "--epochs", "3"]) == 1
    assert_one_line_error(capsys.readouterr().err, *words)
    assert (out / "checkpoint.npz").read_bytes() == before


@pytest.mark.parametrize("flag", ["--hidden", "--latent-dim", "--samples"])
def test_out_of_memory_is_one_line(data_dir, tmp_path, capsys, flag):
    """issue 13, item 5: a model too big for memory was a MemoryError traceback; issue 26: the hint
    names every flag the memory grows with, --samples included (it named --hidden for --samples 100000)."""
    argv = ["--data-dir", str(data_dir), "--out", str(tmp_path / "run"), "--quiet", "--batch-size", "8", flag,
            str(10 ** 12)]
    assert train.main(argv) == 1
    assert_one_line_error(capsys.readouterr().err, "out of memory (Unable to allocate",
                          "choose a smaller --batch-size, --hidden, --decoder-hidden, --latent-dim or --samples")
    assert not (tmp_path / "run" / "checkpoint.npz").exists()


def test_the_out_of_memory_hint_names_the_conv_models_flags(data_dir, tmp_path, capsys):
    argv = ["--data-dir", str(data_dir), "--out", str(tmp_path / "run"), "--quiet", "--batch-size", "8",
            "--architecture", "conv", "--channels", str(10 ** 6), str(10 ** 6)]
    assert train.main(argv) == 1
    assert_one_line_error(capsys.readouterr().err, "out of memory (Unable to allocate",
                          "choose a smaller --batch-size, --channels, --latent-dim or --samples")


def test_a_resume_folder_that_is_not_writable_is_named_as_such(finished_run, tmp_path, monkeypatch, capsys):
    """issue 13, item 11: a read-only --resume DIR was reported as "--out DIR is not writable"."""
    out = copy_of(finished_run, tmp_path)
    real_access = os.access
    monkeypatch.setattr(train.os, "access", lambda path, mode: False if str(path) == str(out) else
                        real_access(path, mode))  # chmod cannot stop root, who runs CI's containers
    assert train.main(["--resume", str(out)]) == 1
    assert_one_line_error(capsys.readouterr().err, f"--resume {out}: the folder is not writable")


def test_a_full_disk_while_locking_leaves_no_claim_and_names_the_lock(run_args, tmp_path, monkeypatch, capsys):
    """issue 13, item 8: every failed attempt left a .lock.* claim file behind, and the error named
    no file."""
    real_fdopen = os.fdopen

    class FullDisk:
        def __init__(self, fd, mode):
            self.handle = real_fdopen(fd, mode)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

    out = tmp_path / "run"
    out.mkdir()
    monkeypatch.setattr(os, "fdopen", FullDisk)
    for _ in range(3):
        assert train.main(run_args(out)) == 1
        assert_one_line_error(capsys.readouterr().err, f"{out / '.lock'}: cannot write the lock file (No space left "
                                                       "on device)", "free space")
    assert os.listdir(out) == []


def test_resume_advice_for_a_checkpoint_that_disagrees_with_config_json_can_be_followed(finished_run, tmp_path,
                                                                                       capsys):
    """issue 13, item 3: the checkpoint said "pass --latent-dim 3", and passing it was refused with
    "drop --latent-dim"; the advice now points at the files, and following it works."""
    out = copy_of(finished_run, tmp_path)
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "latent_dim": 4}))
    assert train.main(["--resume", str(out), "--epochs", "3"]) == 1
    err = capsys.readouterr().err
    assert_one_line_error(err, "latent_dim=3, this model has latent_dim=4", "config.json must say the same",
                          "start a new --out folder")
    assert "pass --" not in err
    (out / "config.json").write_text(json.dumps(config))  # the advice: the checkpoint's own config
    assert train.main(["--resume", str(out), "--epochs", "3"]) == 0
    assert load_checkpoint(out / "checkpoint.npz").epoch == 3
