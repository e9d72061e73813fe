"""The settings table (minivae/settings.py) and what is built from it: the commands' flags, what a run
records, what it refuses (issue 21 item 3, issue 26 item 1: no setting silently ignored), the migration
of a run written before the table, and the small command-line faults of issue 26 (a closed pipe, the
out-of-memory hint, the name of --data-dir data)."""

import json
import subprocess
import sys

import numpy as np
import pytest
from tiny_data import cli_args, write_dataset

from minivae import checks, cli, evaluate, gradcheck, settings, train
from minivae.checkpoint import load_checkpoint
from minivae.checkpoint_checks import migrate


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """64 training and 16 test images of 8x8 pixels (a conv VAE can take them)."""
    return write_dataset(tmp_path_factory.mktemp("settings") / "data", 64, 16, 8, 8)


def one_line(err):
    lines = err.splitlines()
    assert len(lines) == 1, err
    return lines[0]


# ------------------------------------------------------------------------------ one table, three parsers

def test_the_shared_flags_of_the_three_commands_come_from_the_table():
    """A setting's flag has the same type and rule wherever it is: --beta 0 is taken by train and by
    gradcheck (gradcheck refused it), and a negative one refused by both with the same words."""
    for parser in (train.build_parser(), gradcheck.build_parser()):
        assert parser.parse_args(["--beta", "0"]).beta == 0.0
        assert parser.parse_args(["--samples", "3"]).n_samples == 3  # one name: n_samples
        with pytest.raises(SystemExit):
            parser.parse_args(["--beta", "-1"])
    helps = {action.dest: action.help for action in train.build_parser()._actions}
    assert helps["channels"].endswith("(default: 32 64)")  # from the table, not hard-coded in another help
    assert "32" not in helps["architecture"] and "--channels" in helps["architecture"]
    assert train.DEFAULTS == {name: settings.SETTINGS[name].default for name in train.SETTINGS}
    assert set(train.CHANGEABLE_ON_RESUME) == {"epochs", "backend", "data_dir"}
    evaluate_helps = {action.dest: action.help for action in evaluate.build_parser()._actions}
    assert evaluate_helps["batch_size"].endswith("(default: 100)")
    assert evaluate_helps["dataset"] == "dataset to evaluate on (default: the run's)"
    for parser in (train.build_parser(), evaluate.build_parser(), gradcheck.build_parser()):
        assert all((action.help or "").count("(default") <= 1 for action in parser._actions)


@pytest.mark.parametrize("parser, argv", [(train.build_parser, ["--samples", "0"]),
                                          (gradcheck.build_parser, ["--samples", "0"]),
                                          (evaluate.build_parser, ["run", "--batch-size", "0"])])
def test_a_flag_is_checked_by_the_rule_that_checks_the_file(capsys, parser, argv):
    with pytest.raises(SystemExit):
        parser().parse_args(argv)
    assert f"argument {argv[-2]}: {checks.positive_int(0)}, got 0;" in one_line(capsys.readouterr().err)


def test_the_model_rules_and_the_checkpoint_rules_are_the_tables():
    assert set(settings.MODEL_RULES) == {"input_dim", "architecture", "hidden", "decoder_hidden", "channels",
                                         "image_shape", "latent_dim", "n_samples", "activation", "likelihood",
                                         "variance", "objective"}
    assert set(settings.HYPERPARAMETER_RULES) == {"lr", "beta1", "beta2", "eps", "weight_decay", "momentum"}
    assert settings.model_problem({"channels": (32,)}) == "channels=(32,) must be a list of 2 items; each item " \
                                                          "must be an integer >= 1"
    assert settings.model_problem({"decoder_hidden": None, "image_shape": None}) is None
    assert settings.model_problem({"likelihood": None}) is not None


# ------------------------------------------------------------------------------ no setting silently ignored

REFUSED = [
    (["--likelihood", "bernoulli", "--variance", "learned"], "--variance sets the variance of the gaussian "
     "likelihood, which the bernoulli likelihood does not have: drop --variance, or pass --likelihood gaussian"),
    (["--likelihood", "continuous-bernoulli", "--variance", "2"], "which the continuous-bernoulli likelihood"),
    (["--dataset", "fashion-mnist", "--variance", "learned"], "which the bernoulli likelihood does not have"),
    (["--architecture", "conv", "--hidden", "400"], "--hidden sets the widths of the MLP's hidden Linear layers, "
     "which the conv architecture does not have: drop --hidden, or pass --architecture mlp"),
    (["--architecture", "conv", "--decoder-hidden", "16"], "which the conv architecture does not have"),
    (["--channels", "8", "16"], "--channels sets the channels of the conv VAE's convolutions, which the mlp "
     "architecture does not have: drop --channels, or pass --architecture conv"),
    (["--objective", "iwae", "--beta", "1"], "--beta weights the KL term of the ELBO objective, which the iwae "
     "objective does not have: drop --beta, or pass --objective elbo"),
    (["--objective", "iwae", "--kl-warmup", "2"], "--kl-warmup ramps up the KL weight of the ELBO objective"),
    (["--test-fraction", "0.2"], "--test-fraction holds out a test set from --data-file's arrays, which only "
     "--data-file has: drop --test-fraction, or pass --data-file FILE"),
]


@pytest.mark.parametrize("flags, words", REFUSED, ids=[" ".join(flags) for flags, _ in REFUSED])
def test_train_refuses_a_setting_its_model_does_not_use_before_creating_anything(tmp_path, capsys, flags, words):
    out = tmp_path / "run"
    assert train.main(["--out", str(out), "--data-dir", str(tmp_path / "no-data"), "--no-download", *flags]) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith("python -m minivae.train: error: ") and words in line
    assert not out.exists()


def test_a_likelihood_that_comes_from_the_data_is_known_before_the_variance_is_refused(data_dir, tmp_path, capsys):
    """--data-dir alone: the likelihood is the data's (bernoulli), known once they are read."""
    out = tmp_path / "run"
    assert train.main(cli_args(data_dir, out, "--quiet", "--variance", "0.5")) == 2
    assert "which the bernoulli likelihood does not have" in one_line(capsys.readouterr().err)
    assert not (out / "config.json").exists()


@pytest.mark.parametrize("argv, words", [
    (["--objective", "iwae", "--beta", "0.5"], "--beta weights the KL term of the ELBO objective"),
    (["--variance", "learned", "--likelihood", "bernoulli"], "--variance sets the variance"),
    (["--architecture", "conv", "--input-dim", "16"], "--input-dim sets D"),
    (["--image-shape", "4x8"], "--image-shape sets the size of the conv VAE's images"),
    (["--layer", "relu", "--objective", "iwae"], "--objective is a setting of the whole VAE's check; --layer relu"),
])
def test_gradcheck_refuses_a_setting_its_check_does_not_use(capsys, argv, words):
    """It printed "all ok" for a check of eq. (42) with --objective iwae --beta 0.5 that it never made."""
    assert gradcheck.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and words in one_line(captured.err)


def test_gradcheck_checks_a_conv_vae_of_the_channels_asked_for(capsys):
    argv = ["--architecture", "conv", "--image-shape", "4x4", "--channels", "1", "2", "--latent-dim", "1",
            "--batch-size", "1"]
    assert gradcheck.main(argv) == 0
    out = capsys.readouterr().out
    assert "conv 4x4-1-2-1-2-1-4x4" in out and "all ok" in out


def test_a_run_records_only_what_its_model_uses(data_dir, tmp_path):
    out = tmp_path / "conv"
    argv = cli_args(data_dir, out, "--quiet", "--architecture", "conv", "--channels", "2", "3", "--objective", "iwae",
                    "--samples", "2", epochs=1, hidden=())
    assert train.main(argv) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["channels"] == [2, 3] and config["n_samples"] == 2
    assert not {"hidden", "decoder_hidden", "variance", "beta", "kl_warmup", "samples"} & set(config)
    checkpoint = load_checkpoint(out / "checkpoint.npz")
    assert checkpoint.config["channels"] == [2, 3]
    assert checkpoint.extra["settings"] == {key: value for key, value in config.items() if key != "version"}


def test_the_test_fraction_is_used_only_with_a_data_file():
    """A setting that ``needs`` another is used, and recorded, only when that one is given."""
    assert settings.SETTINGS["test_fraction"].needs == "data_file"
    assert settings.used({"data_file": None, "test_fraction": 0.2, "seed": 1}) == {"data_file": None, "seed": 1}
    kept = {"data_file": "/d.npz", "test_fraction": 0.2}
    assert settings.used(kept) == kept
    assert settings.unused({"data_file": "/d.npz"}, ["test_fraction"]) is None
    assert settings.saved_problem({**settings.defaults(settings.RUN_SETTINGS), "likelihood": "bernoulli",
                                   "data_file": "/d.npz", "test_fraction": 1.5}) == \
        "test_fraction=1.5 must be a number in (0, 1)"
    for name in ("data_file", "test_fraction", "init_from"):  # runs written before them still resume
        assert settings.SETTINGS[name].added_later and settings.SETTINGS[name].default is None


# ------------------------------------------------------------------------------ runs written before the table

@pytest.mark.slow
def test_a_run_written_before_the_table_resumes(data_dir, tmp_path, capsys):
    """config.json as minivae 0.1 (main before settings.py) wrote it for a conv run: ``samples``, an
    unused ``hidden`` and ``variance``, no ``channels``; the resume reads it, trains on, and rewrites it
    in today's terms."""
    out = tmp_path / "old"
    assert train.main(cli_args(data_dir, out, "--quiet", "--architecture", "conv", epochs=1, hidden=())) == 0
    config = json.loads((out / "config.json").read_text())
    old = {key: value for key, value in config.items() if key not in ("n_samples", "channels")}
    old.update(samples=config["n_samples"], hidden=[400], decoder_hidden=None, variance=1.0)
    (out / "config.json").write_text(json.dumps(old))
    assert train.main(["--resume", str(out), "--epochs", "2", "--quiet"]) == 0
    assert load_checkpoint(out / "checkpoint.npz").epoch == 2
    assert json.loads((out / "config.json").read_text()) == {**config, "epochs": 2}
    # an MLP run of before --objective, --beta and --architecture existed
    out = tmp_path / "older"
    assert train.main(cli_args(data_dir, out, "--quiet", epochs=1)) == 0
    config = json.loads((out / "config.json").read_text())
    old = {key: value for key, value in config.items()
           if key not in ("n_samples", "objective", "beta", "kl_warmup", "architecture")}
    (out / "config.json").write_text(json.dumps({**old, "samples": 1, "variance": 1.0}))
    assert train.main(["--resume", str(out), "--epochs", "2", "--quiet"]) == 0
    assert json.loads((out / "config.json").read_text()) == {**config, "epochs": 2}


def test_migrate_is_the_one_place_for_old_files():
    old = {"samples": 3, "hidden": [400], "decoder_hidden": None, "variance": 1.0, "architecture": "conv",
           "likelihood": "bernoulli", "latent_dim": 2, "version": "0.1.0"}
    assert migrate("config.json", old) == {"n_samples": 3, "architecture": "conv", "likelihood": "bernoulli",
                                           "latent_dim": 2, "version": "0.1.0", "objective": "elbo", "beta": 1.0,
                                           "kl_warmup": 0, "channels": [32, 64], "data_file": None, "init_from": None}
    state = {"hyperparameters": {"beta1": 0.9, "beta2": 0.999}, "m_sum": {"w": np.full(2, 10.0, np.float32)},
             "v_sum": {"w": np.full(2, 1000.0, np.float32)}}
    assert migrate("checkpoint.npz", optimizer_state=state) is None
    assert set(state) == {"hyperparameters", "m", "v"}
    np.testing.assert_allclose(state["m"]["w"], 1.0, rtol=1e-6)
    np.testing.assert_allclose(state["v"]["w"], 1.0, rtol=1e-4)


# ------------------------------------------------------------------------------ issue 26's small ones

def test_a_closed_pipe_ends_a_command_quietly(capsys):
    """In run_command: the reader went away (``| head -1``) -> exit 141, no traceback, nothing more written."""
    def body(args):
        print("first line")
        raise BrokenPipeError(32, "Broken pipe")

    status = cli.run_command("minivae-test", cli.Parser(prog="test"), body, lambda args: "", "here", "", [])
    assert status == cli.BROKEN_PIPE_STATUS == 141
    assert capsys.readouterr().err == ""


@pytest.mark.slow
def test_gradcheck_piped_into_head_exits_quietly():
    result = subprocess.run(f"{sys.executable} -m minivae.gradcheck | head -1; exit ${{PIPESTATUS[0]}}",
                            shell=True, executable="/bin/bash", capture_output=True, text=True, timeout=120)
    assert result.returncode in (0, 141), result.stderr
    assert result.stdout.startswith("minivae-gradcheck: VAE") and result.stdout.count("\n") == 1
    assert "Traceback" not in result.stderr and "BrokenPipeError" not in result.stderr


def test_data_from_a_data_dir_is_named_by_its_folder_not_mnist(data_dir, tmp_path, capsys):
    assert train.main(cli_args(data_dir, tmp_path / "big", "--quiet", batch_size=1000)) == 1
    line = one_line(capsys.readouterr().err)
    assert f"larger than the 64 training examples of the IDX files in {data_dir}" in line and "mnist" not in line
    out = tmp_path / "run"
    assert train.main(cli_args(data_dir, out, "--quiet", epochs=1)) == 0
    assert json.loads((out / "config.json").read_text())["dataset"] is None  # no dataset of the registry
    assert evaluate.main([str(out), "--iw-samples", "2", "--backend", "numpy", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert f"(epoch 1) on the IDX files in {data_dir}:" in printed and "mnist" not in printed
    results = json.loads((out / "evaluation.json").read_text())
    assert results["dataset"] is None and results["data_source"] == str(data_dir)
