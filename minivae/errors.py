"""The library's own error types.

Every failure a user can cause (a bad file, a bad flag, a missing GPU, a diverging run) raises a
subclass of ``MinivaeError`` whose message names what is wrong and how to fix it. The command-line
tools print that message as one line and exit non-zero, with no traceback unless ``--debug``.
"""


class MinivaeError(Exception):
    """Base class of every error minivae raises on purpose."""


class BackendUnavailable(MinivaeError):
    """The requested array backend (CuPy, a CUDA device) cannot be used on this machine."""


class DataError(MinivaeError):
    """A dataset file is missing, malformed or fails verification."""


class CheckpointError(MinivaeError):
    """A checkpoint cannot be written, or does not match what it is loaded into."""


class NumericalError(MinivaeError):
    """A loss or gradient became NaN or infinite."""


class DistributedError(MinivaeError):
    """Data-parallel training cannot start (no mpi4py, no MPI launcher, no NCCL, ranks set up
    differently), or its ranks no longer hold the same parameters."""
