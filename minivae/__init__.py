"""minivae: a Variational Autoencoder whose every gradient is derived by hand and checked."""

__version__ = "0.1.0"

import os

# OpenBLAS (NumPy's BLAS) keeps each idle worker thread spinning for ~0.1 s after a matrix product,
# holding the core that minivae's own threads (Backend.split_rows: Adam, the likelihood) want next:
# on 2 cores Adam took 0.50 s per epoch beside the spinning threads, 0.28 s once they sleep at once
# (benchmarks/README.md). OpenBLAS reads this when NumPy is first imported, so it acts only when
# minivae is imported first; a value set by the user is kept.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

from .backend import Backend, get_backend  # noqa: E402
from .errors import BackendUnavailable, CheckpointError, DataError, MinivaeError, NumericalError  # noqa: E402
from .layers import Linear, Parameter, ReLU, Sequential, Sigmoid, Tanh  # noqa: E402
from .model import VAE, LossTerms  # noqa: E402
from .optim import SGD, Adam  # noqa: E402

__all__ = [
    "__version__", "Backend", "get_backend", "VAE", "LossTerms", "Adam", "SGD", "Parameter", "Linear", "ReLU",
    "Tanh", "Sigmoid", "Sequential", "MinivaeError", "BackendUnavailable", "DataError", "CheckpointError",
    "NumericalError",
]
