"""CPU threads: Backend.split_rows, and the same bits from the code that uses it on any number of threads."""

import os
import subprocess
import sys
import threading
import warnings

import numpy as np
import pytest

from minivae.backend import numpy_backend
from minivae.threads import RowThreads, cpu_thread_count
from minivae.layers import mlp
from minivae.likelihoods import Bernoulli
from minivae.model import VAE
from minivae.optim import SGD, Adam


def _backend(threads, min_elements=1, dtype="float64"):
    """A NumPy backend on ``threads`` threads that splits arrays down to ``min_elements`` per thread."""
    backend = numpy_backend(dtype, seed=0, threads=threads)
    backend.row_threads.min_elements_per_thread = min_elements
    return backend


@pytest.mark.parametrize("threads", [1, 2, 3, 5])
@pytest.mark.parametrize("rows", [1, 2, 7, 100])
def test_split_rows_hands_every_row_to_exactly_one_block(threads, rows):
    counts = np.zeros((rows, 3))
    calls = []

    def count(block):
        calls.append(block.shape[0])
        block += 1

    _backend(threads).split_rows(count, counts)
    assert np.array_equal(counts, np.ones((rows, 3)))
    assert len(calls) == min(threads, rows) and sum(calls) == rows
    assert max(calls) - min(calls) <= 1  # blocks as even as the rows allow


def test_split_rows_runs_the_blocks_at_the_same_time():
    barrier = threading.Barrier(2, timeout=10)  # broken (and raising) unless both blocks wait at once
    idents = set()

    def meet(block):
        idents.add(threading.get_ident())
        barrier.wait()

    _backend(2).split_rows(meet, np.zeros((4, 2)))
    assert len(idents) == 2 and threading.get_ident() in idents


def test_split_rows_leaves_small_arrays_whole():
    backend = numpy_backend("float32", threads=4)
    shapes = []
    backend.split_rows(lambda a: shapes.append(a.shape), np.zeros((128, 400), dtype=np.float32))
    assert shapes == [(128, 400)]  # 51,200 values: fewer than 2 * min_elements_per_thread
    shapes.clear()
    backend.split_rows(lambda a: shapes.append(a.shape), np.zeros((128, 784), dtype=np.float32))
    assert sorted(shapes) == [(42, 784), (43, 784), (43, 784)]  # 100,352 values: three blocks


def test_an_error_in_another_thread_reaches_the_caller():
    def fail_on_the_last_rows(block):
        if block[0, 0] == 1:
            raise ValueError("block failed")

    with pytest.raises(ValueError, match="block failed"):
        _backend(2).split_rows(fail_on_the_last_rows, np.array([[0.0], [1.0]]))


def test_thread_count_follows_the_blas_variables(monkeypatch):
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "3")
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    assert cpu_thread_count() == 3
    monkeypatch.delenv("OPENBLAS_NUM_THREADS")
    assert cpu_thread_count() == 5
    monkeypatch.setenv("OMP_NUM_THREADS", "many")
    assert cpu_thread_count() >= 1
    assert numpy_backend(threads=None).threads == cpu_thread_count()
    with pytest.raises(ValueError, match="threads must be >= 1"):
        numpy_backend(threads=0)


def test_with_seed_shares_the_threads():
    backend = _backend(3)
    assert backend.with_seed(7).threads == 3 and backend.with_seed(7).row_threads is backend.row_threads


def test_every_block_has_finished_when_one_raises():
    finished = []

    def slow_unless_first(block):
        if block[0, 0] == 0:
            raise ValueError("first block failed")
        threading.Event().wait(0.2)
        finished.append(block[0, 0])

    with pytest.raises(ValueError, match="first block failed"):
        _backend(3).split_rows(slow_unless_first, np.arange(3.0).reshape(3, 1))
    assert sorted(finished) == [1.0, 2.0]  # nothing is left writing after the error


def test_arrays_of_different_lengths_are_refused():
    with pytest.raises(ValueError, match="one common first dimension"):
        _backend(2).split_rows(lambda a, b: None, np.zeros((4, 2)), np.zeros((1, 2)))
    with pytest.raises(ValueError, match="one common first dimension"):
        _backend(2).split_rows(lambda a: None, np.zeros(()))


def test_a_split_inside_a_block_runs_in_that_block():
    backend = _backend(2)
    counts = np.zeros((4, 4))

    def outer(block):
        backend.split_rows(inner, block.T)  # a worker waiting on its own pool would hang here

    def inner(block):
        block += 1

    caller = threading.Thread(target=backend.split_rows, args=(outer, counts), daemon=True)
    caller.start()
    caller.join(timeout=10)
    assert not caller.is_alive(), "a split inside a block hung"
    assert np.array_equal(counts, np.ones((4, 4)))


def test_a_forked_child_starts_its_own_workers():
    threads = RowThreads(2)
    threads.min_elements_per_thread = 1
    counts = np.zeros((2, 1))
    threads.run(lambda block: block.__iadd__(1), counts)
    pool = threads._pool
    threads._pool_pid = -1  # as seen from a child forked after the pool started
    threads.run(lambda block: block.__iadd__(1), counts)
    assert threads._pool is not pool and np.array_equal(counts, [[2.0], [2.0]])


@pytest.mark.parametrize("make_optimizer", [lambda ps: Adam(ps, lr=0.01, weight_decay=0.1),
                                            lambda ps: SGD(ps, lr=0.01, momentum=0.9)], ids=["adam", "sgd"])
def test_optimizer_steps_are_the_same_bits_on_any_number_of_threads(make_optimizer):
    results = []
    for threads in (1, 2, 3):
        model = VAE(input_dim=6, hidden=(5,), latent_dim=2, backend=_backend(threads, dtype="float32"))
        optimizer = make_optimizer(model.parameters())
        grads = np.random.default_rng(1).standard_normal((3, model.buffer.grad.size)).astype(np.float32)
        for grad in grads:
            model.buffer.grad[...] = grad
            optimizer.step()
        state = optimizer.state_dict()
        results.append([model.buffer.data.copy()] + [np.concatenate([a.ravel() for a in state[kind].values()])
                                                      for kind in optimizer.moment_names])
    for other in results[1:]:
        for expected, got in zip(results[0], other):
            assert np.array_equal(expected, got)


def test_bernoulli_rows_on_threads_are_the_same_bits():
    rng = np.random.default_rng(2)
    logits = (rng.standard_normal((7, 9)) * 5).astype(np.float32)
    x = rng.random((7, 9)).astype(np.float32)
    nll_1, grad_1 = Bernoulli(_backend(1, dtype="float32")).nll_and_grad(logits, x)
    nll_3, grad_3 = Bernoulli(_backend(3, dtype="float32")).nll_and_grad(logits, x)
    assert np.array_equal(nll_1, nll_3) and np.array_equal(grad_1, grad_3)
    assert nll_1.dtype == grad_1.dtype == np.float32
    np.testing.assert_allclose(nll_1, Bernoulli(_backend(1, dtype="float32")).nll(logits, x), rtol=1e-6)
    nll_mixed, grad_mixed = Bernoulli(_backend(3, dtype="float32")).nll_and_grad(logits, x.astype(np.float64))
    assert nll_mixed.dtype == grad_mixed.dtype == np.float64  # as nll() and whole-array formulas give


def test_linear_relu_on_threads_is_the_same_bits():
    """The fused Linear + ReLU (its bias-and-ReLU pass split over rows) on 1, 2 and 3 threads."""
    rng = np.random.default_rng(4)
    x, dy = rng.standard_normal((33, 10)).astype(np.float32), rng.standard_normal((33, 6)).astype(np.float32)
    results = []
    for threads in (1, 2, 3):
        network = mlp([10, 8, 6], "relu", _backend(threads, dtype="float32"), "n")
        assert network.layers[0].fuses(network.layers[1])
        results.append([network.forward(x), network.backward(dy)] + [p.grad.copy() for p in network.parameters()])
    for other in results[1:]:
        for expected, got in zip(results[0], other):
            assert np.array_equal(expected, got)


def test_a_default_training_step_is_the_same_bits_on_one_and_two_threads():
    """The default model and batch, default block sizes: Adam and the likelihood really split."""
    data = np.random.default_rng(3).random((128, 784), dtype=np.float32)
    results = []
    for threads in (1, 2):
        backend = numpy_backend("float32", seed=0, threads=threads)
        model = VAE(backend=backend)
        optimizer = Adam(model.parameters())
        for _ in range(2):
            loss = model.loss_and_backward(data)
            optimizer.step()
        results.append((float(loss.total), model.buffer.data.copy()))
    assert results[0][0] == results[1][0]
    assert np.array_equal(results[0][1], results[1][1])


@pytest.mark.slow  # a fresh interpreter each
@pytest.mark.parametrize("preset, expected", [(None, "18"), ("7", "7")])
def test_importing_minivae_sets_the_openblas_thread_timeout_unless_set(preset, expected):
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    if preset is not None:
        env["OPENBLAS_THREAD_TIMEOUT"] = preset
    # what NumPy (and so OpenBLAS) sees when it is first imported, through `import minivae`
    code = ("import os, sys\n"
            "class Spy:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'numpy':\n"
            "            print(os.environ.get('OPENBLAS_THREAD_TIMEOUT'))\n"
            "sys.meta_path.insert(0, Spy())\n"
            "import minivae\n")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == expected


def test_the_callers_errstate_holds_in_every_block():
    """issue 13, item 4: np.errstate is per thread, so the likelihood's blocks on the worker threads
    warned (8 RuntimeWarnings before the one-line NaN error of a diverging run) although the
    training loop silences them. Infinite logits make softplus(l) - x*l = inf - inf in every block."""
    backend = numpy_backend("float64", threads=2)
    backend.kernels = None  # NumPy's code: the fused kernels (minivae/kernels/cpu.py) raise no NumPy warnings
    rows = 4 * RowThreads.min_elements_per_thread // 8
    logits = np.full((rows, 8), np.inf)
    x = np.ones((rows, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning in any thread would be raised there, and reach us
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            nll, _ = Bernoulli(backend).nll_and_grad(logits, x)
    assert np.isnan(nll).all()
    with pytest.warns(RuntimeWarning):  # outside the errstate the warning is there: the test can fail
        Bernoulli(backend).nll_and_grad(logits, x)
