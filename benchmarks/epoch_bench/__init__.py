"""The pieces of benchmarks/bench_epoch.py, one idea per module (imports only go down this list):

  machine.py    machine and BLAS facts: CPU, cores, load, peak RSS, the BLAS kernel, the checkout
  gemm.py       the GEMM probe: an epoch's matrix-product FLOPs and the rate of np.matmul at its shapes
  report.py     the printed tables, the ratios to GEMM-only and to PyTorch, the JSON file
  timing.py     epoch timing: one Bench per row, interleaved rounds, the cProfile of an epoch
  conv.py       the conv VAE rows against the same network in PyTorch
  cli_runs.py   whole ``python -m minivae.train`` epochs and start-up, each in a new process
  floors.py     the parts of an MLP and a conv VAE step, timed where they run, and each step's floor

Import it only from bench_epoch.py, after that script has set the thread count and imported minivae:
these modules import NumPy, and OpenBLAS reads its thread settings when NumPy is first imported.

The shapes below are those of the default model timed by every MLP row.
"""

import os

BENCHMARKS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # torch_reference.py is here
N_SAMPLES = 60_000
INPUT_DIM, HIDDEN, LATENT = 784, 400, 20
# (in, out) of every Linear of the default model; the encoder head is one fused 400 -> 2*20 layer
# in minivae and two 400 -> 20 layers (fc21, fc22) in PyTorch: the same GEMM FLOPs.
LAYER_SIZES = ((INPUT_DIM, HIDDEN), (HIDDEN, 2 * LATENT), (LATENT, HIDDEN), (HIDDEN, INPUT_DIM))
