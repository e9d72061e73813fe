"""minivae: a Variational Autoencoder whose every gradient is derived by hand and checked."""

import os

# OpenBLAS (NumPy's BLAS) keeps each idle worker thread spinning for 2^28 cycles (~0.1 s) after a
# matrix product, holding the core that minivae's own threads (Backend.split_rows: Adam, the
# likelihood) want next. 2^18 cycles (~0.1 ms) keeps them awake between the products of one step
# and frees the core for Adam: on 2 cores, Adam 0.50-0.64 -> 0.26-0.36 s per epoch, the epoch
# 2.11-2.51 -> 1.75-2.08 s (benchmarks/README.md, "What the speed work measured"). OpenBLAS reads
# this when NumPy is first imported, so it acts only when minivae is imported first; a value set by
# the user is kept. The one process-wide effect of importing minivae (children inherit it).
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "18")

from .interrupts import install_for_commands  # noqa: E402
from .version import __version__  # noqa: E402

# `python -m minivae.train` (or evaluate) only: Ctrl-C during the imports below is recorded, and
# reported by the command in one line, instead of a traceback (minivae/interrupts.py).
install_for_commands()

from .backend import Backend, get_backend  # noqa: E402
from .errors import BackendUnavailable, CheckpointError, DataError, MinivaeError, NumericalError  # noqa: E402
from .layers import Linear, Parameter, ReLU, Sequential, Sigmoid, Tanh  # noqa: E402
from .model import VAE, LossTerms  # noqa: E402
from .checkpoint import load_model  # noqa: E402
from .optim import SGD, Adam  # noqa: E402

__all__ = [
    "__version__", "Backend", "get_backend", "VAE", "LossTerms", "load_model", "Adam", "SGD", "Parameter", "Linear", "ReLU",
    "Tanh", "Sigmoid", "Sequential", "MinivaeError", "BackendUnavailable", "DataError", "CheckpointError",
    "NumericalError",
]
