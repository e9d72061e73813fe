"""The tools for learners, end to end: examples/trace_gradients.py and ``python -m minivae.gradcheck``
run as a user runs them and report small gradient errors; and the gradcheck command FAILS when a
backward is broken on purpose."""

import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

import minivae.backend
import minivae.gaussian
import minivae.model
from minivae.gradcheck import DEFAULT_TOLERANCE, FLOAT32_TOLERANCE, LAYER_KINDS, check_model, main

ROOT = pathlib.Path(__file__).resolve().parent.parent
# one row of the gradcheck table: name, shape, max|analytic|, relative error, status
ROW = re.compile(r"^(?P<name>\S+)\s+\((?P<shape>[0-9, ]*)\)\s+(?P<max>\S+)\s+(?P<error>\S+)\s+(?P<status>ok|FAIL)$",
                 re.MULTILINE)
SUMMARY = re.compile(r"^max relative error (?P<error>\S+) over (?P<count>\d+) gradients", re.MULTILINE)


def run_python(*args):
    """Run ``python *args`` from the repository root, as a user would, with the checkout importable."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def table(output):
    """The rows of a gradcheck table: [(name, relative error, status)]."""
    return [(m["name"], float(m["error"]), m["status"]) for m in ROW.finditer(output)]


# ------------------------------------------------------------------------------------------------
# examples/trace_gradients.py
# ------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_trace_example_runs_and_its_gradients_agree():
    result = run_python("examples/trace_gradients.py")
    out = result.stdout
    assert result.returncode == 0, result.stdout + result.stderr
    errors = [float(e) for e in re.findall(r"rel\. error (\S+)\s+ok$", out, re.MULTILINE)]
    assert len(errors) == 8  # W1, b1, ..., W4, b4
    assert max(errors) <= DEFAULT_TOLERANCE
    summary = SUMMARY.search(out)
    assert summary and float(summary["error"]) == pytest.approx(max(errors), rel=0.01)
    assert "FAIL" not in out and "DIFFER" not in out
    assert "step-by-step gradients == VAE.loss_and_backward's: identical" in out
    # every intermediate is there, labelled with its equation
    for label, equation in [("a1 = x W1 + b1", 4), ("z = mu + eps * exp(0.5 * logvar)", 5), ("KL =", 7),
                            ("NLL =", 8), ("loss = NLL + KL", 3), ("dlogits = sigmoid(l) - x", 10),
                            ("dW4 = g^T dlogits", 12), ("da3 = dg * [a3 > 0]", 13), ("dmu via z = dz", 16),
                            ("dlogvar via z", 16), ("dlogvar via KL", 17), ("dmu via KL", 17),
                            ("dlogvar = dlogvar via z + dlogvar via KL", 18), ("dW1 = x^T da1", 12)]:
        assert re.search(rf"^{re.escape(label)}.*eq\. \({equation}\)", out, re.MULTILINE), label


# ------------------------------------------------------------------------------------------------
# python -m minivae.gradcheck: every setting in-process, and once as a subprocess
# ------------------------------------------------------------------------------------------------

ROWS_PER_LAYER = {"linear": 3, "relu": 1, "tanh": 1, "sigmoid": 1, "reparameterize": 2, "kl": 2, "bernoulli": 1,
                  "gaussian": 1, "continuous-bernoulli": 1}


def assert_all_ok(output, n_rows):
    """The table has ``n_rows`` rows, each ok and within the tolerance, and the summary counts them."""
    rows = table(output)
    assert len(rows) == n_rows, output
    assert all(status == "ok" and error <= DEFAULT_TOLERANCE for _, error, status in rows), output
    assert SUMMARY.search(output)["count"] == str(n_rows)


@pytest.mark.parametrize("args, n_rows", [
    ([], 8),
    (["--likelihood", "gaussian", "--samples", "2"], 8),
    (["--hidden", "6", "--hidden", "5", "--activation", "tanh"], 12),
    (["--likelihood", "continuous-bernoulli"], 8),
    (["--likelihood", "gaussian", "--variance", "learned", "--samples", "2"], 8),
    (["--objective", "iwae", "--samples", "3"], 8),
    (["--beta", "0.5", "--samples", "2"], 8),
    (["--layer", "gaussian", "--variance", "learned"], 1),
] + [(["--layer", kind], ROWS_PER_LAYER[kind]) for kind in LAYER_KINDS])
def test_gradcheck_command_passes(args, n_rows, capsys):
    assert main(args) == 0
    assert_all_ok(capsys.readouterr().out, n_rows)


@pytest.mark.slow
def test_gradcheck_runs_as_a_command():
    result = run_python("-m", "minivae.gradcheck", "--likelihood", "gaussian", "--samples", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    assert_all_ok(result.stdout, 8)


# ------------------------------------------------------------------------------------------------
# The command in-process: it fails when a backward is broken, and refuses bad input
# ------------------------------------------------------------------------------------------------

def _reparameterize_backward_without_the_half(xp, dz, logvar, eps):
    """eq. (16) with the classic slip: d exp(0.5 logvar) / d logvar taken as exp(0.5 logvar)."""
    eps = minivae.gaussian.as_samples(eps, logvar)
    dz = dz.reshape(eps.shape)
    return dz.sum(axis=0), (dz * eps).sum(axis=0) * xp.exp(0.5 * logvar)


@pytest.mark.filterwarnings("ignore:MINIVAE_KERNELS=plain")
def test_gradcheck_fails_when_the_reparameterization_backward_drops_the_half(monkeypatch, capsys):
    monkeypatch.setenv("MINIVAE_KERNELS", "plain")  # the plain code (the CPU's fused kernels: test_cpu_kernels.py)
    assert main([]) == 0
    capsys.readouterr()
    # gaussian.head_gradient calls it by its module-level name: patch that name
    monkeypatch.setattr(minivae.gaussian, "reparameterize_backward", _reparameterize_backward_without_the_half)
    assert main([]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out
    status = {name: status for name, _, status in table(out)}
    # the encoder sits behind the broken step, the decoder does not
    assert status == {"encoder.0.W": "FAIL", "encoder.0.b": "FAIL", "encoder.2.W": "FAIL", "encoder.2.b": "FAIL",
                      "decoder.0.W": "ok", "decoder.0.b": "ok", "decoder.2.W": "ok", "decoder.2.b": "ok"}
    assert main(["--dtype", "float32"]) == 1  # the looser float32 tolerance still catches it


def test_gradcheck_layer_fails_when_the_reparameterization_backward_drops_the_half(monkeypatch, capsys):
    monkeypatch.setattr(minivae.gaussian, "reparameterize_backward", _reparameterize_backward_without_the_half)
    assert main(["--layer", "reparameterize", "--samples", "2"]) == 1
    assert {name: status for name, _, status in table(capsys.readouterr().out)} == {"mu": "ok", "logvar": "FAIL"}


def test_gradcheck_float32_compares_with_float64_differences(capsys):
    assert main(["--dtype", "float32", "--likelihood", "gaussian"]) == 0
    out = capsys.readouterr().out
    assert f"tolerance {FLOAT32_TOLERANCE:g}" in out and "float64 finite differences" in out
    assert all(error <= FLOAT32_TOLERANCE for _, error, _ in table(out))


@pytest.mark.parametrize("args", [["--hidden", "0"], ["--latent-dim", "-1"], ["--batch-size", "x"],
                                  ["--tolerance", "0"], ["--tolerance", "nan"], ["--seed", "-3"],
                                  ["--dtype", "float16"], ["--layer", "conv"], ["--likelihood", "poisson"],
                                  ["--backend", "tpu"], ["--unknown"]])
def test_bad_values_are_argparse_errors(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "minivae-gradcheck: error:" in err and "Traceback" not in err


def test_an_unavailable_backend_is_one_line_and_exit_2(monkeypatch, capsys):
    monkeypatch.setattr(minivae.backend, "cupy_unavailable_reason", lambda: "no CUDA device in this test")
    assert main(["--backend", "cupy"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("minivae-gradcheck: error: cannot use the cupy backend")


def test_check_model_rows_and_gradients(make_backend):
    backend = make_backend("float64", 1)
    model = minivae.model.VAE(5, (4,), 2, n_samples=2, backend=backend)
    x = backend.uniform((3, 5))
    eps = model.draw_eps(3)
    rows = check_model(model, x, eps)
    assert [r.name for r in rows] == [p.name for p in model.parameters()]
    for row, p in zip(rows, model.parameters()):
        assert row.shape == tuple(p.data.shape) and row.ok and row.error <= DEFAULT_TOLERANCE
        np.testing.assert_array_equal(row.analytic, backend.to_numpy(p.grad))  # grads left as computed
        assert row.max_abs_analytic == pytest.approx(float(np.abs(row.analytic).max()))
