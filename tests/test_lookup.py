"""Tests of minivae.data.registry and minivae.data.lookup: the registry's entries, where a dataset is
looked for, and the dataset of a run that names none. Nothing here touches the network (the one
mirror below is a closed port on 127.0.0.1)."""

import hashlib
import os

import pytest
from data_files import (TEST_IMAGES, TRAIN_IMAGES, TRAIN_LABELS, closed_port_url, isolated_cache, quiet,
                        tiny_spec, write_idx_dataset)

from minivae import data
from minivae.data import lookup
from minivae.errors import DataError


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No MINIVAE_DATA, and a user cache inside ``tmp_path``; returns the cache root."""
    return isolated_cache(monkeypatch, tmp_path)


# ------------------------------------------------------------------------------------------ registry

@pytest.mark.parametrize("name", sorted(data.DATASETS))
def test_registry_entries_are_consistent(name):
    spec = data.DATASETS[name]
    assert spec.name == name and all(mirror.endswith("/") for mirror in spec.mirrors)
    assert bool(spec.mirrors) != spec.packaged  # a packaged dataset is never downloaded; the others are
    assert set(spec.checksums) <= set(spec.files)
    for checksum in spec.checksums.values():
        assert checksum.of in ("download", "decompressed")
        assert len(checksum.digest) == hashlib.new(checksum.algorithm).digest_size * 2
        int(checksum.digest, 16)
    assert spec.likelihood_hint in ("bernoulli", "gaussian")


def test_unknown_dataset_name_lists_the_known_ones(clean_env):
    with pytest.raises(DataError, match="unknown dataset 'cifar'.*mnist, fashion-mnist, fashion-mnist-small, frey"):
        data.load_dataset("cifar", log=quiet)


# ------------------------------------------------------------------------------------------ lookup

def test_lookup_order(tmp_path, monkeypatch, clean_env):
    """data_dir > $MINIVAE_DATA/<name> > $MINIVAE_DATA > XDG cache > system dirs."""
    user_root = tmp_path / "minivae-data"
    folders = [
        write_idx_dataset(tmp_path / "system", train_count=1),
        write_idx_dataset(clean_env / "minivae" / "mnist", train_count=2),
        write_idx_dataset(user_root, train_count=3),
        write_idx_dataset(user_root / "mnist", train_count=4),
    ]
    monkeypatch.setenv("MINIVAE_DATA", str(user_root))
    system_dirs = {"mnist": (str(tmp_path / "system"),)}
    given_dir = write_idx_dataset(tmp_path / "given", train_count=5)
    dataset = data.load_dataset("mnist", data_dir=given_dir, log=quiet, system_dirs=system_dirs)
    assert (dataset.source, len(dataset.train_x)) == (str(given_dir), 5)
    for expected_count, folder in reversed(list(enumerate(folders, start=1))):
        dataset = data.load_dataset("mnist", download=False, log=quiet, system_dirs=system_dirs)
        assert (dataset.source, len(dataset.train_x)) == (str(folder), expected_count)
        (folder / TRAIN_IMAGES).unlink()  # an incomplete folder is passed over


def test_cache_folder_honours_xdg_cache_home_else_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.cache_folder("mnist") == os.path.join(str(tmp_path / "xdg"), "minivae", "mnist")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data.cache_folder("frey") == os.path.join(str(tmp_path / "home"), ".cache", "minivae", "frey")


def test_nothing_found_without_download_lists_every_folder(tmp_path, clean_env):
    system = tmp_path / "system"
    system.mkdir()
    with pytest.raises(data.DatasetUnavailable) as raised:
        data.load_dataset("fashion-mnist", download=False, log=quiet,
                          system_dirs={"fashion-mnist": (str(system),)})
    message = str(raised.value)
    assert str(clean_env / "minivae" / "fashion-mnist") + ": no such folder" in message
    assert str(system) + ": missing " + TRAIN_IMAGES in message
    assert "download of fashion-mnist: not attempted" in message
    for way_out in ("network access", "--data-dir DIR", "dataset-fashion-mnist", "--dataset"):
        assert way_out in message


# ------------------------------------------------------------------------------- default dataset

def test_default_falls_back_to_a_local_fashion_mnist(tmp_path, clean_env, monkeypatch):
    monkeypatch.setitem(data.DATASETS, "mnist", tiny_spec([closed_port_url()], name="mnist"))
    system = write_idx_dataset(tmp_path / "usr-share-fashion", train_count=7)
    lines = []
    dataset = data.resolve_default_dataset(log=lines.append, system_dirs={"fashion-mnist": (str(system),)})
    assert dataset.name == "fashion-mnist" and dataset.source == str(system) and len(dataset.train_x) == 7
    notices = [line for line in lines if "Fashion-MNIST" in line]
    assert len(notices) == 1 and str(system) in notices[0]
    assert notices[0].startswith("MNIST is not on this machine and could not be downloaded")


def test_default_never_falls_back_from_a_data_dir_or_a_broken_mnist(tmp_path, clean_env):
    system_dirs = {"fashion-mnist": (str(write_idx_dataset(tmp_path / "usr-share-fashion")),)}
    given = write_idx_dataset(tmp_path / "given", train_count=4)
    dataset = data.resolve_default_dataset(data_dir=given, log=quiet, system_dirs=system_dirs)
    assert (dataset.source, len(dataset.train_x)) == (str(given), 4)
    (given / TRAIN_LABELS).unlink()
    with pytest.raises(DataError, match="cannot load the IDX files from this --data-dir folder"):
        data.resolve_default_dataset(data_dir=given, log=quiet, system_dirs=system_dirs)
    cached = write_idx_dataset(clean_env / "minivae" / "mnist")
    (cached / TEST_IMAGES).write_bytes(b"\x00\x00\x08")
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte: is not an IDX file"):
        data.resolve_default_dataset(log=quiet, system_dirs=system_dirs)


def test_default_prefers_mnist_when_it_is_there(tmp_path, clean_env):
    write_idx_dataset(clean_env / "minivae" / "mnist", train_count=2)
    system = write_idx_dataset(tmp_path / "usr-share-fashion", train_count=7)
    dataset = data.resolve_default_dataset(log=quiet, system_dirs={"fashion-mnist": (str(system),)})
    assert (dataset.name, len(dataset.train_x)) == ("mnist", 2)


def test_default_with_nothing_anywhere_names_all_three(tmp_path, clean_env, monkeypatch):
    monkeypatch.setitem(data.DATASETS, "mnist", tiny_spec([closed_port_url()], name="mnist"))
    monkeypatch.setattr(lookup, "PACKAGED_ROOT", str(tmp_path / "broken-install"))
    with pytest.raises(data.DatasetUnavailable) as raised:
        data.resolve_default_dataset(log=quiet, system_dirs={"fashion-mnist": (str(tmp_path / "none"),)})
    message = str(raised.value)
    assert "mnist is not on this machine" in message and "no copy of fashion-mnist" in message
    assert "packaged fashion-mnist-small is missing" in message and "reinstall minivae" in message
    assert str(clean_env / "minivae" / "mnist") in message and str(tmp_path / "none") in message
    assert str(tmp_path / "broken-install" / "fashion-mnist-small") in message


def test_a_data_dir_alone_is_named_by_its_folder_never_mnist(tmp_path, clean_env):
    """--data-dir without --dataset: the IDX files there may hold any dataset, so the Dataset is named
    by the folder and its labels get no MNIST class names (issue 26, item 4)."""
    given = write_idx_dataset(tmp_path / "my-shoes", train_count=4)
    dataset = data.resolve_default_dataset(data_dir=given, log=quiet, system_dirs={})
    assert (dataset.name, dataset.class_names) == ("my-shoes", None)
    named = data.load_dataset("fashion-mnist", data_dir=given, log=quiet)
    assert (named.name, named.class_names) == ("fashion-mnist", data.FASHION_MNIST_CLASSES)
