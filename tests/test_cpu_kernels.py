"""The fused CPU kernels (minivae/kernels/cpu.py) against the plain NumPy code they replace, which
stays the reference: the same bits where the operations are the same (Adam, SGD, ReLU), within the
tolerances stated below where they differ (a polynomial exp and log1p, libm's exp, sums in another
order). Also: the same bits on any number of threads, the backend's choice of path, and the disk cache."""

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
import scipy.special

from minivae import backend as backend_module
from minivae.backend import numpy_backend
from minivae.gaussian import head_gradient, kl_divergence, reparameterize
from minivae.kernels import bernoulli_cpu, cpu
from minivae.layers import Parameter, ReLU, mlp
from minivae.likelihoods import Bernoulli
from minivae.model import VAE
from minivae.optim import SGD, Adam

DTYPES = ["float32", "float64"]
ULPS = 4
"""Tolerance where the operations differ: 4 units in the last place (eps of the dtype) of the
values' scale. The polynomial exp and log1p are within ~1 ulp (``polynomials``), as are NumPy's and
libm's; a few operations after them can add an ulp each."""


def _pair(dtype, threads=1, min_elements=None):
    """(fused backend, plain backend): NumPy with and without the kernels, same seed and threads."""
    fused = numpy_backend(dtype, seed=0, threads=threads)
    assert isinstance(fused.kernels, cpu.CpuKernels)
    if min_elements is not None:
        fused.row_threads.min_elements_per_thread = min_elements
    plain = numpy_backend(dtype, seed=0, threads=threads)
    plain.kernels = None
    return fused, plain


def _close(actual, expected, scale, dtype):
    """|actual - expected| <= ULPS * eps * scale, elementwise (scale broadcasts); NaN and infinities
    where the other has the same."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.dtype == expected.dtype == np.dtype(dtype)
    assert np.array_equal(np.isnan(actual), np.isnan(expected))
    infinite = np.isinf(expected)
    assert np.array_equal(actual[infinite], expected[infinite])
    finite = np.isfinite(expected)
    error = np.abs(actual[finite].astype(np.float64) - expected[finite])
    bound = ULPS * np.finfo(dtype).eps * np.broadcast_to(scale, expected.shape)[finite]
    assert (error <= bound).all(), float((error / bound).max())


def _random(dtype, shape, scale=1.0, seed=0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)


# --------------------------------------------------------------------------------- optimizers

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("make_optimizer", [
    lambda ps, be: Adam(ps, lr=0.01, backend=be),
    lambda ps, be: Adam(ps, lr=0.003, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1, backend=be),
    lambda ps, be: SGD(ps, lr=0.05, backend=be),
    lambda ps, be: SGD(ps, lr=0.05, momentum=0.9, weight_decay=0.01, backend=be)])
def test_optimizer_kernels_give_the_plain_update_bit_for_bit(dtype, make_optimizer):
    fused, plain = _pair(dtype, threads=3, min_elements=7)
    params = {}
    for name, backend in (("fused", fused), ("plain", plain)):
        ps = [Parameter("a.W", _random(dtype, (13, 5))), Parameter("a.b", _random(dtype, (5,), seed=1))]
        optimizer = make_optimizer(ps, backend)
        for step in range(4):
            for k, p in enumerate(ps):
                p.grad[...] = _random(dtype, p.data.shape, 10.0 ** (step - 2), seed=10 * step + k)
            optimizer.step()
        params[name] = (ps, optimizer.state_dict())
    (fused_ps, fused_state), (plain_ps, plain_state) = params["fused"], params["plain"]
    for f, p in zip(fused_ps, plain_ps):
        assert f.data.dtype == np.dtype(dtype) and np.array_equal(f.data, p.data)
    for kind in plain_state:
        if kind not in ("step", "hyperparameters"):
            assert all(np.array_equal(fused_state[kind][n], plain_state[kind][n]) for n in plain_state[kind])


def test_the_adam_kernel_is_what_the_optimizer_runs(monkeypatch):
    """Break the kernel's update and the fused step must follow it (the comparison above has teeth)."""
    fused, _ = _pair("float64")
    p = Parameter("a.W", np.ones(4))
    p.grad[...] = 1.0
    calls = []
    monkeypatch.setattr(cpu, "_adam", lambda theta, *rest: calls.append(theta.size))
    Adam([p], lr=0.1, backend=fused).step()
    assert calls == [4] and (p.data == 1).all()


# ---------------------------------------------------------------------------------------- ReLU

@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_kernels_give_the_plain_results_bit_for_bit(dtype):
    fused, plain = _pair(dtype, threads=2, min_elements=3)
    x = _random(dtype, (9, 4, 3))
    x[0, :4, 0] = [0.0, -0.0, np.inf, -np.inf]
    x[1, 0, :] = np.nan
    dy = _random(dtype, x.shape, seed=1)
    layers = [ReLU("r", kernels=fused.kernels), ReLU("r", kernels=plain.kernels)]
    with np.errstate(invalid="ignore"):  # inf * 0 in the plain code: NaN, as in the kernel
        ys = [layer.forward(x) for layer in layers]
        dxs = [layer.backward(dy) for layer in layers]
    for a, b in (ys, dxs):
        assert a.dtype == b.dtype == np.dtype(dtype) and a.shape == b.shape
        assert np.array_equal(a.view(f"u{a.itemsize}"), b.view(f"u{b.itemsize}"))  # bits, NaN and -0.0 too


def _mlp_pass(backend, x, dy):
    """Forward and backward of a Linear-ReLU-Linear-ReLU-Linear network: [output, dx, every grad]."""
    network = mlp([x.shape[1], 11, 9, dy.shape[1]], "relu", backend, "n")
    for layer in network.layers:  # the same values on both backends, in the backend's dtype
        for p in layer.parameters():
            p.data = _random(backend.dtype, p.data.shape, seed=len(p.name) + p.data.size)
    y = network.forward(x)
    return [y, network.backward(dy)] + [p.grad.copy() for p in network.parameters()]


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_relu_kernels_give_the_plain_results_bit_for_bit(dtype):
    """Linear + ReLU fused (the bias and the ReLU in one pass; dy = da [a > 0] and db = sum_rows dy
    in one pass) against the plain Linear and ReLU: the same operations in the same order (db adds
    the rows 0 to B-1, as NumPy does), so the same bits, in float32 and float64."""
    fused, plain = _pair(dtype, threads=2, min_elements=5)
    x = _random(dtype, (301, 13), seed=1)
    x[:, 0] *= 1e4  # terms of very different sizes: an other order of db's sum would round differently
    dy = _random(dtype, (301, 7), seed=2)
    network = mlp([13, 11, 9, 7], "relu", fused, "n")
    assert all(network.layers[i].fuses(network.layers[i + 1]) for i in (0, 2))  # the fused path runs
    assert not mlp([13, 11, 7], "relu", plain, "n").layers[0].fuses(ReLU("r"))
    results = [_mlp_pass(backend, x, dy) for backend in (fused, plain)]
    for a, b in zip(*results):
        assert a.dtype == b.dtype == np.dtype(dtype) and a.shape == b.shape
        assert np.array_equal(a.view(f"u{a.itemsize}"), b.view(f"u{b.itemsize}"))


# ------------------------------------------------------------------------ Bernoulli likelihood

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", [1.0, 8.0, 300.0])
def test_bernoulli_kernel_matches_the_plain_code(dtype, scale):
    fused, plain = _pair(dtype, threads=3, min_elements=50)
    logits = _random(dtype, (40, 97), scale)
    x = np.random.default_rng(1).random(logits.shape).astype(dtype)
    x[::3] = np.round(x[::3])  # binary rows too
    nll_fused, dlogits_fused = Bernoulli(fused).nll_and_grad(logits, x)
    nll_plain, dlogits_plain = Bernoulli(plain).nll_and_grad(logits, x)
    # the NLL: the sum of D terms, each within ULPS of its size. The gradient sigmoid(l) - x: the
    # plain exp(l - softplus(l)) subtracts two numbers of size |l|, so it is exact to ulps of 1 + |l|;
    # the kernel's 1 / (1 + e^-|l|) to ulps of 1, against the float64 truth.
    terms_scale = (np.logaddexp(0, np.abs(logits.astype(np.float64))) + np.abs(x * logits)).sum(axis=1)
    _close(nll_fused, nll_plain, terms_scale, dtype)
    _close(dlogits_fused, dlogits_plain, 1 + np.abs(logits), dtype)
    assert np.array_equal(Bernoulli(fused).nll(logits, x), nll_fused)  # the NLL alone: the same operations
    _close(Bernoulli(plain).nll(logits, x), nll_plain, terms_scale, dtype)
    truth = scipy.special.expit(logits.astype(np.longdouble)) - x
    assert (np.abs(dlogits_fused - truth) <= 2 * np.finfo(dtype).eps).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_bernoulli_kernel_at_extreme_and_non_finite_logits(dtype):
    fused, plain = _pair(dtype)
    big = np.finfo(dtype).max
    logits = np.array([[0.0, -0.0, 1e-30, -1e-30, 20.0, -20.0, 88.0, -88.0, 104.0, -104.0, 745.0, -745.0,
                        1e4, -1e4, 1e30, -1e30, big, -big, np.inf, -np.inf, np.nan]], dtype=dtype).repeat(2, axis=0)
    x = np.zeros_like(logits)
    x[1] = 1.0
    for column in range(logits.shape[1]):  # one value per row, so that a NaN does not hide the others
        l, xs = np.ascontiguousarray(logits[:, column:column + 1]), np.ascontiguousarray(x[:, column:column + 1])
        nll_fused, d_fused = Bernoulli(fused).nll_and_grad(l, xs)
        with np.errstate(over="ignore", invalid="ignore"):  # inf - inf in the plain code: NaN, as in the kernel
            nll_plain, d_plain = Bernoulli(plain).nll_and_grad(l, xs)
            scale = np.where(np.isfinite(l[:, 0]), np.abs(l[:, 0]) + 1, np.inf)
        _close(nll_fused, nll_plain, scale, dtype)
        _close(d_fused, d_plain, scale[:, None], dtype)
        assert np.array_equal(Bernoulli(fused).nll(l, xs), nll_fused, equal_nan=True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_kernels_softplus_and_sigmoid_are_within_3_ulps_of_the_truth(dtype):
    """With one pixel per row and x = 0, the kernel's NLL is softplus(l) and its gradient sigmoid(l):
    both against long-double references over the whole range of its polynomial exp (and beyond),
    within 3 ulps, or 2 of the smallest subnormals where the truth is subnormal."""
    cutoff = float(bernoulli_cpu.polynomials(dtype).exp_cutoff)
    logits = np.concatenate([np.linspace(-cutoff - 5, cutoff + 5, 100001), np.linspace(-2, 2, 20001)])
    logits = logits.astype(dtype)[:, None]
    fused, _ = _pair(dtype)
    softplus, sigmoid = fused.kernels.bernoulli_nll_and_grad(logits, np.zeros_like(logits))
    wide = logits.astype(np.longdouble)
    for got, truth in ((softplus, np.logaddexp(np.longdouble(0), wide)), (sigmoid, scipy.special.expit(wide))):
        normal = truth >= np.finfo(dtype).smallest_normal
        ulp = np.spacing(truth.astype(dtype)).astype(np.longdouble)
        error = np.abs(got - truth)
        assert (error[normal] <= 3 * ulp[normal]).all()
        assert (error[~normal] <= 2 * np.finfo(dtype).smallest_subnormal).all()


# ---------------------------------------------------------------------- the Gaussian posterior

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_samples", [1, 3])
def test_gaussian_kernels_match_the_plain_code(dtype, n_samples):
    fused, plain = _pair(dtype, threads=2, min_elements=4)
    mu, logvar = _random(dtype, (11, 4)), _random(dtype, (11, 4), 3.0, seed=1)
    eps = _random(dtype, (n_samples, 11, 4), seed=2)
    dz = _random(dtype, (n_samples * 11, 4), seed=3)
    std = np.exp(0.5 * logvar.astype(np.float64))
    z_scale = np.abs(mu) + (np.abs(eps) * std).reshape(eps.shape)
    _close(reparameterize(np, mu, logvar, eps, fused.kernels), reparameterize(np, mu, logvar, eps),
           z_scale.reshape(-1, 4), dtype)
    kl_scale = (1 + np.abs(logvar) + mu.astype(np.float64) ** 2 + np.exp(logvar.astype(np.float64))).sum(axis=1)
    _close(kl_divergence(np, mu, logvar, fused.kernels), kl_divergence(np, mu, logvar), kl_scale, dtype)
    head_scale = np.concatenate([np.abs(dz).reshape(eps.shape).sum(axis=0) + np.abs(mu),
                                 (np.abs(dz).reshape(eps.shape) * np.abs(eps)).sum(axis=0) * std
                                 + np.exp(logvar.astype(np.float64)) + 1], axis=1)
    _close(head_gradient(np, dz, mu, logvar, eps, fused.kernels), head_gradient(np, dz, mu, logvar, eps),
           head_scale, dtype)


# ------------------------------------------------------------------------- the whole training step

def test_training_steps_are_the_same_bits_on_1_and_3_threads_on_both_paths(monkeypatch):
    """Each path on 3 threads against itself on one; the two paths against each other within float32
    rounding (Adam's, ReLU's bits are equal; the likelihood's and the Gaussian pieces' differ by ulps)."""
    threads = 3
    results = {}
    for path in ("fused", "plain"):
        monkeypatch.setenv("MINIVAE_KERNELS", path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for count in (1, threads):
                backend = numpy_backend("float32", seed=3, threads=count)
                backend.row_threads.min_elements_per_thread = 16
                model = VAE(30, (16,), 3, n_samples=2, backend=backend)
                adam = Adam(model.parameters())
                x = backend.uniform((10, 30))
                for _ in range(3):
                    loss = model.loss_and_backward(x)
                    adam.step()
                results[path, count] = (float(loss.total), model.buffer.data.copy())
        assert results[path, 1][0] == results[path, threads][0]
        assert np.array_equal(results[path, 1][1], results[path, threads][1])
    fused, plain = results["fused", 1], results["plain", 1]
    assert fused[0] == pytest.approx(plain[0], rel=1e-5)
    np.testing.assert_allclose(fused[1], plain[1], rtol=0, atol=1e-5)


# ------------------------------------------------- the gradient check sees the fused kernels

def _halve_dlogvar(original):
    def head_gradient(self, *args):
        dmu, dlogvar = original(self, *args)
        return dmu, dlogvar * 0.5

    return head_gradient


def _shift_dlogits(original):
    def bernoulli_nll_and_grad(self, logits, x):
        nll, dlogits = original(self, logits, x)
        return nll, dlogits + 1e-3

    return bernoulli_nll_and_grad


@pytest.mark.parametrize("kernel, break_it, broken", [
    ("head_gradient", _halve_dlogvar, {"encoder"}),
    ("bernoulli_nll_and_grad", _shift_dlogits, {"encoder", "decoder"})])
def test_the_gradient_check_fails_when_a_fused_kernel_is_broken(monkeypatch, capsys, kernel, break_it, broken):
    """minivae-gradcheck on the default (fused) NumPy backend passes, and fails where a fused kernel's
    gradient is broken: so the model's gradient checks, on that backend, check the kernels."""
    from minivae.gradcheck import main

    monkeypatch.delenv("MINIVAE_KERNELS", raising=False)
    assert main([]) == 0
    monkeypatch.setattr(cpu.CpuKernels, kernel, break_it(getattr(cpu.CpuKernels, kernel)))
    capsys.readouterr()
    assert main([]) == 1
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith(("encoder", "decoder"))]
    assert {row[0].split(".")[0] for row in rows if row[-1] == "FAIL"} == broken


# ------------------------------------------------------------------------------ choosing the path

def test_minivae_kernels_plain_runs_the_plain_code_and_says_so(monkeypatch):
    monkeypatch.setenv("MINIVAE_KERNELS", "plain")
    with pytest.warns(UserWarning, match="MINIVAE_KERNELS=plain") as record:
        backend = numpy_backend("float32")
    assert backend.kernels is None and len(record) == 1
    monkeypatch.setenv("MINIVAE_KERNELS", "fused")
    assert isinstance(numpy_backend("float32").kernels, cpu.CpuKernels)


def test_a_bad_minivae_kernels_value_is_refused_in_one_line(monkeypatch):
    monkeypatch.setenv("MINIVAE_KERNELS", "fast")
    with pytest.raises(ValueError, match=r"MINIVAE_KERNELS='fast' is not one of \('fused', 'plain'\)"):
        numpy_backend("float32")


def test_without_numba_the_plain_code_runs_and_says_so(monkeypatch):
    monkeypatch.delenv("MINIVAE_KERNELS", raising=False)
    monkeypatch.setitem(sys.modules, "numba", None)  # `import numba` raises ImportError
    monkeypatch.delitem(sys.modules, "minivae.kernels.cpu")
    with pytest.warns(UserWarning, match="fused kernels need Numba") as record:
        backend = numpy_backend("float32")
    assert backend.kernels is None and len(record) == 1


@pytest.mark.slow
def test_the_plain_path_warns_once_per_process():
    code = ("import warnings, minivae.backend as b\n"
            "with warnings.catch_warnings(record=True) as caught:\n"
            "    warnings.simplefilter('default')\n"
            "    [b.numpy_backend() for _ in range(3)]\n"
            "print(len(caught))")
    env = {**_env(), "MINIVAE_KERNELS": "plain"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"


@pytest.mark.slow
def test_a_second_process_loads_the_kernels_from_the_disk_cache_without_compiling(tmp_path):
    """cache=True: a first process compiles (into NUMBA_CACHE_DIR, here a fresh folder), a second
    one only loads. Numba counts both per kernel (``Dispatcher.stats``)."""
    code = ("import json, numpy as np\n"
            "from minivae.kernels import bernoulli_cpu, cpu\n"
            "from minivae.threads import RowThreads\n"
            "kernels, x = cpu.CpuKernels(RowThreads(1)), np.ones((2, 3))\n"
            "kernels.relu_backward(x, kernels.relu(x))\n"
            "kernels.relu_backward_column_sums(x, kernels.bias_relu(x.copy(), x[0]), x[1].copy())\n"
            "kernels.bernoulli_nll_and_grad(x, x)\n"
            "kernels.adam_update(x[0], x[1], x[0] * 0, x[1] * 0, 1, 0.1, 0.9, 0.99, 1e-8, 0.0)\n"
            "stats = {n: f.stats for module in (cpu, bernoulli_cpu) for n, f in vars(module).items()\n"
            "         if hasattr(f, 'stats')}\n"
            "print(json.dumps({n: [sum(s.cache_hits.values()), sum(s.cache_misses.values())]\n"
            "                  for n, s in stats.items()}))")
    env = {**_env(), "NUMBA_CACHE_DIR": str(tmp_path)}
    runs = [json.loads(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                      check=True).stdout) for _ in range(2)]
    first, second = runs
    kernels = ("_adam", "_relu", "_relu_backward", "_bias_relu", "_relu_backward_column_sums", "_bernoulli_float64")
    assert all(first[k] == [0, 1] for k in kernels)  # compiled in the first process
    assert all(second[k] == [1, 0] for k in kernels)  # loaded in the second
    assert all(misses == 0 for hits, misses in second.values())  # and nothing compiled


def _env():
    import os

    return {k: v for k, v in os.environ.items() if k != "MINIVAE_KERNELS"}


def test_every_kernel_is_cached_and_releases_the_gil():
    kernels = [f for module in (cpu, bernoulli_cpu) for f in vars(module).values() if hasattr(f, "targetoptions")]
    assert len(kernels) >= 15
    for kernel in kernels:
        assert kernel.targetoptions.get("nogil") is True, kernel.__name__
        assert kernel.targetoptions.get("error_model") == "numpy", kernel.__name__
        assert type(kernel._cache).__name__ == "FunctionCache", kernel.__name__


def test_numpy_backend_chooses_through_cpu_kernels(monkeypatch):
    marker = object()
    monkeypatch.setattr(backend_module, "cpu_kernels", lambda row_threads: marker)
    assert numpy_backend("float64").kernels is marker
