"""The dataset that ships with minivae (fashion-mnist-small) and the bare command that falls back to it."""

import csv
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from tiny_data import command_stderr_lines

from minivae import data
from minivae.data import lookup
from minivae.errors import DataError
from minivae.make_small_dataset import build_subset, first_per_class, main as make_small_dataset

SMALL = "fashion-mnist-small"
PACKAGED_FOLDER = os.path.join(data.PACKAGED_ROOT, SMALL)
MAX_PACKAGED_BYTES = 6_000_000


def test_packaged_files_match_the_registry_checksums():
    """Digests computed here with hashlib on the gunzipped bytes, independently of the IDX reader."""
    spec = data.DATASETS[SMALL]
    assert spec.packaged and not spec.mirrors
    for name in spec.files:
        checksum = spec.checksums[name]
        assert (checksum.algorithm, checksum.of) == ("sha256", "decompressed")
        with open(os.path.join(PACKAGED_FOLDER, name + ".gz"), "rb") as handle:
            content = gzip.decompress(handle.read())
        assert hashlib.sha256(content).hexdigest() == checksum.digest, name


def test_packaged_folder_holds_the_data_its_licence_and_attribution_within_the_size_budget():
    names = sorted(os.listdir(PACKAGED_FOLDER))
    assert names == sorted(["LICENSE", "README.md"] + [name + ".gz" for name in data.IDX_FILES])
    with open(os.path.join(PACKAGED_FOLDER, "LICENSE")) as handle:
        licence = handle.read()
    assert "MIT License" in licence and "Zalando SE" in licence
    size = sum(os.path.getsize(os.path.join(PACKAGED_FOLDER, name)) for name in names)
    assert size <= MAX_PACKAGED_BYTES


def test_packaged_dataset_is_balanced_fashion_mnist():
    dataset = data.load_dataset(SMALL, download=False)
    spec = data.DATASETS[SMALL]
    assert dataset.train_x.shape == (spec.train_count, 784) and dataset.test_x.shape == (spec.test_count, 784)
    assert dataset.train_x.dtype == np.float32 and 0 <= dataset.train_x.min() < dataset.train_x.max() <= 1
    np.testing.assert_array_equal(np.bincount(dataset.train_y), [1000] * 10)
    np.testing.assert_array_equal(np.bincount(dataset.test_y), [200] * 10)
    assert dataset.class_names == data.FASHION_MNIST_CLASSES and len(dataset.class_names) == 10


def test_a_damaged_packaged_file_is_refused_naming_it(tmp_path, monkeypatch):
    """One changed pixel in a well-formed file: the structure is fine, only the checksum can tell."""
    copy = tmp_path / SMALL
    shutil.copytree(PACKAGED_FOLDER, copy)
    target = copy / (data.IDX_FILES[2] + ".gz")
    content = bytearray(gzip.decompress(target.read_bytes()))
    content[-1] ^= 1
    target.write_bytes(gzip.compress(bytes(content), compresslevel=1))
    monkeypatch.setattr(lookup, "PACKAGED_ROOT", str(tmp_path))
    with pytest.raises(DataError, match=rf"{data.IDX_FILES[2]}\.gz: the sha256 of the decompressed bytes .*"
                                        r"reinstall"):
        data.load_dataset(SMALL)


def test_a_packaged_dataset_is_never_downloaded(tmp_path, monkeypatch):
    monkeypatch.setattr(lookup, "PACKAGED_ROOT", str(tmp_path))
    with pytest.raises(data.DatasetUnavailable, match="it has no mirror, it ships with minivae; reinstall"):
        data.load_dataset(SMALL)
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------------- rebuilding the subset

def full_dataset(folder, train_labels, test_labels, rows=3, columns=2):
    """IDX files whose image i is filled with the value i (so a selection can be read off the pixels)."""
    os.makedirs(folder, exist_ok=True)
    for (images_name, labels_name), labels in zip(((data.IDX_FILES[0], data.IDX_FILES[1]),
                                                   (data.IDX_FILES[2], data.IDX_FILES[3])),
                                                  (train_labels, test_labels)):
        images = np.repeat(np.arange(len(labels), dtype=np.uint8), rows * columns).reshape(-1, rows, columns)
        data.write_idx(os.path.join(folder, images_name + ".gz"), images)
        data.write_idx(os.path.join(folder, labels_name), np.asarray(labels, np.uint8))
    return folder


def test_first_per_class_keeps_the_first_of_each_class_in_file_order():
    labels = [2, 0, 1, 0, 2, 2, 1, 0, 1]
    np.testing.assert_array_equal(first_per_class(labels, 2), [0, 1, 2, 3, 4, 6])
    with pytest.raises(DataError, match="class 1 has 2 items, fewer than the 4 per class"):
        first_per_class(labels[:8] + [0], 4)


def test_build_subset_is_stratified_ordered_and_reproducible_byte_for_byte(tmp_path):
    source = full_dataset(tmp_path / "full", train_labels=[1, 1, 0, 2, 0, 1, 2, 2, 0], test_labels=[0, 2, 1, 1, 2, 0])
    assert build_subset(source, tmp_path / "a", train_per_class=2, test_per_class=1) == (6, 3)
    subset = data.load_dataset("mnist", data_dir=tmp_path / "a")
    np.testing.assert_array_equal(subset.train_y, [1, 1, 0, 2, 0, 2])
    np.testing.assert_array_equal(np.rint(subset.train_x[:, 0] * 255), [0, 1, 2, 3, 4, 6])
    np.testing.assert_array_equal(subset.test_y, [0, 2, 1])
    np.testing.assert_array_equal(np.rint(subset.test_x[:, 0] * 255), [0, 1, 2])
    assert make_small_dataset([str(source), str(tmp_path / "b"), "--train-per-class", "2",
                               "--test-per-class", "1"]) == 0
    for name in data.IDX_FILES:
        assert (tmp_path / "a" / (name + ".gz")).read_bytes() == (tmp_path / "b" / (name + ".gz")).read_bytes()


def test_build_subset_names_a_missing_source_file(tmp_path, capsys):
    assert make_small_dataset([str(tmp_path), str(tmp_path / "out")]) == 1
    assert f"{tmp_path}: holds neither train-images-idx3-ubyte nor train-images-idx3-ubyte.gz" in capsys.readouterr().err


# ------------------------------------------------------------------------------ the bare command

def offline_environment(home):
    """A newcomer's machine: no MNIST, no system copy, an empty HOME, downloads switched off."""
    env = {key: value for key, value in os.environ.items() if key not in ("MINIVAE_DATA", "XDG_CACHE_HOME")}
    env.update(HOME=str(home), MINIVAE_NO_DOWNLOAD="1", MINIVAE_SYSTEM_DATA="", MPLCONFIGDIR=str(home / "mpl"))
    return env


@pytest.mark.slow
def test_the_bare_command_trains_on_the_packaged_dataset_offline(tmp_path):
    """`python -m minivae.train` with no dataset flag (one epoch, to keep the suite short), then evaluate."""
    home = tmp_path / "home"
    home.mkdir()
    env = offline_environment(home)
    done = subprocess.run([sys.executable, "-m", "minivae.train", "--epochs", "1", "--no-progress"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert command_stderr_lines(done.stderr) == []
    notice = done.stdout.splitlines()[0]
    assert notice.startswith("MNIST is not on this machine (downloads are off)") and SMALL in notice
    results = tmp_path / "results"
    assert json.loads((results / "config.json").read_text())["dataset"] == SMALL
    with open(results / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["epoch"] for row in rows] == ["1"] and 0 < float(rows[0]["test_loss"]) < 544  # 784 ln 2
    for name in ("reconstruction_1.png", "sample_1.png", "loss.png", "checkpoint.npz"):
        assert (results / name).stat().st_size > 0, name
    assert not (home / ".cache").exists()  # nothing downloaded or cached

    evaluated = subprocess.run([sys.executable, "-m", "minivae.evaluate", "results", "--iw-samples", "4",
                                "--limit", "64"], cwd=tmp_path, env=env, capture_output=True, text=True,
                               timeout=300)
    assert evaluated.returncode == 0, evaluated.stderr
    report = json.loads((results / "evaluation.json").read_text())
    assert report["dataset"] == SMALL


def test_class_names_are_kept_only_when_every_label_has_one(tmp_path):
    labels = np.array([0, 3, 9, 1], np.uint8)
    full_dataset(tmp_path / "digits", train_labels=labels, test_labels=labels[:2])
    assert data.load_dataset("mnist", data_dir=tmp_path / "digits").class_names == data.MNIST_CLASSES
    full_dataset(tmp_path / "other", train_labels=labels, test_labels=[0, 10])
    assert data.load_dataset("mnist", data_dir=tmp_path / "other").class_names is None
