"""``mpiexec -n 2 python -m minivae.train --distributed`` is the same run as one process (issue 23).

Slow tests: real ranks under MPICH's ``mpiexec`` (the mpi extra), on the packaged fashion-mnist-small
with a small model. Stated tolerances: per-epoch losses to 1e-4 relative in float32 (the shards sum in
another order); the parameters in float64 to 1e-12 relative, and in float32 to float32 rounding with a
smooth activation (tanh). With ReLU two float32 runs that differ only in rounding part ways at the first
step where one ReLU input lies on different sides of 0 in the two (its gradient jumps there: on the
default model and fashion-mnist-small, one decoder unit at step 129, after which the parameters differ
by 1e-3 relative), so the float32 ReLU parameters are compared through the losses they give. A rank
that goes wrong on purpose is tests/mpi_scripts/failing_rank.py, rank 1 of an MPMD launch. One fast
test: --distributed outside a launcher is one line.
"""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest
from tiny_data import command_stderr_lines

from minivae import train
from minivae.checkpoint import load_checkpoint

ROOT = pathlib.Path(__file__).resolve().parent.parent
SMALL = ["--dataset", "fashion-mnist-small", "--hidden", "64", "--latent-dim", "8", "--batch-size", "100",
         "--seed", "3", "--no-download"]
LOSSES = ("train_loss", "test_loss", "test_loss_mean", "train_reconstruction", "train_kl")


def _env(**extra):
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", **extra}


def _train(out, *flags, ranks=None, timeout=180):
    """``python -m minivae.train`` (under ``mpiexec -n ranks ... --distributed`` when ranks is given)."""
    command = [sys.executable, "-m", "minivae.train", *SMALL, "--out", str(out), *flags]
    if ranks is not None:
        launcher = shutil.which("mpiexec")
        if launcher is None:
            pytest.fail('mpiexec is not on PATH: install the mpi extra, `pip install -e ".[mpi]"`')
        command = [launcher, "-n", str(ranks), *command, "--distributed"]
    return subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)


def _history(out):
    return load_checkpoint(pathlib.Path(out) / "checkpoint.npz").extra["history"]


def _assert_same_losses(history, reference):
    assert len(history) == len(reference)
    for ours, theirs in zip(history, reference):
        for key in LOSSES:
            assert ours[key] == pytest.approx(theirs[key], rel=1e-4), (ours["epoch"], key)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """2 epochs in one process, float32 and float64: the reference runs."""
    runs = {}
    for dtype in ("float32", "float64"):
        out = tmp_path_factory.mktemp("one") / dtype
        done = _train(out, "--epochs", "2", "--dtype", dtype, "--quiet")
        assert done.returncode == 0, done.stderr
        runs[dtype] = out
    return runs


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """2 epochs on 2 ranks, float32: (its folder, the command's result)."""
    out = tmp_path_factory.mktemp("two") / "ranks"
    return out, _train(out, "--epochs", "2", ranks=2)


def _parameters(out):
    checkpoint = load_checkpoint(pathlib.Path(out) / "checkpoint.npz")
    return np.concatenate([checkpoint.params[name].ravel().astype(np.float64) for name in sorted(checkpoint.params)])


@pytest.mark.slow
def test_two_ranks_train_the_same_run_as_one_process(one_process, two_ranks):
    out, done = two_ranks
    assert done.returncode == 0, done.stderr
    assert command_stderr_lines(done.stderr) == []
    _assert_same_losses(_history(out), _history(one_process["float32"]))
    lines = [line for line in done.stdout.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in lines] == ["1/2", "2/2"]  # rank 0 alone reports
    assert json.loads((out / "config.json").read_text()) == json.loads((one_process["float32"] / "config.json")
                                                                       .read_text())


@pytest.mark.slow
def test_two_ranks_in_float64_give_the_one_process_parameters(one_process, tmp_path):
    out = tmp_path / "ranks"
    done = _train(out, "--epochs", "2", "--dtype", "float64", "--quiet", ranks=2)
    assert done.returncode == 0, done.stderr
    ours = np.load(out / "checkpoint.npz")
    theirs = np.load(one_process["float64"] / "checkpoint.npz")
    names = [name for name in ours.files if name.startswith("param/")]
    assert names
    for name in names:
        error = np.linalg.norm(ours[name] - theirs[name]) / np.linalg.norm(theirs[name])
        assert error < 1e-12, (name, error)


@pytest.mark.slow
def test_two_float32_ranks_give_the_one_process_parameters_to_rounding_with_a_smooth_activation(tmp_path):
    runs = {ranks: tmp_path / f"ranks-{ranks}" for ranks in (None, 2)}
    for ranks, out in runs.items():
        done = _train(out, "--epochs", "2", "--activation", "tanh", "--quiet", ranks=ranks)
        assert done.returncode == 0, done.stderr
    expected = _parameters(runs[None])
    error = np.max(np.abs(_parameters(runs[2]) - expected)) / np.max(np.abs(expected))
    assert error <= 16 * np.finfo(np.float32).eps, error  # measured: 2e-7


@pytest.mark.slow
def test_a_resumed_run_continues_the_same_run_on_two_ranks_or_on_one(one_process, two_ranks, tmp_path):
    out = tmp_path / "ranks"
    assert _train(out, "--epochs", "1", "--quiet", ranks=2).returncode == 0
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    for folder, ranks in ((out, 2), (copy, None)):
        done = _train(folder, "--resume", str(folder), "--epochs", "2", "--quiet", ranks=ranks)
        assert done.returncode == 0, done.stderr
        _assert_same_losses(_history(folder), _history(one_process["float32"]))
    np.testing.assert_array_equal(_parameters(out), _parameters(two_ranks[0]))  # on 2 ranks: as if never stopped


def _rank_pid(marker, rank):
    """The process id of rank ``rank`` of the job whose environment holds ``marker``."""
    for entry in pathlib.Path("/proc").iterdir():
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if marker.encode() in environ and f"PMI_RANK={rank}".encode() in environ:
            return int(entry.name)
    return None


@pytest.mark.slow
def test_a_killed_rank_ends_the_run_within_30_seconds_and_the_checkpoint_stays(tmp_path):
    out, marker = tmp_path / "ranks", f"MINIVAE_TEST_JOB={uuid.uuid4().hex}"
    command = [shutil.which("mpiexec"), "-n", "2", sys.executable, "-m", "minivae.train", *SMALL, "--out", str(out),
               "--epochs", "200", "--quiet", "--distributed"]
    job = subprocess.Popen(command, cwd=ROOT, env=_env(**dict([marker.split("=")])), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "checkpoint.npz").exists() and time.monotonic() < deadline and job.poll() is None:
            time.sleep(0.1)
        pid = _rank_pid(marker, 1)
        assert pid is not None and job.poll() is None, "the job did not reach its first checkpoint"
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        job.wait(timeout=30)
        assert time.monotonic() - killed < 30
    finally:
        if job.poll() is None:
            job.kill()
        job.communicate()
    assert job.returncode != 0
    assert load_checkpoint(out / "checkpoint.npz").epoch >= 1  # the last complete epoch, readable


@pytest.mark.slow
def test_a_rank_that_fails_alone_ends_every_rank_with_one_line_naming_it(tmp_path):
    """MPMD: rank 1 is given a data file that does not exist, so it alone fails while rank 0 waits."""
    out, launcher = tmp_path / "ranks", shutil.which("mpiexec")
    rank = [sys.executable, "-m", "minivae.train", "--out", str(out), "--epochs", "2", "--quiet", "--distributed",
            "--hidden", "64", "--latent-dim", "8", "--batch-size", "100"]
    command = [launcher, "-n", "1", *rank, "--dataset", "fashion-mnist-small", ":",
               "-n", "1", *rank, "--data-file", str(tmp_path / "missing.npz")]
    start = time.monotonic()
    done = subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and time.monotonic() - start < 30
    lines = command_stderr_lines(done.stderr)  # and no line of MPICH's about MPI_Abort
    assert len(lines) == 1 and "(rank 1 of 2)" in lines[0] and "missing.npz" in lines[0], done.stderr


def _with_failing_rank_1(out, mode, step):
    """2 epochs on 2 ranks, rank 1 going wrong (``mode``, tests/mpi_scripts/failing_rank.py) at its
    training step ``step``; returns (the CompletedProcess, its seconds)."""
    flags = [*SMALL, "--out", str(out), "--epochs", "2", "--quiet", "--distributed"]
    command = [shutil.which("mpiexec"), "-n", "1", sys.executable, "-m", "minivae.train", *flags, ":",
               "-n", "1", sys.executable, str(ROOT / "tests" / "mpi_scripts" / "failing_rank.py"), mode, str(step),
               *flags]
    start = time.monotonic()
    done = subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    return done, time.monotonic() - start


STEPS_PER_EPOCH = 100  # fashion-mnist-small's 10,000 training images in batches of 100


@pytest.mark.slow
def test_a_rank_out_of_memory_ends_every_rank_with_one_line_naming_it(tmp_path):
    done, seconds = _with_failing_rank_1(tmp_path / "ranks", "memory", STEPS_PER_EPOCH + 2)
    assert done.returncode != 0 and seconds < 60, (seconds, done.stderr)
    lines = command_stderr_lines(done.stderr)
    assert len(lines) == 1 and lines[0].startswith("minivae-train (rank 1 of 2): error: out of memory (rank 1 runs "
                                                   "out of memory on purpose); choose a smaller --batch-size"), lines
    assert load_checkpoint(tmp_path / "ranks" / "checkpoint.npz").epoch == 1  # rank 0's epoch 1, whole


@pytest.mark.slow
def test_ranks_whose_parameters_part_ways_stop_the_run_with_one_line(tmp_path):
    """Rank 1 changes one parameter by one unit in the last place in epoch 2: the comparison after
    epoch 2 stops the run before epoch 2's checkpoint."""
    done, _ = _with_failing_rank_1(tmp_path / "ranks", "drift", STEPS_PER_EPOCH + 2)
    assert done.returncode != 0
    lines = command_stderr_lines(done.stderr)
    assert len(lines) == 1 and "after epoch 2: the parameters of rank(s) [1] differ from rank 0's" in lines[0], lines
    assert load_checkpoint(tmp_path / "ranks" / "checkpoint.npz").epoch == 1


@pytest.mark.slow
def test_the_same_error_on_every_rank_is_printed_once(tmp_path):
    done = _train(tmp_path / "ranks", "--epochs", "2", "--data-dir", str(tmp_path / "none"), ranks=2)
    assert done.returncode != 0
    lines = command_stderr_lines(done.stderr)
    assert len(lines) == 1 and "(rank 0 of 2)" in lines[0], done.stderr


def test_distributed_without_a_launcher_is_one_line_saying_how_to_start_it(tmp_path, capsys, monkeypatch):
    for name in ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert train.main(["--distributed", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and ("mpiexec" in err[0] or "pip install" in err[0])
    assert not (tmp_path / "run").exists()
