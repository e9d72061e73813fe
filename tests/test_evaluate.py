"""``minivae.evaluate``: the importance-weighted estimate of log p(x) (eq. (22)) against the exact
log-likelihood of a linear-Gaussian VAE, the stable logsumexp (eq. (23)), chunking, the command line
end to end with its error paths, and the examples in their quickest modes (issue 6)."""

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.special
import scipy.stats
from device_guard import GuardBackend
from tiny_data import cli_args, command_stderr_lines, read_metrics, write_dataset

from minivae import estimators, evaluate, train
from minivae.backend import numpy_backend
from minivae.errors import MinivaeError
from minivae.estimators import elbo, importance_weighted_log_likelihood, log_importance_weights
from minivae.objectives import logsumexp
from minivae.model import VAE

D, J, S2 = 5, 3, 0.3
SCALES = np.array([1.5, 0.8, 2.0])  # the row norms of the decoder's W
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def linear_gaussian_vae(backend, n_points=20, mu_scale=1.0, logvar_shift=0.0, n_samples=1):
    """A VAE with no hidden layers and the Gaussian likelihood: p(z) = N(0, I), x = z W + b + noise of
    variance S2, so p(x) = N(x; b, W^T W + S2 I) exactly. W (J, D) has orthogonal rows, W W^T = diag(d),
    so the true posterior is diagonal: precision I + diag(d) / S2, mean (x - b) W^T / (S2 + d). The
    encoder (affine in x) outputs exactly that when mu_scale = 1 and logvar_shift = 0, and a worse q
    otherwise. Returns (model, x (host, drawn from the model), log p(x) (host, by scipy))."""
    rng = np.random.default_rng(0)
    orthogonal, _ = np.linalg.qr(rng.standard_normal((D, D)))
    W, b, d = SCALES[:, None] * orthogonal[:J], rng.standard_normal(D), SCALES ** 2
    model = VAE(D, (), J, likelihood="gaussian", variance=S2, n_samples=n_samples, backend=backend)
    encoder, decoder = model.encoder.layers[0], model.decoder.layers[0]
    decoder.W.data[...] = backend.to_device(W)
    decoder.b.data[...] = backend.to_device(b)
    W_mu = W.T / (S2 + d) * mu_scale
    encoder.W.data[...] = backend.to_device(np.concatenate([W_mu, np.zeros((D, J))], axis=1))
    encoder.b.data[...] = backend.to_device(np.concatenate([-b @ W_mu, -np.log1p(d / S2) + logvar_shift]))
    x = rng.standard_normal((n_points, J)) @ W + b + math.sqrt(S2) * rng.standard_normal((n_points, D))
    return model, x, scipy.stats.multivariate_normal(b, W.T @ W + S2 * np.eye(D)).logpdf(x)


class FixedNoise:
    """Hands out consecutive slices of one fixed eps (S, B, J) along its first axis, as a Backend's
    ``standard_normal`` would hand out fresh draws: the same eps, whatever the chunk size."""

    def __init__(self, eps):
        self.eps, self.used = eps, 0

    def standard_normal(self, shape):
        self.used += shape[0]
        part = self.eps[self.used - shape[0]:self.used]
        assert tuple(part.shape) == tuple(shape)
        return part


# --------------------------------------------------------------------------------------------------
# eq. (23)


def test_logsumexp_is_eq_23_and_stable(make_backend):
    backend = make_backend("float64")
    xp, to_device, to_numpy = backend.xp, backend.to_device, backend.to_numpy
    # the worked example of section 16: both exponentials underflow when taken directly
    assert to_numpy(logsumexp(xp, to_device([[-1000.0], [-1001.0]])))[0] == pytest.approx(-999.68674, abs=1e-5)
    a = np.random.default_rng(1).normal(-300, 200, size=(50, 7))
    assert np.allclose(to_numpy(logsumexp(xp, to_device(a))), scipy.special.logsumexp(a, axis=0), rtol=1e-14)
    assert to_numpy(logsumexp(xp, to_device([[800.0], [800.0]])))[0] == pytest.approx(800 + math.log(2))
    with np.errstate(divide="ignore"):  # log(0), on purpose
        every_weight_zero = to_numpy(logsumexp(xp, to_device(np.full((3, 2), -np.inf))))
    assert (every_weight_zero == -np.inf).all()


# --------------------------------------------------------------------------------------------------
# eq. (22) against the exact log p(x)


def test_with_the_exact_posterior_every_weight_is_p_x(make_backend):
    """When q(z|x) is the true posterior, p(x, z) / q(z|x) = p(x) for every z: the estimate is exact for any K,
    chunked or not."""
    backend = make_backend("float64", seed=3)
    model, x, log_px = linear_gaussian_vae(backend)
    x = backend.to_device(x)
    log_w = backend.to_numpy(log_importance_weights(model, x, backend.standard_normal((6, 20, J))))
    assert np.allclose(log_w, log_px, rtol=1e-12, atol=0)
    for n_samples, chunk in [(1, 1), (7, 3), (50, 50)]:
        estimate = backend.to_numpy(importance_weighted_log_likelihood(model, x, n_samples, chunk))
        assert estimate.dtype == np.float64
        assert np.allclose(estimate, log_px, rtol=1e-12, atol=0), (n_samples, chunk)


def test_with_the_exact_posterior_the_elbo_is_log_p_x():
    """ELBO = log p(x) - KL(q || true posterior) (eq. (1)) = log p(x); estimated with L = 4000 samples."""
    model, x, log_px = linear_gaussian_vae(_numpy64(5), n_samples=4000)
    assert np.abs(elbo(model, x) - log_px).max() < 0.1


def test_the_estimate_converges_to_log_p_x_as_k_grows():
    """With an inexact q (means shrunk, variances too wide) the error of eq. (22), averaged over 20 points,
    falls with K; K = 1000 is within 0.05 nats. The ELBO lies below the estimate (here by 0.6 nats)."""
    model, x, log_px = linear_gaussian_vae(_numpy64(), mu_scale=0.8, logvar_shift=0.5)
    errors = []
    for n_samples in (1, 10, 100, 1000):
        estimate = importance_weighted_log_likelihood(model, x, n_samples, 250, _numpy64(n_samples))
        errors.append(np.abs(estimate - log_px).mean())
    assert errors == sorted(errors, reverse=True) and errors[0] > 0.3
    assert errors[-1] < 0.05
    mean_elbo = elbo(model, x, _numpy64(7)).mean()
    mean_estimate = importance_weighted_log_likelihood(model, x, 100, 100, _numpy64(8)).mean()
    assert mean_elbo < mean_estimate - 0.3
    assert mean_estimate < log_px.mean() + 0.1


def test_the_estimate_lies_above_the_elbo_for_a_bernoulli_vae(make_backend):
    """Eq. (22) is >= the ELBO in expectation (section 15). One random MLP VAE and 32 points, drawn on
    the host so that every backend holds the same model: its gap is 0.17 nats, and with L = 1000 ELBO
    samples and K = 1000 the noise of the gap is 0.004 nats (sd over 20 noise seeds), so a margin of
    0.1 holds on any backend's noise, and an estimator that averaged log w instead (gap 0) fails."""
    host = numpy_backend("float64", seed=2)
    host_model = VAE(12, (8,), 2, backend=host)
    host_x = (host.uniform((32, 12)) < 0.5).astype(host.dtype)
    backend = make_backend("float64", seed=3)
    model = VAE(12, (8,), 2, backend=backend, n_samples=1000)
    for param, host_param in zip(model.parameters(), host_model.parameters()):
        param.data[...] = backend.to_device(host_param.data)
    x = backend.to_device(host_x)
    mean_elbo = float(elbo(model, x).mean())
    mean_estimate = float(importance_weighted_log_likelihood(model, x, 1000, 250).mean())
    assert mean_elbo < mean_estimate - 0.1


# --------------------------------------------------------------------------------------------------
# chunks, seeds, dtypes


def test_chunked_equals_unchunked_for_the_same_eps(make_backend):
    backend = make_backend("float64", seed=4)
    model = VAE(12, (8,), 3, backend=backend)
    x = backend.uniform((5, 12))
    eps = backend.standard_normal((40, 5, 3))
    one_pass = backend.to_numpy(importance_weighted_log_likelihood(model, x, 40, 40, FixedNoise(eps)))
    direct = scipy.special.logsumexp(backend.to_numpy(log_importance_weights(model, x, eps)), axis=0)
    assert np.allclose(one_pass, direct - math.log(40), rtol=1e-13)
    for chunk in (1, 3, 39):
        chunked = backend.to_numpy(importance_weighted_log_likelihood(model, x, 40, chunk, FixedNoise(eps)))
        assert np.allclose(chunked, one_pass, rtol=1e-13, atol=0), chunk


def test_the_seeded_evaluation_does_not_depend_on_the_chunk_size():
    model = VAE(12, (8,), 3, backend=_numpy64(0))
    test_x = np.random.default_rng(0).random((7, 12))
    first = estimators.evaluate_test_set(model, test_x, 30, 4, 30, seed=9)
    second = estimators.evaluate_test_set(model, test_x, 30, 4, 7, seed=9)
    assert np.array_equal(first[0], second[0])
    assert np.allclose(first[1], second[1], rtol=1e-13)


def test_the_evaluation_and_the_iwae_objective_share_their_log_weights(make_backend):
    """One log w (eq. (44), from ``VAE.forward``): with the same eps, eq. (22) of the evaluation is minus
    the IWAE objective's loss of eq. (43), datapoint by datapoint, whatever the chunks."""
    backend = make_backend("float64", seed=6)
    model = VAE(12, (8,), 3, n_samples=10, objective="iwae", backend=backend)
    x = backend.uniform((5, 12))
    eps = backend.standard_normal((10, 5, 3))
    iwae_loss = backend.to_numpy(model.forward(x, eps)[0].loss)
    estimate = backend.to_numpy(importance_weighted_log_likelihood(model, x, 10, 3, FixedNoise(eps)))
    np.testing.assert_allclose(estimate, -iwae_loss, rtol=1e-13)


def test_float32_models_decode_in_float32_and_reduce_in_float64(make_backend):
    backend = make_backend("float32", seed=1)
    model = VAE(12, (8,), 3, backend=backend)
    x = backend.uniform((4, 12))
    assert log_importance_weights(model, x, backend.standard_normal((3, 4, 3))).dtype == np.float32
    assert backend.to_numpy(importance_weighted_log_likelihood(model, x, 9, 4)).dtype == np.float64
    assert backend.to_numpy(elbo(model, x)).dtype == np.float64


def test_the_chunk_fits_the_memory_budget():
    model = VAE(784, (400,), 20, backend=_numpy64())
    row_bytes = (6 * 784 + 2 * 400 + 4 * 20) * 8
    assert estimators.samples_per_chunk(model, 100, 100 * row_bytes * 37.5) == 37
    assert estimators.samples_per_chunk(model, 100, 1) == 1


def test_mean_and_standard_error():
    assert estimators.mean_and_standard_error([1.0, 3.0]) == (2.0, pytest.approx(1.0))
    assert estimators.mean_and_standard_error([-4.0]) == (-4.0, 0.0)


def _numpy64(seed=0):
    return numpy_backend("float64", seed)


# --------------------------------------------------------------------------------------------------
# the command line


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A 2-epoch run on 128 + 32 tiny 8x8 images."""
    root = tmp_path_factory.mktemp("evaluate")
    data = write_dataset(root / "data")
    out = root / "run"
    assert train.main(cli_args(data, out, "--quiet")) == 0
    return out


def test_command_evaluates_a_run_folder(run_dir, capsys):
    assert evaluate.main([str(run_dir), "--iw-samples", "50", "--backend", "numpy", "--no-progress"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    results = json.loads((run_dir / "evaluation.json").read_text())
    assert results["test_points"] == results["test_set_size"] == 32
    assert (results["iw_samples"], results["backend"], results["dtype"], results["epoch"]) == (50, "numpy",
                                                                                               "float32", 2)
    elbo_mean, ll_mean = results["elbo"]["mean"], results["log_likelihood"]["mean"]
    assert elbo_mean < ll_mean < 0
    assert results["negative_elbo"] == -elbo_mean and results["negative_log_likelihood"] == -ll_mean
    assert 0 < results["elbo"]["standard_error"] < 10
    # the ELBO is the training's test loss (another draw of the noise on the same 32 points)
    test_loss = float(read_metrics(run_dir)[1][-1]["test_loss"])
    assert abs(-elbo_mean - test_loss) < 3 * results["elbo"]["standard_error"] + 1
    lines = out.splitlines()
    assert lines[1].split() == ["nats", "per", "test", "point", "mean", "std.", "error"]
    assert [line.split()[0] for line in lines[2:7]] == ["ELBO", "log", "-ELBO", "-log", "log"]
    gap = results["log_likelihood_minus_elbo"]
    assert gap["mean"] == pytest.approx(ll_mean - elbo_mean) and 0 < gap["standard_error"]
    assert float(lines[6].split()[4]) == pytest.approx(gap["mean"], abs=1e-3)
    assert float(lines[2].split()[1]) == pytest.approx(elbo_mean, abs=1e-3)
    assert float(lines[5].split()[2]) == pytest.approx(-ll_mean, abs=1e-3)
    assert lines[-1] == f"wrote {run_dir / 'evaluation.json'}"


def test_command_evaluates_a_lone_checkpoint_file(run_dir, tmp_path, capsys):
    """Without config.json beside it, the settings saved in the checkpoint name the dataset; the JSON
    goes beside the checkpoint; --limit takes the first test points; --quiet prints nothing."""
    lone = tmp_path / "elsewhere" / "epoch2.npz"
    lone.parent.mkdir()
    shutil.copy(run_dir / "checkpoint.npz", lone)
    argv = [str(lone), "--iw-samples", "20", "--chunk", "7", "--limit", "5", "--backend", "numpy", "--quiet"]
    assert evaluate.main(argv) == 0
    assert capsys.readouterr() == ("", "")
    results = json.loads((lone.parent / "evaluation.json").read_text())
    assert (results["test_points"], results["chunk"], results["test_set_size"]) == (5, 7, 32)


def test_command_on_the_device_guard_matches_numpy(run_dir, tmp_path, monkeypatch):
    """The whole command on the device guard (NumPy refusing what CuPy refuses, fused-kernel path): the
    same numbers as on NumPy, whose random stream it shares."""
    results = {}
    for name in ("numpy", "device-guard"):
        if name == "device-guard":
            monkeypatch.setattr(evaluate, "get_backend",
                                lambda backend, dtype, seed: GuardBackend(dtype, seed, fused=True))
        output = tmp_path / f"{name}.json"
        argv = [str(run_dir), "--iw-samples", "30", "--chunk", "8", "--backend", "numpy", "--output", str(output)]
        assert evaluate.main([*argv, "--quiet"]) == 0
        results[name] = json.loads(output.read_text())
    assert results["device-guard"]["backend"] == "device-guard"
    for key in ("elbo", "log_likelihood"):
        assert results["device-guard"][key]["mean"] == pytest.approx(results["numpy"][key]["mean"], rel=1e-6)


@pytest.mark.slow
def test_the_module_runs_as_a_command(run_dir, tmp_path):
    output = tmp_path / "evaluation.json"
    result = subprocess.run([sys.executable, "-m", "minivae.evaluate", str(run_dir), "--iw-samples", "10",
                             "--limit", "4", "--backend", "numpy", "--output", str(output)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert command_stderr_lines(result.stderr) == []
    assert "\r" not in result.stdout  # stdout is a pipe: no progress bar
    assert json.loads(output.read_text())["test_points"] == 4


@pytest.mark.parametrize("case", ["missing", "empty-folder", "corrupt", "other-image-size"])
def test_command_errors_are_one_line(run_dir, tmp_path, capsys, case):
    argv = ["--iw-samples", "5", "--backend", "numpy", "--no-progress"]
    if case == "missing":
        target, expected = tmp_path / "no-such-run", "no such run folder"
    elif case == "empty-folder":
        target, expected = tmp_path, "holds no checkpoint.npz"
    elif case == "corrupt":
        target, expected = tmp_path / "checkpoint.npz", "truncated or corrupted"
        target.write_bytes((run_dir / "checkpoint.npz").read_bytes()[:500])
    else:
        target, expected = run_dir, "trained on data of 64 values per point"
        argv += ["--data-dir", str(write_dataset(tmp_path / "wide", 16, 8, rows=8, columns=9))]
    assert evaluate.main([str(target), *argv]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("minivae-evaluate: error: ") and expected in err
    assert err.count("\n") == 1 and "Traceback" not in err
    with pytest.raises(MinivaeError, match=re.escape(expected)):
        evaluate.main([str(target), *argv, "--debug"])


def test_a_failed_write_comes_after_the_table(run_dir, tmp_path, capsys):
    """issue 13, item 6: a folder evaluation.json cannot be written to no longer loses the finished
    computation: the table is printed first, then the one-line error naming the file."""
    output = tmp_path / "no-such-folder" / "evaluation.json"
    argv = [str(run_dir), "--iw-samples", "5", "--backend", "numpy", "--no-progress", "--output", str(output)]
    assert evaluate.main(argv) == 1
    out, err = capsys.readouterr()
    assert out.splitlines()[1].split() == ["nats", "per", "test", "point", "mean", "std.", "error"]
    assert "wrote" not in out
    assert err.count("\n") == 1 and err.startswith("minivae-evaluate: error: ") and "Traceback" not in err
    assert str(output.parent) in err and "No such file or directory" in err


@pytest.mark.parametrize("case, words", [
    ("out-of-memory", ["out of memory (Unable to allocate", "pass a smaller --chunk"]),
    ("config-not-an-object", ["config.json: the run's settings are a JSON list, not an object"]),
    ("config-null-seed", ['config.json: the field "seed" is null; it must be an integer >= 0']),
    ("checkpoint-string-lr", ["optimizer hyperparameter lr='fast' must be a finite number > 0"]),
])
def test_more_failures_are_one_line(run_dir, tmp_path, capsys, case, words):
    """issue 13, item 5: out of memory, a config.json that is not an object or holds null, a
    checkpoint value no model can take: one line each, no traceback."""
    copy = shutil.copytree(run_dir, tmp_path / "copy", ignore=shutil.ignore_patterns("evaluation.json"))
    argv = [str(copy), "--iw-samples", "5", "--backend", "numpy", "--no-progress"]
    config = json.loads((copy / "config.json").read_text())
    if case == "out-of-memory":
        argv = [str(copy), "--iw-samples", str(10 ** 11), "--chunk", str(10 ** 11), "--backend", "numpy"]
    elif case == "config-not-an-object":
        (copy / "config.json").write_text("[1, 2]")
    elif case == "config-null-seed":
        (copy / "config.json").write_text(json.dumps({**config, "seed": None}))
    else:
        with np.load(copy / "checkpoint.npz") as npz:
            arrays = {key: npz[key] for key in npz.files}
        meta = json.loads(str(arrays["meta"][()]))
        meta["optimizer"]["hyperparameters"]["lr"] = "fast"
        arrays["meta"] = np.array(json.dumps(meta))
        np.savez(copy / "checkpoint.npz", **arrays)
    assert evaluate.main(argv) == 1
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and err.startswith("minivae-evaluate: error: ") and "Traceback" not in err, err
    assert all(word in err for word in words), err
    assert not (copy / "evaluation.json").exists()


# --------------------------------------------------------------------------------------------------
# the examples, in their quickest modes


@pytest.mark.slow
@pytest.mark.parametrize("script", ["manifold.py", "frey_face.py", "latent_size.py", "iwae_vs_vae.py"])
def test_example_runs_to_completion(script, tmp_path):
    results = tmp_path / "results.json"
    result = subprocess.run([sys.executable, str(EXAMPLES / script), "--quick", "--out", str(tmp_path / "out"),
                             "--json", str(results)], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                            env={**os.environ, "MPLBACKEND": "Agg"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert command_stderr_lines(result.stderr) == []
    written = sorted(path.name for path in (tmp_path / "out").rglob("*.png"))
    assert written, result.stdout
    assert f"wrote {results}" in result.stdout
    assert isinstance(json.loads(results.read_text()), dict) and json.loads(results.read_text())


@pytest.mark.slow
def test_the_frey_example_says_when_the_data_is_missing(tmp_path):
    result = subprocess.run([sys.executable, str(EXAMPLES / "frey_face.py"), "--data-dir", str(tmp_path),
                             "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "the Frey Face data is not available here" in result.stderr and "--synthetic" in result.stderr
    assert not (tmp_path / "out").exists()
