"""The GEMM probe: the matrix-product FLOPs of a training epoch, and how fast ``matmul`` runs them.

``gemm_rates`` times a 2048 x 2048 square product (the machine's peak) and the step's own matmuls at
the model's shapes, back to back; an epoch at that rate is the "GEMM-only" time every row is set
against. ``measure_peaks`` does so for each (array library, dtype) a run uses.
"""

import time

import numpy as np

from minivae.backend import get_backend

from . import LAYER_SIZES

SQUARE = 2048


# ------------------------------------------------------------------------------- FLOP counting

def epoch_gemm_flops(n_samples, layer_sizes=LAYER_SIZES):
    """Matrix-multiply FLOPs of one training pass over ``n_samples`` samples (forward + backward).

    For each Linear with ``in`` inputs and ``out`` outputs, a batch of B rows costs
      forward  y  = x W:    2 * B * in * out
      backward dW = x^T dy: 2 * B * in * out
      backward dx = dy W^T: 2 * B * in * out, except for the first layer (its input is the data,
                            whose gradient nobody needs; minivae and PyTorch both skip it).
    Every term is linear in B, so an epoch costs the same whatever the batch size:
      2 * n_samples * (3 * sum(in * out) - in_0 * out_0).
    Only GEMM FLOPs are counted: activations, the loss, the reparameterization, the KL and Adam
    (elementwise work) are not, so GFLOP/s and % of peak computed from this are lower bounds on
    the work done and measure how close an epoch comes to pure-GEMM speed.
    For the default model: 3.28 MFLOP per sample, 196.8 GFLOP per 60,000-sample epoch.
    """
    per_sample = sum(3 * n_in * n_out for n_in, n_out in layer_sizes)
    first_in, first_out = layer_sizes[0]
    return 2 * n_samples * (per_sample - first_in * first_out)


def step_gemms(xp, dtype, batch, layer_sizes=LAYER_SIZES, seed=0):
    """The matmuls of one training step as a list of (a, b, out) operands, with the transposed
    views the library uses: forward ``x @ W``, backward ``x.T @ dy`` and ``dy @ W.T``."""
    rng = np.random.default_rng(seed)

    def rand(*shape):
        return xp.asarray(rng.random(shape, dtype=np.float64), dtype=dtype)

    gemms = []
    for i, (n_in, n_out) in enumerate(layer_sizes):
        x, w, dy = rand(batch, n_in), rand(n_in, n_out), rand(batch, n_out)
        gemms.append((x, w, xp.empty((batch, n_out), dtype=dtype)))
        gemms.append((x.T, dy, xp.empty((n_in, n_out), dtype=dtype)))
        if i > 0:
            gemms.append((dy, w.T, xp.empty((batch, n_in), dtype=dtype)))
    return gemms


def back_to_back(xp, gemms):
    """A callable running the products of ``step_gemms`` one after the other, each into its output."""
    def step():
        for a, b, out in gemms:
            xp.matmul(a, b, out=out)

    return step


# ------------------------------------------------------------------------- GEMM peak measurement

def seconds_per_call(fn, sync, min_seconds=1.0, rounds=10):
    """Best-of-``rounds`` time of one ``fn()`` call, each round looping long enough to time. The
    best, not the median: a peak is what the machine does when nothing else holds a core."""
    fn()
    sync()
    calls = 1
    while True:  # grow the loop until one round takes min_seconds / rounds
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        sync()
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds / rounds:
            break
        calls *= 2
    best = elapsed / calls
    for _ in range(rounds - 1):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        sync()
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def gemm_rates(xp, dtype, batch_sizes, sync):
    """GFLOP/s of ``xp.matmul`` for dtype: a 2048 x 2048 square product (the machine's peak) and,
    per batch size, all the matmuls of one training step run back to back (the model's shapes)."""
    rng = np.random.default_rng(0)
    a, b = (xp.asarray(rng.random((SQUARE, SQUARE)), dtype=dtype) for _ in range(2))
    out = xp.empty((SQUARE, SQUARE), dtype=dtype)
    square = 2 * SQUARE ** 3 / seconds_per_call(lambda: xp.matmul(a, b, out=out), sync) / 1e9
    model_shapes = {}
    for batch in batch_sizes:
        flops = epoch_gemm_flops(batch)
        model_shapes[batch] = flops / seconds_per_call(back_to_back(xp, step_gemms(xp, dtype, batch)), sync) / 1e9
    return {"square_2048": square, "model_shapes": model_shapes}


def torch_square_rate(torch):
    """GFLOP/s of ``torch.mm`` float32 at 2048 x 2048 (PyTorch's own BLAS, for reference)."""
    a, b = torch.rand(SQUARE, SQUARE), torch.rand(SQUARE, SQUARE)
    out = torch.empty(SQUARE, SQUARE)
    return 2 * SQUARE ** 3 / seconds_per_call(lambda: torch.mm(a, b, out=out), lambda: None) / 1e9


def measure_peaks(runs, threads):
    """GEMM rates for every (array library, dtype) among the runs; torch rows use NumPy float32's."""
    peaks = {}
    for name, dtype in sorted({("numpy" if n == "torch" else n, d) for n, d, _, _ in runs}):
        batches = sorted({b for _, _, b, _ in runs})
        if name == "cupy":
            backend = get_backend("cupy", dtype=dtype)
            peaks[(name, dtype)] = gemm_rates(backend.xp, dtype, batches, backend.synchronize)
        else:
            peaks[(name, dtype)] = gemm_rates(np, dtype, batches, lambda: None)
    if any(n == "torch" for n, _, _, _ in runs):
        import torch

        torch.set_num_threads(threads)
        peaks[("torch", "float32")] = {"square_2048": torch_square_rate(torch), "model_shapes": {}}
    return peaks


def best_peaks(first, second):
    """The higher of two measurements of every GEMM rate (a shared machine only ever slows one down)."""
    return {key: {"square_2048": max(first[key]["square_2048"], second[key]["square_2048"]),
                  "model_shapes": {b: max(r, second[key]["model_shapes"][b])
                                   for b, r in first[key]["model_shapes"].items()}}
            for key in first}
