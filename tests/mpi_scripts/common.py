"""What the scripts run under ``mpiexec`` share: a tiny model and tiny data, made alike on every rank."""

import numpy as np

from minivae.backend import numpy_backend
from minivae.model import VAE

INPUT_DIM = 16


def tiny_model(dtype="float64", seed=3, **options):
    """A small MLP VAE on one CPU thread (several ranks share the cores), the same on every rank."""
    backend = numpy_backend(dtype, seed=seed, threads=1)
    options = {"hidden": (8,), "latent_dim": 3, **options}
    return VAE(input_dim=INPUT_DIM, backend=backend, **options)


def tiny_data(rows, seed=11):
    """``rows`` datapoints of INPUT_DIM values in [0, 1] (host, float64), the same on every rank."""
    return np.random.default_rng(seed).random((rows, INPUT_DIM))
