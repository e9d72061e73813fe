"""``python -m minivae.train --data-file`` (your own arrays) and ``--init-from`` (a safetensors file's
weights), in this process through ``train.main`` (issue 24, items 2 and 4); evaluate and explore read
such a run's data through the same loader (``minivae.data.load_run_data``)."""

import json

import numpy as np
import pytest
import safetensors.numpy
from safetensors import safe_open
from tiny_data import images_and_labels, write_dataset

from minivae import evaluate, explore, export, load_model, train
from minivae.checkpoint import load_checkpoint
from minivae.safetensors_io import read_weights

SMALL = ["--epochs", "1", "--batch-size", "16", "--hidden", "16", "--latent-dim", "2", "--quiet"]


@pytest.fixture(scope="module")
def arrays(tmp_path_factory):
    """A .npz of 96 training and 32 test 8x8 uint8 images with labels, and a .npy of 80 rows of 12 floats."""
    folder = tmp_path_factory.mktemp("arrays")
    x, y = images_and_labels(96, seed=1)
    x_test, y_test = images_and_labels(32, seed=2)
    np.savez(folder / "images.npz", x=x, y=y, x_test=x_test, y_test=y_test)
    np.save(folder / "rows.npy", np.random.default_rng(3).random((80, 12)).astype(np.float32))
    return folder


@pytest.fixture(scope="module")
def array_run(arrays, tmp_path_factory):
    """A 1-epoch run on images.npz."""
    out = tmp_path_factory.mktemp("array_run") / "run"
    assert train.main(["--data-file", str(arrays / "images.npz"), "--out", str(out), *SMALL]) == 0
    return out


def test_a_npz_of_images_trains_records_the_file_and_resumes(array_run, arrays):
    config = json.loads((array_run / "config.json").read_text())
    assert config["data_file"] == str(arrays / "images.npz")  # absolute: a resume may start elsewhere
    assert config["dataset"] is None and config["test_fraction"] is None
    assert load_model(array_run).config["input_dim"] == 64
    assert train.main(["--resume", str(array_run), "--epochs", "2", "--quiet"]) == 0
    assert load_checkpoint(array_run / "checkpoint.npz").epoch == 2


def test_rows_of_a_npy_hold_out_the_test_fraction(arrays, tmp_path):
    out = tmp_path / "run"
    assert train.main(["--data-file", str(arrays / "rows.npy"), "--test-fraction", "0.25", "--out", str(out),
                       *SMALL]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["test_fraction"] == 0.25
    assert load_model(out).config["input_dim"] == 12


def test_the_default_test_fraction_is_recorded_as_used(arrays, tmp_path):
    """Without --test-fraction a file without x_test gives 0.1 of its items to the test set: config.json
    says so, so the run's split does not hang on a default that may change."""
    out = tmp_path / "run"
    assert train.main(["--data-file", str(arrays / "rows.npy"), "--out", str(out), *SMALL]) == 0
    assert json.loads((out / "config.json").read_text())["test_fraction"] == 0.1
    assert evaluate.main([str(out), "--iw-samples", "2", "--quiet"]) == 0
    assert json.loads((out / "evaluation.json").read_text())["test_points"] == 8  # 0.1 of 80


def test_evaluate_and_explore_read_the_run_s_arrays(array_run, arrays, capsys):
    assert evaluate.main([str(array_run), "--iw-samples", "2", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert f"on {arrays / 'images.npz'}:" in printed and "IDX" not in printed and "mnist" not in printed
    result = json.loads((array_run / "evaluation.json").read_text())
    assert result["test_points"] == 32
    page = array_run / "explorer.html"
    assert explore.main([str(array_run), "--out", str(page)]) == 0
    assert page.stat().st_size > 0


@pytest.mark.parametrize("flags, words", [
    (["--dataset", "fashion-mnist-small"], "--data-file names the data, and so does --dataset"),
    (["--data-dir", "."], "--data-file names the data, and so does --data-dir"),
])
def test_data_file_with_another_source_of_data_is_one_line_and_exit_2(arrays, tmp_path, capsys, flags, words):
    out = tmp_path / "run"
    assert train.main(["--data-file", str(arrays / "images.npz"), *flags, "--out", str(out), *SMALL]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0]
    assert not out.exists()


def test_a_data_dir_on_resuming_a_data_file_run_is_one_line_and_exit_2(array_run, tmp_path, capsys):
    config = (array_run / "config.json").read_text()
    folder = write_dataset(tmp_path / "idx")
    assert train.main(["--resume", str(array_run), "--data-dir", str(folder), "--epochs", "9", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the run trains on --data-file" in err[0] and "drop --data-dir" in err[0]
    assert (array_run / "config.json").read_text() == config  # nothing recorded


def test_test_fraction_without_a_data_file_is_refused_and_never_recorded(tmp_path, capsys):
    out = tmp_path / "run"
    assert train.main(["--test-fraction", "0.2", "--out", str(out), *SMALL]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--test-fraction" in err[0] and "--data-file" in err[0]
    assert not out.exists()


def test_a_bad_array_file_is_one_line_naming_the_file_and_field(arrays, tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    x, _ = images_and_labels(40)
    np.savez(bad, x=x.astype(np.float32) * 2.0)  # floats past 1
    assert train.main(["--data-file", str(bad), "--out", str(tmp_path / "run"), *SMALL]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0] and "'x'" in err[0]


@pytest.fixture(scope="module")
def exported(array_run, tmp_path_factory):
    path = tmp_path_factory.mktemp("exported") / "weights.safetensors"
    assert export.main([str(array_run), "--format", "safetensors", "--out", str(path)]) == 0
    return path


@pytest.fixture(scope="module")
def pytorch_file(exported, tmp_path_factory):
    """The exported tensors without minivae's metadata: a file as safetensors.torch.save_file writes the
    PyTorch example's state dict."""
    with safe_open(str(exported), framework="np") as handle:
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    path = tmp_path_factory.mktemp("pytorch") / "vae.safetensors"
    safetensors.numpy.save_file(tensors, str(path))
    return path


@pytest.mark.parametrize("written_by", ["minivae", "pytorch"])
def test_init_from_starts_from_the_file_s_weights(arrays, exported, pytorch_file, tmp_path, monkeypatch,
                                                  written_by):
    exported = exported if written_by == "minivae" else pytorch_file
    monkeypatch.chdir(exported.parent)  # given by its bare name, recorded by its absolute path
    seen = {}

    def first_step(self, *args, **kwargs):  # the weights the first step starts from, then stop
        seen.update({p.name: np.array(p.data) for p in self.parameters()})
        raise KeyboardInterrupt

    monkeypatch.setattr(train.VAE, "loss_and_backward", first_step)
    out = tmp_path / "run"
    assert train.main(["--data-file", str(arrays / "images.npz"), "--init-from", exported.name,
                       "--out", str(out), *SMALL]) == 130
    _, _, weights = read_weights(exported)
    assert seen.keys() == weights.keys()
    for name, value in weights.items():
        np.testing.assert_array_equal(seen[name], value, err_msg=name)
    assert json.loads((out / "config.json").read_text())["init_from"] == str(exported)
    seen.clear()  # stopped before its first checkpoint, the run starts over from the file's weights
    assert train.main(["--resume", str(out), "--quiet"]) == 130
    for name, value in weights.items():
        np.testing.assert_array_equal(seen[name], value, err_msg=name)


def _rewritten(exported, folder, change):
    """A copy of the exported file with ``change`` applied to its {name: array} (metadata kept)."""
    with safe_open(str(exported), framework="np") as handle:
        metadata, arrays = handle.metadata(), {name: handle.get_tensor(name) for name in handle.keys()}
    change(arrays)
    path = folder / "changed.safetensors"
    safetensors.numpy.save_file(arrays, str(path), metadata=metadata)
    return path


def _nan_in_fc3_bias(arrays):
    arrays["fc3.bias"] = arrays["fc3.bias"].copy()
    arrays["fc3.bias"][1] = np.nan


def _fc4_bias_in_float16(arrays):
    arrays["fc4.bias"] = arrays["fc4.bias"].astype(np.float16)


MISFITS = {  # how the file is changed (None: as exported), the run's --hidden, and what the one line says
    "shape": (None, 17, "tensor 'fc1.weight' has shape (16, 64), this model needs (17, 64)"),
    "missing": (lambda arrays: arrays.pop("fc22.bias"), 16, "tensor 'fc22.bias' is missing"),
    "extra": (lambda arrays: arrays.update(extra=np.zeros(2, np.float32)), 16, "tensor 'extra' is not a tensor"),
    "dtype": (_fc4_bias_in_float16, 16, "tensor 'fc4.bias' has dtype F16"),
    "non-finite": (_nan_in_fc3_bias, 16, "tensor 'fc3.bias' holds NaN or infinite values"),
}


@pytest.mark.parametrize("misfit", MISFITS)
def test_init_from_a_file_that_does_not_fit_is_refused_before_the_run_is_written(arrays, exported, tmp_path,
                                                                                  capsys, misfit):
    change, hidden, words = MISFITS[misfit]
    path = exported if change is None else _rewritten(exported, tmp_path, change)
    small = [str(hidden) if SMALL[i - 1] == "--hidden" else flag for i, flag in enumerate(SMALL)]
    out = tmp_path / "run"
    assert train.main(["--data-file", str(arrays / "images.npz"), "--init-from", str(path),
                       "--out", str(out), *small]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0] and words in err[0]
    if misfit in ("shape", "missing", "extra"):  # the fix named is the flags, not exporting the file again
        assert "pass the flags of the model the file holds" in err[0]
    assert not out.exists()  # not even the folder: the file is checked before --out is made


def test_init_from_a_missing_file_creates_nothing(arrays, tmp_path, capsys):
    out = tmp_path / "run"
    assert train.main(["--data-file", str(arrays / "images.npz"), "--init-from", str(tmp_path / "none.safetensors"),
                       "--out", str(out), *SMALL]) == 1
    assert "no such safetensors file" in capsys.readouterr().err
    assert not out.exists()


def test_init_from_with_resume_is_one_line_and_exit_2(array_run, exported, capsys):
    assert train.main(["--resume", str(array_run), "--init-from", str(exported), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--init-from" in err[0] and "--resume" in err[0]


@pytest.fixture(scope="module")
def idx_folder_run(tmp_path_factory):
    """A 1-epoch run on the IDX files of a folder named "shoes", given with --data-dir alone."""
    folder = write_dataset(tmp_path_factory.mktemp("idx") / "shoes")
    out = tmp_path_factory.mktemp("idx_run") / "run"
    assert train.main(["--data-dir", str(folder), "--out", str(out), *SMALL]) == 0
    return folder, out


def test_data_dir_alone_is_called_by_its_folder_never_mnist(idx_folder_run, capsys):
    """Issue 26, item 4: the files of a --data-dir may hold any dataset; evaluate and the explorer page
    name them by the folder."""
    folder, out = idx_folder_run
    assert evaluate.main([str(out), "--iw-samples", "2", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert f"on the IDX files in {folder}:" in printed and "mnist" not in printed
    result = json.loads((out / "evaluation.json").read_text())
    assert (result["dataset"], result["data_source"]) == (None, str(folder))
    page = out / "explorer.html"
    assert explore.main([str(out), "--out", str(page), "--points", "8", "--quiet"]) == 0
    html = page.read_text()
    assert '"dataset":"shoes"' in html and "mnist" not in html


def test_a_data_dir_missing_a_file_is_one_line_naming_the_folder_not_mnist(tmp_path, capsys):
    folder = write_dataset(tmp_path / "shoes")
    (folder / "t10k-labels-idx1-ubyte").unlink()
    assert train.main(["--data-dir", str(folder), "--out", str(tmp_path / "run"), *SMALL]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{folder}: cannot load the IDX files from this --data-dir folder" in err[0]
    assert "mnist" not in err[0]


def test_data_dir_with_a_dataset_is_called_by_the_dataset_s_name(idx_folder_run, tmp_path, capsys):
    folder, _ = idx_folder_run
    out = tmp_path / "run"
    assert train.main(["--dataset", "fashion-mnist", "--data-dir", str(folder), "--out", str(out), *SMALL]) == 0
    assert evaluate.main([str(out), "--iw-samples", "2", "--no-progress"]) == 0
    assert " on fashion-mnist: " in capsys.readouterr().out
    assert train.main(["--dataset", "fashion-mnist", "--data-dir", str(folder), "--out", str(tmp_path / "big"),
                       *SMALL, "--batch-size", "1000"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"training examples of fashion-mnist ({folder})" in err[0]
