"""Fused elementwise kernels, one module per engine: cpu.py (Numba) and cuda.py (CuPy). Each
computes the formulas of the plain ``xp`` code it replaces; the Backend chooses (backend.py)."""
