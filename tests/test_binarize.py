"""Tests of minivae.data.binarize: static Bernoulli draws, and the --binarize modes of a dataset."""

import numpy as np
import pytest

from minivae import data, settings
from minivae.data.dataset import Dataset


def test_binarize_static_is_a_fixed_bernoulli_draw():
    x = np.full((200, 100), 0.3, dtype=np.float32)
    x[:, :10] = 0.0
    x[:, 10:20] = 1.0
    binary = data.binarize_static(x, seed=7)
    assert binary.dtype == np.float32 and binary.shape == x.shape
    assert set(np.unique(binary)) <= {0.0, 1.0}
    assert not binary[:, :10].any() and binary[:, 10:20].all()
    assert abs(binary[:, 20:].mean() - 0.3) < 0.01  # 16000 draws: standard error 0.0036
    np.testing.assert_array_equal(binary, data.binarize_static(x, seed=7))
    assert not np.array_equal(binary, data.binarize_static(x, seed=8))
    assert data.binarize_static(x.astype(np.float64), seed=7).dtype == np.float64


def small_dataset():
    """A Dataset of 300 training and 200 test rows of 50 pixels, all 0.5."""
    return Dataset("half", np.full((300, 50), 0.5, np.float32), None, np.full((200, 50), 0.5, np.float32), None,
                   (5, 10), "memory", "bernoulli")


@pytest.mark.parametrize("mode", data.BINARIZE_MODES)
def test_binarize_dataset_draws_what_each_mode_says(mode):
    """none: nothing; static: both splits, training with seed 2s, test with 2s + 1; dynamic: the test
    split only (the training batches are drawn on the device)."""
    dataset = small_dataset()
    data.binarize_dataset(dataset, mode, seed=3)
    expected_train = data.binarize_static(np.full((300, 50), 0.5, np.float32), seed=6)
    expected_test = data.binarize_static(np.full((200, 50), 0.5, np.float32), seed=7)
    np.testing.assert_array_equal(dataset.train_x, expected_train if mode == "static" else 0.5)
    np.testing.assert_array_equal(dataset.test_x, 0.5 if mode == "none" else expected_test)


def test_the_modes_are_the_ones_the_settings_accept():
    rule = settings.SETTINGS["binarize"].rule
    assert data.BINARIZE_MODES == ("none", "static", "dynamic")
    assert [rule(mode) for mode in data.BINARIZE_MODES] == [None, None, None]
    assert rule("sometimes") is not None
