"""Ctrl-C stops a command with one line and exit status 130, wherever it lands (issue 13, item 1).

Python drops a KeyboardInterrupt raised inside a callback (a weakref's, a ``__del__``) with
"Exception ignored in ...", and training used to go on; during the start-up imports it gave a
traceback and exit -2. ``minivae/interrupts.py`` records every SIGINT and raises it again at the
next check (between steps, around file writes).
"""

import os
import random
import signal
import subprocess
import sys
import threading
import time
import weakref

import pytest
from tiny_data import cli_args, command_stderr_lines, write_dataset

from minivae import estimators, evaluate, plots, train
from minivae.interrupts import InterruptGuard, deferred_interrupts, installed_guard, interrupt_guard

REPEATS = 30  # a 1-in-10 race escapes 30 runs with probability 0.9^30 < 5 %


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("interrupts") / "data", 64, 16, 8, 8)


@pytest.fixture
def python_sigint(monkeypatch):
    """Python's own SIGINT handler (KeyboardInterrupt) and its own hook for dropped exceptions (which
    prints "Exception ignored in ..." on stderr; pytest's would turn it into a warning) around the
    test, as a command starts with."""
    monkeypatch.setattr(sys, "unraisablehook", sys.__unraisablehook__)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def argv(data_dir, out, epochs=1000):
    return cli_args(data_dir, out, "--quiet", epochs=epochs, batch_size=8, hidden=(8,), latent_dim=2)


def interrupt_in_a_callback():
    """SIGINT whose handler runs inside a weakref callback, where Python drops what it raises."""
    def callback(_):
        signal.raise_signal(signal.SIGINT)
        for _ in range(1000):  # the handler runs at one of these bytecodes, inside the callback
            pass

    class Doomed:
        pass

    doomed = Doomed()
    reference = weakref.ref(doomed, callback)
    del doomed
    return reference


def test_an_interrupt_dropped_in_a_callback_still_stops_the_run(data_dir, tmp_path, monkeypatch, capsys,
                                                                python_sigint):
    real_save_samples = plots.save_samples

    def save_samples(*args, **kwargs):
        interrupt_in_a_callback()
        return real_save_samples(*args, **kwargs)

    monkeypatch.setattr(plots, "save_samples", save_samples)
    out = tmp_path / "run"
    assert train.main(argv(data_dir, out, epochs=3)) == 130
    err = capsys.readouterr().err
    assert err.splitlines() == ["minivae-train: interrupted; no epoch was complete, so there is no checkpoint to "
                                "resume from"], err
    assert not (out / "checkpoint.npz").exists()


def test_evaluate_stops_too_when_the_interrupt_is_dropped(data_dir, tmp_path, monkeypatch, capsys, python_sigint):
    out = tmp_path / "run"
    assert train.main(argv(data_dir, out, epochs=1)) == 0
    real_elbo = estimators.elbo

    def elbo(*args, **kwargs):
        interrupt_in_a_callback()
        return real_elbo(*args, **kwargs)

    monkeypatch.setattr(estimators, "elbo", elbo)
    assert evaluate.main([str(out), "--iw-samples", "4", "--backend", "numpy", "--quiet"]) == 130
    assert capsys.readouterr().err.splitlines() == ["minivae-evaluate: interrupted; nothing was written"]
    assert not (out / "evaluation.json").exists()


@pytest.mark.slow  # 30 runs with random waits: about 8 s, the default tier's largest single cost
def test_ctrl_c_at_random_moments_always_stops_with_one_line(data_dir, tmp_path, capsys, python_sigint):
    """The race itself: SIGINT at a random moment of a run that would go on for 1000 epochs, REPEATS
    times. A second SIGINT after 5 s (the watchdog) ends a run that swallowed the first one.

    One uninterrupted epoch first: the first step loads the fused kernels, and Numba imports parts of
    itself then. A KeyboardInterrupt inside those imports stops that command as it should, but leaves
    Numba half-imported in this process, which every later run here would trip over. (A command is a
    process of its own, so there that costs nothing.) Without this warm-up, the test passed only when an
    earlier test had trained in the same process."""
    assert train.main(argv(data_dir, tmp_path / "warm-up", epochs=1)) == 0
    capsys.readouterr()
    chance = random.Random(13)
    for attempt in range(REPEATS):
        out = tmp_path / f"run{attempt}"
        delay = chance.uniform(0, 0.5)
        finished, watchdog_fired = threading.Event(), []

        def interrupt():
            started = time.monotonic()
            while installed_guard() is None and time.monotonic() < started + 1:  # main's guard is up
                time.sleep(0.001)
            time.sleep(delay)
            os.kill(os.getpid(), signal.SIGINT)
            if not finished.wait(5):
                watchdog_fired.append(True)
                os.kill(os.getpid(), signal.SIGINT)

        sender = threading.Thread(target=interrupt)
        sender.start()
        try:
            status = train.main(argv(data_dir, out))
        finally:
            finished.set()
            sender.join()
        err = capsys.readouterr().err
        assert not watchdog_fired, f"attempt {attempt} (SIGINT after {delay:.3f} s) went on training: {err}"
        assert status == 130, (attempt, delay, err)
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("minivae-train: interrupted; "), (attempt, delay, err)


SITECUSTOMIZE = """
import os, signal, sys

class InterruptDuringImport:
    def find_spec(self, name, path=None, target=None):
        if name == "numpy":  # the largest import left at start-up (matplotlib waits for the first picture)
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):  # the handler runs here, inside the import of minivae.train
                pass
        return None

sys.meta_path.insert(0, InterruptDuringImport())
"""


def test_ctrl_c_during_the_start_up_imports_is_one_line(data_dir, tmp_path):
    """SIGINT while ``python -m minivae.train`` imports NumPy: 130 and one line, no traceback."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-m", "minivae.train", *argv(data_dir, tmp_path / "run")],
                            capture_output=True, text=True, timeout=120, env=env)
    assert command_stderr_lines(result.stderr) == ["minivae-train: interrupted; nothing was written"], result.stderr
    assert result.returncode == 130
    assert not (tmp_path / "run").exists()


def test_the_guard_is_installed_only_for_the_commands():
    """Importing minivae as a library leaves SIGINT alone; a guard records and raises only while raising."""
    assert not isinstance(signal.getsignal(signal.SIGINT), InterruptGuard)
    guard = InterruptGuard()
    guard(signal.SIGINT, None)
    assert guard.pending
    with pytest.raises(KeyboardInterrupt):
        guard.check()
    guard.raising = True
    with pytest.raises(KeyboardInterrupt):
        guard(signal.SIGINT, None)


def test_an_interrupt_inside_deferred_interrupts_is_raised_when_the_block_ends(python_sigint):
    """The pictures of an epoch run inside ``deferred_interrupts``: a Ctrl-C there waits for the block
    (matplotlib's drawing state is never cut in the middle), then stops the run all the same."""
    reached = []
    with interrupt_guard():
        with pytest.raises(KeyboardInterrupt):
            with deferred_interrupts():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)  # the handler has run by now; it only recorded the interrupt
                reached.append("end of block")
    assert reached == ["end of block"]
