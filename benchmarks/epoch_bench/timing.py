"""Epoch timing: one Bench per table row (a model, its optimizer and its data on the device), timed
in interleaved rounds; which backends a run can use; the cProfile of one numpy float32 epoch."""

import cProfile
import pstats
import statistics
import sys
import time

from minivae.backend import cupy_unavailable_reason, get_backend
from minivae.model import VAE
from minivae.optim import Adam

from . import HIDDEN, INPUT_DIM, LATENT, N_SAMPLES
from .gemm import epoch_gemm_flops
from .machine import cpu_snapshot, current_rss_mib, others_cpu_cores, peak_rss_mib, reset_peak_rss


# --------------------------------------------------------------------------------- epoch timing

def batch_slices(n_samples, batch_size, fraction=1.0):
    """(start, stop) of the epoch's batches (the last one partial), cut to the first ``fraction``
    of them (at least one). Returns (slices, timed samples)."""
    slices = [(start, min(start + batch_size, n_samples)) for start in range(0, n_samples, batch_size)]
    slices = slices[:max(1, round(fraction * len(slices)))]
    return slices, sum(stop - start for start, stop in slices)


def minivae_epoch(model, optimizer, backend, x, slices):
    """Train over ``slices`` of a fresh backend permutation of x; returns the summed loss (a
    backend 0-d array: no host transfer per step)."""
    idx = backend.permutation(x.shape[0])
    total = 0.0
    for start, stop in slices:
        terms = model.loss_and_backward(x[idx[start:stop]])
        optimizer.step()
        total = total + terms.total
    backend.synchronize()
    return total


def torch_epoch(model, optimizer, x, slices, torch, loss_function):
    """The same pass for the PyTorch model: randperm, index, zero_grad, forward, backward, step."""
    perm = torch.randperm(x.shape[0], device=x.device)  # on the GPU when x is
    total = 0.0
    for start, stop in slices:
        batch = x[perm[start:stop]]
        optimizer.zero_grad()
        recon, mu, logvar = model(batch)
        loss = loss_function(recon, batch, mu, logvar)
        loss.backward()
        optimizer.step()
        total = total + loss.detach()
    return total


class Bench:
    """One row of the table: a model with its optimizer and data already on the device, and
    ``epoch(slices)``, which trains over those batches and returns the summed loss."""

    def __init__(self, backend, dtype, batch, epoch, pool=None, kernels="-"):
        self.row = {"backend": backend, "kernels": kernels, "dtype": dtype, "batch": batch, "seconds_each": [],
                    "others_cpu_cores_each": []}
        self.epoch = epoch
        self.pool = pool  # CuPy's memory pool, for its used / total bytes
        self.slices, self.timed_samples = None, None


def setup_minivae(name, dtype, batch_size, host_x, args, kernels="fused"):
    """A Bench for minivae on backend ``name`` ("numpy" or "cupy") in ``dtype``, with the backend's
    fused kernels or (``kernels="plain"``) its plain xp code."""
    backend = get_backend(name, dtype=dtype, seed=args.seed)
    if kernels == "plain":
        backend.kernels = None  # before the model is built: its layers read them
    elif backend.kernels is None:
        kernels = "plain (none found)"
    x = backend.to_device(host_x)  # once; numpy float32 shares host_x, float64 is a cast copy
    model = VAE(input_dim=INPUT_DIM, hidden=(HIDDEN,), latent_dim=LATENT, backend=backend)
    optimizer = Adam(model.parameters(), lr=1e-3)
    pool = backend.xp.get_default_memory_pool() if name == "cupy" else None
    return Bench(name, dtype, batch_size, lambda s: minivae_epoch(model, optimizer, backend, x, s), pool, kernels)


def setup_torch(batch_size, host_x, args):
    """A Bench for the classic PyTorch example's model (float32, CPU)."""
    import torch
    from torch_reference import VAE as TorchVAE, loss_function

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    x = torch.from_numpy(host_x)  # shares host_x
    model = TorchVAE()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    return Bench("torch", "float32", batch_size, lambda s: torch_epoch(model, optimizer, x, s, torch, loss_function))


def setup_bench(name, dtype, batch_size, host_x, args, kernels="fused"):
    """Build one row's Bench and run its warm-up steps, recording the memory that took: the
    process's peak RSS and how much the peak grew over the RSS before (data copy, model, optimizer
    state, one step's temporaries, libraries imported)."""
    rss_before, rss_reset = current_rss_mib(), reset_peak_rss()
    if name == "torch":
        bench = setup_torch(batch_size, host_x, args)
    else:
        bench = setup_minivae(name, dtype, batch_size, host_x, args, kernels)
    bench.slices, bench.timed_samples = batch_slices(N_SAMPLES, batch_size, args.epochs_fraction)
    bench.epoch(bench.slices[:args.warmup_steps])
    bench.row["peak_rss_mib"] = peak_rss_mib()
    has_delta = rss_reset and rss_before is not None
    bench.row["rss_added_mib"] = max(0.0, bench.row["peak_rss_mib"] - rss_before) if has_delta else None
    return bench


def time_round(benches, n_samples=N_SAMPLES):
    """Time one pass of every Bench in turn, scaled to a full epoch of n_samples. Interleaving the
    repeats (row 1, row 2, ..., row 1, row 2, ...) spreads a slow spell of a shared machine over
    every row instead of one."""
    for bench in benches:
        cpu_before, start = cpu_snapshot(), time.perf_counter()
        total = bench.epoch(bench.slices)
        elapsed = time.perf_counter() - start
        bench.row["seconds_each"].append(elapsed * n_samples / bench.timed_samples)
        bench.row["others_cpu_cores_each"].append(others_cpu_cores(cpu_before, cpu_snapshot(), elapsed))
        bench.row["loss_per_sample"] = float(total) / bench.timed_samples
        if bench.pool is not None:
            bench.row["pool_used_mib"] = bench.pool.used_bytes() / 2 ** 20
            bench.row["pool_total_mib"] = bench.pool.total_bytes() / 2 ** 20


def finish_row(row):
    """Add the derived columns: median and best seconds, samples/s and GEMM GFLOP/s (of the median)."""
    row["seconds"] = statistics.median(row["seconds_each"])
    row["seconds_min"] = min(row["seconds_each"])
    row["samples_per_s"] = N_SAMPLES / row["seconds"]
    row["gflops"] = epoch_gemm_flops(N_SAMPLES) / row["seconds"] / 1e9
    others = [c for c in row["others_cpu_cores_each"] if c is not None]
    row["others_cpu_cores_max"] = max(others) if others else None
    return row


# ------------------------------------------------------------------------------ which backends

def torch_version():
    """PyTorch's version when ``import torch`` works, else None."""
    try:
        import torch
    except Exception:
        return None
    return torch.__version__


def plan_runs(backends, batch_sizes, has_torch):
    """[(backend, dtype, batch, kernels)] for the requested backends, skipping (with a note) the
    unusable. A spec is ``torch`` or ``<numpy|cupy>-<float32|float64>[-plain]``."""
    runs = []
    for spec in backends:
        if spec == "torch":
            if not has_torch:
                print("skipping torch: `import torch` failed (pip install torch==2.13.0)")
                continue
            runs += [("torch", "float32", b, "-") for b in batch_sizes]
            continue
        name, dtype, *rest = spec.split("-")
        if name not in ("numpy", "cupy") or dtype not in ("float32", "float64") or rest not in ([], ["plain"]):
            raise SystemExit(f"unknown backend {spec!r}: use numpy-float32, numpy-float32-plain, numpy-float64, "
                             "cupy-float32, cupy-float64 (each also with -plain) or torch")
        if name == "cupy" and cupy_unavailable_reason() is not None:
            print(f"skipping {spec}: {cupy_unavailable_reason()}")
            continue
        runs += [(name, dtype, b, "plain" if rest else "fused") for b in batch_sizes]
    return runs


# ------------------------------------------------------------------------------------- profile

def profile_numpy_epoch(host_x, args, top=25):
    """cProfile one numpy float32 epoch (after the warm-up) and print the top functions by tottime."""
    backend = get_backend("numpy", dtype="float32", seed=args.seed)
    x = backend.to_device(host_x)
    model = VAE(input_dim=INPUT_DIM, hidden=(HIDDEN,), latent_dim=LATENT, backend=backend)
    optimizer = Adam(model.parameters(), lr=1e-3)
    batch_size = args.batch_size[0]
    slices, timed = batch_slices(N_SAMPLES, batch_size, args.epochs_fraction)
    minivae_epoch(model, optimizer, backend, x, slices[:args.warmup_steps])
    profiler = cProfile.Profile()
    cpu_before, start = cpu_snapshot(), time.perf_counter()
    profiler.enable()
    minivae_epoch(model, optimizer, backend, x, slices)
    profiler.disable()
    elapsed = time.perf_counter() - start
    others = others_cpu_cores(cpu_before, cpu_snapshot(), elapsed)
    print(f"numpy float32, batch {batch_size}, {len(slices)} steps ({timed} samples), {args.threads} threads: "
          f"{elapsed:.2f} s under cProfile; other processes used "
          + (f"{others:.2f} cores meanwhile" if others is not None else "an unknown share of the CPU"))
    stats = pstats.Stats(profiler, stream=sys.stdout)
    if args.profile_out:
        stats.dump_stats(args.profile_out)
    stats.sort_stats("tottime").print_stats(top)
    print("cProfile sees only the main thread: work in other threads (BLAS, a threaded optimizer update)\n"
          "shows up as the main thread waiting, e.g. in {method 'acquire' of '_thread.lock' objects}.")
