"""minivae: a Variational Autoencoder whose every gradient is derived by hand and checked."""

__version__ = "0.1.0"

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
