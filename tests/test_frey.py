"""Tests of minivae.data.frey: Frey Face's MATLAB file loaded, split and refused when malformed.
(Its download is tested in test_fetch.py.)"""

import numpy as np
import pytest
import scipy.io
from data_files import isolated_cache, quiet, write_frey

from minivae import data
from minivae.errors import DataError


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No MINIVAE_DATA, and a user cache inside ``tmp_path``; returns the cache root."""
    return isolated_cache(monkeypatch, tmp_path)


def test_frey_loads_scaled_and_split(tmp_path, clean_env):
    folder, ff = write_frey(tmp_path / "frey", images=230)
    dataset = data.load_dataset("frey", data_dir=folder, log=quiet)
    assert dataset.train_x.shape == (30, 560) and dataset.test_x.shape == (200, 560)
    assert dataset.train_y is None and dataset.test_y is None
    assert dataset.image_shape == (28, 20) and dataset.likelihood_hint == "gaussian"
    assert dataset.train_x.dtype == np.float32
    last_image = dataset.test_x[-1].reshape(28, 20)
    row, column = 5, 17  # pixel (row, column) of image i is ff[row * 20 + column, i]
    assert last_image[row, column] == pytest.approx(ff[row * 20 + column, 229] / 255.0)
    np.testing.assert_allclose(dataset.train_x[0], ff[:, 0] / 255.0, rtol=1e-6)


@pytest.mark.parametrize("content, complaint", [
    (b"MATLAB 5.0 MAT-file, this is not really one" + bytes(200), "not a readable MATLAB .mat file"),
    ({"faces": np.zeros((560, 300), np.uint8)}, "has no variable 'ff'"),
    ({"ff": np.zeros((100, 300), np.uint8)}, "needs uint8 of shape \\(560, images\\)"),
    ({"ff": np.zeros((560, 300), np.float64)}, "needs uint8"),
    ({"ff": np.zeros((560, 150), np.uint8)}, "holds 150 images; Frey Face needs more than 200"),
], ids=["corrupt", "no-ff", "wrong-shape", "wrong-dtype", "too-few"])
def test_bad_frey_file_is_a_data_error(tmp_path, clean_env, content, complaint):
    path = tmp_path / "frey_rawface.mat"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        scipy.io.savemat(path, content)
    with pytest.raises(DataError, match=complaint) as raised:
        data.load_dataset("frey", data_dir=tmp_path, log=quiet)
    assert str(path) in str(raised.value)
