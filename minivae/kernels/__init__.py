"""Fused elementwise kernels, one module per engine: ``cuda`` holds CuPy's, ``cpu`` Numba's (with the
Bernoulli likelihood's in ``bernoulli_cpu`` and the convolutions' in ``conv_cpu``). Each
kernel computes the formulas of the plain ``xp`` code it replaces (layers, gaussian, likelihoods,
optim), which stays the readable reference; the tests compare the two. ``backend.py`` chooses which
engine's kernels a Backend gets, or none (then the plain code runs).
"""
