"""Shared test set-up: Hypothesis profiles and the one backend fixture every test body runs on."""

import os

import pytest
from hypothesis import HealthCheck, settings

from device_guard import GuardBackend
from minivae.backend import cupy_unavailable_reason, get_backend

# `ci`: bounded examples and no deadline (shared 2-core runners time erratically). Selected when CI is set.
settings.register_profile("ci", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# `thorough`: for hunting rare failures by hand: pytest --hypothesis-profile=thorough
settings.register_profile("thorough", max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if os.environ.get("CI") else "dev")

# numpy, with its fused Numba kernels (minivae/kernels/cpu.py); the device guard (NumPy refusing
# what CuPy refuses: host/device mixing, implicit conversion), so every test body also proves the
# device path on a machine without a GPU; and cupy itself wherever it imports and sees a GPU.
# The guard runs twice: with the plain xp code (the reference every fused kernel is checked against,
# and the CPU's path without Numba or with MINIVAE_KERNELS=plain) and with the fused-kernel path
# CuPy takes. So both paths run every backend-parametrised test body, with no backend added.
BACKEND_NAMES = ["numpy", "device-guard", "device-guard-fused"] + (
    ["cupy"] if cupy_unavailable_reason() is None else [])


@pytest.fixture(params=BACKEND_NAMES, scope="session")
def make_backend(request):
    """A factory ``make_backend(dtype="float64", seed=0)`` for each available backend."""

    def make(dtype="float64", seed=0):
        if request.param.startswith("device-guard"):
            return GuardBackend(dtype=dtype, seed=seed, fused=request.param.endswith("fused"))
        return get_backend(request.param, dtype=dtype, seed=seed)

    make.name = request.param
    return make
