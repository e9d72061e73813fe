"""The example scripts' command lines (issue 26, item 4): a size below 1 or beyond the data, and a flag
that --quick would ignore, are refused with exit status 2 before anything runs. In this process,
through each script's ``main(argv)``; the runs themselves are in test_evaluate.py (slow)."""

import pathlib

import pytest
from scripts import load_script

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def example(name):
    """The example script ``name`` imported as a module."""
    return load_script(EXAMPLES, name)


REFUSED = [
    ("latent_size", ["--train-size", "-5"], "--train-size: must be an integer >= 1, got -5"),
    ("latent_size", ["--epochs", "0"], "--epochs: must be an integer >= 1, got 0"),
    ("latent_size", ["--latent-dims", "2", "0"], "--latent-dims: must be an integer >= 1, got 0"),
    ("latent_size", ["--dataset", "fashion-mnist-small", "--train-size", "100000"],
     "--train-size 100000 is more than the 10000 images of fashion-mnist-small"),
    ("latent_size", ["--quick", "--epochs", "3"], "--epochs has no effect with --quick"),
    ("iwae_vs_vae", ["--train-size", "-5"], "--train-size: must be an integer >= 1, got -5"),
    ("iwae_vs_vae", ["--dataset", "fashion-mnist-small", "--test-size", "100000"],
     "--test-size 100000 is more than the 2000 images of fashion-mnist-small"),
    ("iwae_vs_vae", ["--quick", "--iw-samples", "0"], "--iw-samples: must be an integer >= 1, got 0"),
    ("iwae_vs_vae", ["--quick", "--iw-samples", "100"], "--iw-samples has no effect with --quick"),
    ("iwae_vs_vae", ["--quick", "--epochs", "3"], "--epochs has no effect with --quick"),
    ("manifold", ["--epochs", "-1"], "--epochs: must be an integer >= 1, got -1"),
    ("manifold", ["--quick", "--dataset", "fashion-mnist-small"], "--dataset has no effect with --quick"),
    ("frey_face", ["--quick", "--epochs", "5"], "--epochs has no effect with --quick"),
    ("frey_face", ["--quick", "--variance", "-1"], "--variance must be a number > 0, got -1.0"),
    ("frey_face", ["--latent-dim", "0"], "--latent-dim: must be an integer >= 1, got 0"),
]


@pytest.mark.parametrize("name, argv, words", REFUSED, ids=[f"{r[0]} {' '.join(r[1])}" for r in REFUSED])
def test_a_bad_example_flag_is_refused_before_anything_runs(name, argv, words, tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as stop:
        example(name).main([*argv, "--out", str(out)])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1, err
    assert not out.exists()


def test_the_defaults_of_quick_are_not_refused(tmp_path):
    """--quick with no other flag passes the checks (its run is tested in test_evaluate.py)."""
    module = example("latent_size")
    parser = module.build_parser()
    args = parser.parse_args(["--quick", "--out", str(tmp_path)])
    module.refuse_beside_quick(parser, args, ("--epochs", "--train-size", "--test-size"))


def test_an_example_whose_reader_goes_away_ends_quietly():
    """``python examples/trace_gradients.py | head -1``: exit status 141 (or 0), no BrokenPipeError
    traceback (issue 26: a closed pipe ends a command quietly; the examples too)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(EXAMPLES.parent)}
    script = subprocess.Popen([sys.executable, str(EXAMPLES / "trace_gradients.py")], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env=env)
    assert script.stdout.readline()
    script.stdout.close()  # the reader goes away after one line, as head -1 does
    stderr = script.stderr.read().decode()
    assert script.wait(timeout=60) in (0, 141)
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr
