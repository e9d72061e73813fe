"""The new flags end to end: --objective iwae --samples K, --beta with --kl-warmup (their metric
columns), --likelihood continuous-bernoulli and --variance learned through train, checkpoint, resume
and evaluate (which reports the active units and the KL per latent dimension, eq. (47))."""

import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
from tiny_data import cli_args, read_metrics, write_dataset

from minivae import evaluate, train
from minivae.backend import get_backend
from minivae.checkpoint import load_checkpoint, model_from_checkpoint
from minivae.estimators import ACTIVE_UNIT_THRESHOLD, latent_statistics

STEPS = 128 // 16  # training images / batch size: steps per epoch of cli_args' runs


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("objectives") / "data")


def test_beta_and_warmup_report_the_negative_elbo_and_the_objective_apart(data_dir, tmp_path):
    out = tmp_path / "beta"
    assert train.main(cli_args(data_dir, out, "--quiet", "--beta", "0.5", "--kl-warmup", "2", epochs=3)) == 0
    _, rows = read_metrics(out)
    weights = [float(row["kl_weight"]) for row in rows]
    assert weights == pytest.approx([0.5 * (STEPS - 1) / STEPS / 2, 0.5 * (2 * STEPS - 1) / STEPS / 2, 0.5])
    for row in rows:
        reconstruction, kl = float(row["train_reconstruction"]), float(row["train_kl"])
        assert float(row["train_loss"]) == pytest.approx(reconstruction + kl, rel=1e-9)  # beta = 1: the -ELBO
        assert float(row["train_objective"]) < float(row["train_loss"])  # beta_t < 1 weighs the KL less
    assert json.loads((out / "config.json").read_text())["beta"] == 0.5


def test_the_plain_elbo_objective_is_the_train_loss(data_dir, tmp_path):
    out = tmp_path / "plain"
    assert train.main(cli_args(data_dir, out, "--quiet", epochs=1)) == 0
    row = read_metrics(out)[1][0]
    assert float(row["train_objective"]) == pytest.approx(float(row["train_loss"]), rel=1e-6)
    assert float(row["kl_weight"]) == 1.0


@pytest.mark.parametrize("extra", [
    ("--objective", "iwae", "--samples", "3"),
    ("--likelihood", "continuous-bernoulli"),
    ("--likelihood", "gaussian", "--variance", "learned"),
])
def test_each_new_setting_trains_resumes_and_evaluates(data_dir, tmp_path, capsys, extra):
    out = tmp_path / "run"
    assert train.main(cli_args(data_dir, out, "--quiet", *extra, epochs=1)) == 0
    assert train.main(["--resume", str(out), "--epochs", "2", "--quiet"]) == 0
    _, rows = read_metrics(out)
    assert len(rows) == 2 and all(np.isfinite(float(row[c])) for row in rows for c in ("train_loss", "test_loss"))
    if "iwae" in extra:  # the IWAE bound is tighter than the ELBO on the same samples: objective <= -ELBO
        assert all(float(row["train_objective"]) <= float(row["train_loss"]) for row in rows)
    capsys.readouterr()
    assert evaluate.main([str(out), "--iw-samples", "20", "--backend", "numpy", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "evaluation.json").read_text())
    assert np.isfinite(results["elbo"]["mean"]) and np.isfinite(results["log_likelihood"]["mean"])
    assert 0 <= results["active_units"] <= results["latent_dim"] == 3
    assert len(results["kl_per_dimension"]) == 3
    assert f"active units (Var_x E_q[z_u] > 0.01): {results['active_units']} of 3" in printed


def test_iwae_refuses_a_kl_weight(data_dir, tmp_path, capsys):
    argv = cli_args(data_dir, tmp_path / "bad", "--quiet", "--objective", "iwae", "--beta", "2")
    assert train.main(argv) == 2
    assert "--beta weights the KL term of the ELBO objective, which the iwae objective does not have" in \
        capsys.readouterr().err


def test_latent_statistics_are_eq_47(data_dir, tmp_path):
    """Against a direct NumPy computation over the whole test set at once, independent of the batching."""
    out = tmp_path / "stats"
    assert train.main(cli_args(data_dir, out, "--quiet", epochs=1)) == 0
    model = model_from_checkpoint(load_checkpoint(out / "checkpoint.npz"), get_backend("numpy", dtype="float64"))
    test_x = np.random.default_rng(0).random((37, model.config["input_dim"]))
    variance, kl = latent_statistics(model, test_x, batch_size=10)
    mu, logvar = model.encode(test_x)
    np.testing.assert_allclose(variance, mu.var(axis=0), rtol=1e-10)
    np.testing.assert_allclose(kl, (-0.5 * (1 + logvar - mu ** 2 - np.exp(logvar))).mean(axis=0), rtol=1e-10)
    np.testing.assert_allclose(kl.sum(), (-0.5 * (1 + logvar - mu ** 2 - np.exp(logvar))).sum(axis=1).mean())
    assert ACTIVE_UNIT_THRESHOLD == 0.01


# ------------------------------------------------------------------------------------------------
# The examples: trace_gradients.py's new flags, iwae_vs_vae.py in its quick mode
# ------------------------------------------------------------------------------------------------

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _run_example(*args, timeout=60, cwd=ROOT):
    env = dict(os.environ, MPLBACKEND="Agg",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("flags, label, equation", [
    (["--likelihood", "continuous-bernoulli"], "mean of p(x|z)", "eq. (38)"),
    (["--likelihood", "gaussian", "--variance", "learned"], "NLL per sample", "eq. (39), (40)"),
    (["--objective", "iwae", "--samples", "3"], "normalised weights w~", "eq. (45)"),
    (["--beta", "0.5"], "loss = mean NLL + beta KL, beta = 0.5", "eq. (42)"),
])
def test_trace_example_takes_the_new_flags(flags, label, equation):
    result = _run_example(str(ROOT / "examples" / "trace_gradients.py"), *flags)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    errors = [float(e) for e in re.findall(r"rel\. error (\S+)\s+ok$", out, re.MULTILINE)]
    assert len(errors) == 8 and max(errors) <= 1e-6
    assert "FAIL" not in out and "DIFFERENT" not in out and "loss == VAE.loss_and_backward's: agree" in out
    assert re.search(rf"^{re.escape(label)} .*{re.escape(equation)}", out, re.MULTILINE), label


@pytest.mark.slow
def test_the_iwae_example_runs_to_completion(tmp_path):
    result = _run_example(str(ROOT / "examples" / "iwae_vs_vae.py"), "--quick", "--out", str(tmp_path / "out"),
                          timeout=180, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    results = json.loads((tmp_path / "out" / "iwae_vs_vae.json").read_text())
    for objective in ("elbo", "iwae"):
        (elbo, _), (log_likelihood, _) = results[objective]["elbo"], results[objective]["log_likelihood"]
        assert elbo < log_likelihood < 0  # the IW estimate lies above the ELBO
    assert "| VAE | 5 |" in result.stdout and "| IWAE | 5 |" in result.stdout
