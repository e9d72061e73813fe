"""Time one training epoch of the default VAE (784-400-20-400-784, Adam lr 1e-3) per backend.

An epoch is 60,000 generated samples of MNIST's shape (784 values uniform in [0, 1], fixed seed;
nothing is downloaded), batch 128 by default: 469 steps, the last one partial. Each backend gets
the data on its device once; every epoch draws a permutation with the backend (``x[idx]`` per
step, as training does) and minivae draws eps inside ``loss_and_backward``. After a few warm-up
steps, ``--repeats`` epochs are timed and the median is reported. The repeats are interleaved
(every row once, then every row again, ...) so that a slow spell of a shared machine does not fall
on one row alone; the best time is reported too.

Backends: numpy float32 (with minivae's fused Numba kernels, and ``numpy-float32-plain`` with its
plain NumPy code), numpy float64, cupy float32 (when a CUDA device is usable) and, when
``import torch`` works, the classic PyTorch example's model (benchmarks/torch_reference.py) in the
same process. PyTorch is optional and never a dependency of minivae. Each row also gives its
ratio to the GEMM-only time: the step's matrix products at the model's shapes, run back to back.

``--cli`` times whole epochs of the command line instead (training pass, test evaluation,
pictures, checkpoint: ``python -m minivae.train`` on Fashion-MNIST, fused and plain) against the
PyTorch example's whole epoch (benchmarks/torch_reference.py: training pass, two test losses, its
64 prior draws), each from runs of 1 and 1 + K epochs (their difference over K is an epoch; the rest
is start-up), with each process's peak RSS. ``--startup`` times start-up to the first training
step: plain, fused with the kernels compiled (a fresh Numba cache) and loaded from the cache.

NumPy's BLAS picks its kernel for the CPU, unless ``OPENBLAS_CORETYPE`` forces one (this script says
which it got, through threadpoolctl, and warns when the variable is set). Run it as
``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_epoch.py`` where those are set.

The thread count (``--threads``, default 2) is read from the command line *before* NumPy is
imported and exported as OMP_NUM_THREADS, OPENBLAS_NUM_THREADS and MKL_NUM_THREADS (the flag
overrides those variables); PyTorch gets ``torch.set_num_threads``. minivae is imported before NumPy,
as ``python -m minivae.train`` does, so that the OPENBLAS_THREAD_TIMEOUT it sets reaches OpenBLAS.

    python benchmarks/bench_epoch.py                          # full epochs, every backend found
    python benchmarks/bench_epoch.py --epochs-fraction 0.1    # a quick look (scaled to an epoch)
    python benchmarks/bench_epoch.py --backends cupy-float32 --batch-size 128 --batch-size 4096
    python benchmarks/bench_epoch.py --profile                # cProfile of a numpy float32 epoch
    python benchmarks/bench_epoch.py --cli --repeats 3        # whole CLI epochs, minivae and PyTorch
    python benchmarks/bench_epoch.py --startup --repeats 5    # start-up: plain, compiling, cached
    python benchmarks/bench_epoch.py --architecture conv      # the conv VAE against the same network in PyTorch

``--architecture conv`` times the conv VAE (minivae/conv.py: 1 -> 32 -> 64 channels, stride-2 4x4
convolutions, a Linear head; the decoder mirrors it) on numpy float32 against the same network in
PyTorch eager (``conv_torch_model``), interleaved, same threads, and reports the share of a minivae
epoch spent in im2col / col2im (from cProfile of one more pass).
"""

import argparse
import cProfile
import datetime
import json
import os
import platform
import pstats
import resource
import statistics
import shutil
import subprocess
import sys
import tempfile
import time


def threads_from_argv(argv, default=2):
    """The value of ``--threads N`` / ``--threads=N`` in argv (a string), or ``default``."""
    for i, arg in enumerate(argv):
        if arg == "--threads" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--threads="):
            return arg.split("=", 1)[1]
    return str(default)


def set_thread_env(threads):
    """Export the BLAS / OpenMP thread count; only effective before NumPy is first imported."""
    if "numpy" in sys.modules:
        print("warning: numpy was imported before bench_epoch set the thread count", file=sys.stderr)
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = threads


set_thread_env(threads_from_argv(sys.argv[1:]))

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # the repository root, for an uninstalled checkout
sys.path.insert(0, HERE)  # torch_reference.py

# Only now may minivae be imported, and minivae before NumPy, as `python -m minivae.train` does:
# importing it sets OpenBLAS's thread timeout (minivae/__init__.py), which OpenBLAS reads when NumPy loads.
import minivae  # noqa: E402, F401
import numpy as np  # noqa: E402

from minivae.backend import cupy_unavailable_reason, get_backend  # noqa: E402
from minivae.model import VAE  # noqa: E402
from minivae.optim import Adam  # noqa: E402

N_SAMPLES = 60_000
INPUT_DIM, HIDDEN, LATENT = 784, 400, 20
# (in, out) of every Linear of the default model; the encoder head is one fused 400 -> 2*20 layer
# in minivae and two 400 -> 20 layers (fc21, fc22) in PyTorch: the same GEMM FLOPs.
LAYER_SIZES = ((INPUT_DIM, HIDDEN), (HIDDEN, 2 * LATENT), (LATENT, HIDDEN), (HIDDEN, INPUT_DIM))
DEFAULT_BACKENDS = "numpy-float32,numpy-float32-plain,numpy-float64,cupy-float32,torch"
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
        gemms = step_gemms(xp, dtype, batch)
        flops = epoch_gemm_flops(batch)

        def step():
            for x, w, y in gemms:
                xp.matmul(x, w, out=y)

        model_shapes[batch] = flops / seconds_per_call(step, sync) / 1e9
    return {"square_2048": square, "model_shapes": model_shapes}


def torch_square_rate(torch):
    """GFLOP/s of ``torch.mm`` float32 at 2048 x 2048 (PyTorch's own BLAS, for reference)."""
    a, b = torch.rand(SQUARE, SQUARE), torch.rand(SQUARE, SQUARE)
    out = torch.empty(SQUARE, SQUARE)
    return 2 * SQUARE ** 3 / seconds_per_call(lambda: torch.mm(a, b, out=out), lambda: None) / 1e9


# ------------------------------------------------------------------------------- memory, machine

def reset_peak_rss():
    """Reset the kernel's peak-RSS mark (Linux: write 5 to /proc/self/clear_refs) so that
    ``peak_rss_mib`` measures the next run alone; False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mib():
    """Peak resident set size (resource.getrusage ru_maxrss) in MiB."""
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / 2 ** 20 if sys.platform == "darwin" else maxrss / 2 ** 10  # bytes on macOS, KiB elsewhere


def current_rss_mib():
    """The resident set size now, in MiB (Linux /proc/self/statm); None elsewhere."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    except (OSError, ValueError, IndexError):
        return None


def cpu_snapshot():
    """(CPU seconds the whole machine was busy, CPU seconds of this process) now; the machine's
    from /proc/stat (Linux), None elsewhere. Their difference over a timing is the CPU that other
    processes took meanwhile: anything above ~0 means the timing was shared."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    own = usage.ru_utime + usage.ru_stime
    try:
        with open("/proc/stat") as f:
            user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in f.readline().split()[1:9])
    except (OSError, ValueError):
        return None, own
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK"), own


def others_cpu_cores(before, after, wall_seconds):
    """Cores kept busy by other processes between two cpu_snapshot()s (None without /proc/stat)."""
    if before[0] is None or after[0] is None:
        return None
    return max(0.0, (after[0] - before[0]) - (after[1] - before[1])) / wall_seconds


def cpu_model():
    """The CPU's model name from /proc/cpuinfo (Linux), else what platform knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def numpy_blas():
    """The BLAS NumPy was built with, e.g. 'scipy-openblas 0.3.31.188.0' (from np.show_config)."""
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
    except Exception:  # older NumPy has no mode="dicts"
        return "unknown (see np.show_config())"


def blas_kernel():
    """The kernel NumPy's BLAS runs (threadpoolctl: OpenBLAS's "architecture", e.g. 'Haswell',
    'SkylakeX', 'Zen'), or why it is not known."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "unknown (pip install threadpoolctl)"
    blas = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    return ", ".join(f"{os.path.basename(os.path.dirname(i.get('filepath', '')))}: {i.get('architecture') or '?'}"
                     for i in blas) or "unknown"


def warn_about_forced_blas_kernels():
    """Say so when OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are set: they make OpenBLAS use another
    CPU's kernel (on an AVX-512 CPU, ``Haswell`` halves the float32 GEMM rate)."""
    forced = {name: os.environ[name] for name in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if name in os.environ}
    if forced:
        print("warning: " + ", ".join(f"{k}={v}" for k, v in forced.items()) + " is set: OpenBLAS runs that "
              "kernel, not the one it would pick for this CPU; for native timings run "
              "`env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_epoch.py ...`", file=sys.stderr)


def minivae_revision():
    """The commit of the checkout being timed (``git rev-parse --short HEAD``) and the files under
    minivae/ that differ from it (uncommitted changes would be timed too)."""
    root = os.path.dirname(HERE)
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                              text=True, timeout=10).stdout.strip()
        changed = subprocess.run(["git", "--no-optional-locks", "status", "--porcelain", "--", "minivae"], cwd=root,
                                 capture_output=True, text=True, timeout=10).stdout.split("\n")
    except (OSError, subprocess.SubprocessError):
        return None, []
    return head or None, [line[3:] for line in changed if line.strip()]


def load_average():
    """The 1, 5 and 15-minute load averages as text ("n/a" where the OS has none)."""
    return " ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


def machine_info(threads, torch_version):
    revision, changed = minivae_revision()
    return {"date": datetime.date.today().isoformat(), "cpu": cpu_model(), "cores": os.cpu_count(),
            "load_average_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
            "threads": threads, "python": platform.python_version(), "numpy": np.__version__,
            "blas": numpy_blas(), "blas_kernel": blas_kernel(),
            "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"),
            "openblas_thread_timeout": os.environ.get("OPENBLAS_THREAD_TIMEOUT"),
            "torch": torch_version,
            "minivae_git": revision, "minivae_files_changed": changed}


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
    perm = torch.randperm(x.shape[0])
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


def add_ratios(rows, peaks):
    """% of the GEMM peaks (2048^2 and the model's shapes) and the ratio to PyTorch's seconds."""
    torch_seconds = {r["batch"]: r["seconds"] for r in rows if r["backend"] == "torch"}
    for r in rows:
        peak = peaks[("numpy" if r["backend"] == "torch" else r["backend"], r["dtype"])]
        r["pct_peak_square"] = 100 * r["gflops"] / peak["square_2048"]
        r["pct_peak_model_shapes"] = 100 * r["gflops"] / peak["model_shapes"][r["batch"]]
        r["gemm_only_seconds"] = epoch_gemm_flops(N_SAMPLES) / peak["model_shapes"][r["batch"]] / 1e9
        r["ratio_to_gemm_only"] = r["seconds"] / r["gemm_only_seconds"]
        r["ratio_to_torch"] = r["seconds"] / torch_seconds[r["batch"]] if r["batch"] in torch_seconds else None


# -------------------------------------------------------------------------------------- output

def markdown_table(header, rows):
    """A Markdown pipe table, columns padded so that it also reads well in a terminal."""
    cells = [header] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def peaks_table(peaks):
    header = ["library", "dtype", f"peak at {SQUARE}^2 (GFLOP/s)"] + [
        f"model shapes, batch {b} (GFLOP/s)" for b in sorted({b for p in peaks.values() for b in p["model_shapes"]})]
    rows = []
    for (name, dtype), p in sorted(peaks.items()):
        lib = {"numpy": "np.matmul", "cupy": "cupy.matmul", "torch": "torch.mm"}[name]
        shapes = [f"{p['model_shapes'][b]:.1f}" if b in p["model_shapes"] else "-"
                  for b in sorted({b for q in peaks.values() for b in q["model_shapes"]})]
        rows.append([lib, dtype, f"{p['square_2048']:.1f}"] + shapes)
    return markdown_table(header, rows)


def results_table(rows):
    header = ["backend", "kernels", "dtype", "batch", "s/epoch", "min s", "max s", "samples/s", "GFLOP/s",
              f"% peak {SQUARE}^2", "GEMM-only s", "x GEMM-only", "x torch", "peak RSS MiB", "RSS added MiB",
              "cupy pool MiB", "loss/sample", "others' CPU"]
    body = []
    for r in rows:
        pool = f"{r['pool_used_mib']:.0f} / {r['pool_total_mib']:.0f}" if "pool_used_mib" in r else "-"
        ratio = f"{r['ratio_to_torch']:.2f}" if r["ratio_to_torch"] is not None else "-"
        added = f"{r['rss_added_mib']:.0f}" if r["rss_added_mib"] is not None else "-"
        others = f"{r['others_cpu_cores_max']:.2f}" if r["others_cpu_cores_max"] is not None else "-"
        body.append([r["backend"], r["kernels"], r["dtype"], r["batch"], f"{r['seconds']:.2f}",
                     f"{r['seconds_min']:.2f}", f"{max(r['seconds_each']):.2f}", f"{r['samples_per_s']:,.0f}",
                     f"{r['gflops']:.1f}", f"{r['pct_peak_square']:.1f}", f"{r['gemm_only_seconds']:.2f}",
                     f"{r['ratio_to_gemm_only']:.2f}", ratio, f"{r['peak_rss_mib']:.0f}", added, pool,
                     f"{r['loss_per_sample']:.2f}", others])
    return markdown_table(header, body)


def warn_if_noisy(rows, tolerance=0.10, busy_cores=0.05):
    """Say so when a row's repeats differ by more than ``tolerance`` (relative to the best), or
    other processes kept more than ``busy_cores`` cores busy during a timed epoch."""
    spread = max(max(r["seconds_each"]) / r["seconds_min"] - 1 for r in rows)
    if spread > tolerance:
        print(f"note: repeats of a row differ by up to {100 * spread:.0f}% "
              "(more --repeats, or compare 'min s')")
    others = max((r["others_cpu_cores_max"] or 0.0) for r in rows)
    if others > busy_cores:
        print(f"note: other processes kept up to {others:.2f} cores busy during a timed epoch: "
              "these timings are not from a quiet machine")


def write_json(path, info, args, peaks, rows):
    result = {"machine": info, "settings": {"n_samples": N_SAMPLES, "layer_sizes": LAYER_SIZES,
                                            "epoch_gemm_flops": epoch_gemm_flops(N_SAMPLES),
                                            "epochs_fraction": args.epochs_fraction, "repeats": args.repeats,
                                            "warmup_steps": args.warmup_steps, "seed": args.seed},
              "gemm_peaks_gflops": [{"library": n, "dtype": d, **p} for (n, d), p in sorted(peaks.items())],
              "results": rows}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=2)


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


# ---------------------------------------------------------------- whole CLI epochs and start-up

PEAK_RSS_WRAPPER = """
import atexit, os, runpy, sys

def report():  # VmHWM: the peak RSS of this process's own memory since its exec (Linux)
    try:
        with open("/proc/self/status") as status:
            peak = [line.split()[1] for line in status if line.startswith("VmHWM:")]
    except OSError:
        peak = []
    with open(os.environ["BENCH_PEAK_RSS_FILE"], "w") as out:
        out.write(peak[0] if peak else "")

atexit.register(report)
target, sys.argv = sys.argv[1], sys.argv[1:]
if target.endswith(".py"):
    runpy.run_path(target, run_name="__main__")
else:
    runpy.run_module(target, run_name="__main__", alter_sys=True)
"""


def run_python(target, arguments, env):
    """Run a module (``-m`` style) or a script in a new Python to its end; (wall seconds, its peak RSS
    in MiB or None). The peak is read inside the child (``PEAK_RSS_WRAPPER``): the rusage a parent
    gets for a child counts the parent's own memory too where the child was started by vfork."""
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss_file:
        start = time.perf_counter()
        result = subprocess.run([sys.executable, "-c", PEAK_RSS_WRAPPER, target, *arguments],
                                env={**env, "BENCH_PEAK_RSS_FILE": rss_file.name},
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        seconds = time.perf_counter() - start
        if result.returncode != 0:
            raise SystemExit(f"{target} {' '.join(arguments)} failed ({result.returncode}):\n{result.stderr}")
        peak = rss_file.read().strip()
    return seconds, int(peak) / 1024 if peak else None


def cli_commands(args, epochs, out):
    """{row name: (target, arguments, extra environment)} for ``epochs`` epochs of each whole-epoch row."""
    train = ["--dataset", "fashion-mnist", "--data-dir", args.data_dir, "--epochs", str(epochs), "--seed", "1",
             "--quiet", "--out"]
    return {
        "minivae fused": ("minivae.train", train + [os.path.join(out, "fused")], {"MINIVAE_KERNELS": "fused"}),
        "minivae plain": ("minivae.train", train + [os.path.join(out, "plain")], {"MINIVAE_KERNELS": "plain"}),
        "torch example": (os.path.join(HERE, "torch_reference.py"),
                          ["--data-dir", args.data_dir, "--epochs", str(epochs), "--threads", str(args.threads)], {}),
    }


def spread(values):
    """'median (min-max)' of a list of seconds."""
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def time_cli_epochs(args):
    """Whole epochs of each row: per round, each row runs 1 and 1 + K epochs (interleaved, rows in
    turn); an epoch is their difference over K, start-up the rest of the 1-epoch run."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.path.dirname(HERE),
                                                                      os.environ.get("PYTHONPATH")]))}
    k = args.cli_epochs
    results = {}
    for repeat in range(args.repeats):
        for epochs in (1, 1 + k):
            out = tempfile.mkdtemp(prefix="bench_cli_")
            try:
                for name, (target, arguments, extra) in cli_commands(args, epochs, out).items():
                    seconds, rss = run_python(target, arguments, {**env, **extra})
                    results.setdefault(name, {}).setdefault(epochs, []).append((seconds, rss))
            finally:
                shutil.rmtree(out, ignore_errors=True)
        print(f"  round {repeat + 1}: " + ", ".join(f"{name} {r[1][-1][0]:.2f} / {r[1 + k][-1][0]:.2f} s"
                                                     for name, r in results.items()), flush=True)
    rows, torch_epochs = [], None
    for name, r in results.items():
        epoch = [(long[0] - short[0]) / k for short, long in zip(r[1], r[1 + k])]
        startup = [short[0] - e for short, e in zip(r[1], epoch)]
        rss = [x[1] for x in r[1 + k] if x[1] is not None]
        if name == "torch example":
            torch_epochs = epoch
        rows.append([name, spread(epoch), spread(startup), f"{max(rss):.0f}" if rss else "-", epoch])
    print(f"\nwhole epochs, {args.threads} threads, {args.repeats} rounds, median (min-max) in seconds; "
          f"x torch: the median of the paired ratios")
    body = []
    for name, epoch, startup, rss, values in rows:
        ratio = ("-" if torch_epochs is None else
                 f"{statistics.median(a / b for a, b in zip(values, torch_epochs)):.2f}")
        body.append([name, epoch, startup, ratio, rss])
    print(markdown_table(["run", "s/epoch", "start-up s", "x torch", "peak RSS MiB"], body))
    return 0


STARTUP_CODE = """
import minivae
from minivae.backend import numpy_backend
from minivae.model import VAE
from minivae.optim import Adam
backend = numpy_backend("float32")
model = VAE(backend=backend)
optimizer = Adam(model.parameters())
model.loss_and_backward(backend.uniform((128, 784)))
optimizer.step()
"""


def time_startup(args):
    """Start-up to the end of the first training step, in a new process each time: the plain path,
    the fused one compiling its kernels (an empty NUMBA_CACHE_DIR), and loading them from that cache."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.path.dirname(HERE),
                                                                      os.environ.get("PYTHONPATH")]))}
    results = {"plain": [], "fused, compiling": [], "fused, cached": []}
    startup_script = os.path.join(tempfile.mkdtemp(prefix="bench_startup_"), "first_step.py")
    with open(startup_script, "w") as script:
        script.write(STARTUP_CODE)
    for repeat in range(args.repeats):
        cache = tempfile.mkdtemp(prefix="bench_numba_cache_")
        try:
            for name, extra in (("plain", {"MINIVAE_KERNELS": "plain"}),
                                ("fused, compiling", {"MINIVAE_KERNELS": "fused", "NUMBA_CACHE_DIR": cache}),
                                ("fused, cached", {"MINIVAE_KERNELS": "fused", "NUMBA_CACHE_DIR": cache})):
                results[name].append(run_python(startup_script, [], {**env, **extra, "PYTHONWARNINGS": "ignore"}))
        finally:
            shutil.rmtree(cache, ignore_errors=True)
        print(f"  round {repeat + 1}: " + ", ".join(f"{n} {r[-1][0]:.2f} s" for n, r in results.items()), flush=True)
    shutil.rmtree(os.path.dirname(startup_script), ignore_errors=True)
    plain = [seconds for seconds, _ in results["plain"]]
    body = []
    for name, runs in results.items():
        seconds = [s for s, _ in runs]
        added = [a - b for a, b in zip(seconds, plain)]
        peaks = [rss for _, rss in runs if rss is not None]
        body.append([name, spread(seconds), spread(added) if name != "plain" else "-",
                     f"{max(peaks):.0f}" if peaks else "-"])
    print(f"\nprocess start to the end of the first training step (default model, batch 128), {args.repeats} "
          f"rounds, median (min-max) in seconds; 'added' is paired with the plain run of the same round")
    print(markdown_table(["run", "seconds", "added to plain", "peak RSS MiB"], body))
    return 0
# ---------------------------------------------------------------------------------- conv rows

IMAGE_SHAPE, CONV_CHANNELS = (28, 28), (32, 64)


def conv_torch_model(torch):
    """The conv VAE of minivae/conv.py in PyTorch: same layers, shapes, init and loss (logits + BCE)."""
    nn = torch.nn
    (height, width), (c1, c2) = IMAGE_SHAPE, CONV_CHANNELS
    features = c2 * (height // 4) * (width // 4)

    class ConvVAE(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Sequential(
                nn.Unflatten(1, (1, height, width)), nn.Conv2d(1, c1, 4, 2, 1), nn.ReLU(), nn.Conv2d(c1, c2, 4, 2, 1),
                nn.ReLU(), nn.Flatten(), nn.Linear(features, 2 * LATENT))
            self.decoder = nn.Sequential(
                nn.Linear(LATENT, features), nn.ReLU(), nn.Unflatten(1, (c2, height // 4, width // 4)),
                nn.ConvTranspose2d(c2, c1, 4, 2, 1), nn.ReLU(), nn.ConvTranspose2d(c1, 1, 4, 2, 1), nn.Flatten())

        def forward(self, x):
            mu, logvar = self.encoder(x).chunk(2, dim=1)
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
            return self.decoder(z), mu, logvar

    return ConvVAE()


def conv_torch_loss(torch):
    functional = torch.nn.functional

    def loss(logits, x, mu, logvar):
        kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
        return functional.binary_cross_entropy_with_logits(logits, x, reduction="sum") + kl

    return loss


def setup_conv(name, batch_size, host_x, args):
    """A warmed-up Bench for the conv VAE: minivae on numpy float32, or PyTorch eager."""
    if name == "torch":
        import torch

        torch.set_num_threads(args.threads)
        torch.manual_seed(args.seed)
        model = conv_torch_model(torch)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        x, loss = torch.from_numpy(host_x), conv_torch_loss(torch)
        bench = Bench("torch conv", "float32", batch_size, lambda s: torch_epoch(model, optimizer, x, s, torch, loss))
    else:
        backend = get_backend("numpy", dtype="float32", seed=args.seed)
        model = conv_vae(backend)
        optimizer = Adam(model.parameters(), lr=1e-3)
        x = backend.to_device(host_x)
        bench = Bench("numpy conv", "float32", batch_size, lambda s: minivae_epoch(model, optimizer, backend, x, s))
    bench.slices, bench.timed_samples = batch_slices(N_SAMPLES, batch_size, args.epochs_fraction)
    bench.epoch(bench.slices[:args.warmup_steps])
    return bench


def conv_vae(backend):
    return VAE(input_dim=INPUT_DIM, latent_dim=LATENT, architecture="conv", image_shape=IMAGE_SHAPE,
               channels=CONV_CHANNELS, backend=backend)


def im2col_share(host_x, args):
    """(share of a profiled minivae conv pass spent in im2col and col2im, seconds of that pass)."""
    backend = get_backend("numpy", dtype="float32", seed=args.seed)
    model = conv_vae(backend)
    optimizer, x = Adam(model.parameters(), lr=1e-3), backend.to_device(host_x)
    slices, _ = batch_slices(N_SAMPLES, args.batch_size[0], args.epochs_fraction)
    minivae_epoch(model, optimizer, backend, x, slices[:args.warmup_steps])
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    minivae_epoch(model, optimizer, backend, x, slices)
    profiler.disable()
    elapsed = time.perf_counter() - start
    stats = pstats.Stats(profiler).stats  # {(file, line, name): (calls, ncalls, tottime, cumtime, callers)}
    copies = sum(v[3] for (file, _, name), v in stats.items() if name in ("im2col", "col2im") and "conv" in file)
    return copies / elapsed, elapsed


def run_conv(host_x, args):
    """The conv rows: minivae numpy float32 and PyTorch eager, interleaved repeats, x torch."""
    names = ["numpy"] + (["torch"] if torch_version() is not None else [])
    if len(names) == 1:
        print("skipping torch: `import torch` failed (pip install torch==2.13.0)")
    benches = [setup_conv(name, b, host_x, args) for b in args.batch_size for name in names]
    for repeat in range(args.repeats):
        time_round(benches)
        print(f"  round {repeat + 1}: " + ", ".join(
            f"{b.row['backend']} {b.row['batch']}: {b.row['seconds_each'][-1]:.2f} s" for b in benches), flush=True)
    rows = [b.row for b in benches]
    torch_seconds = {r["batch"]: statistics.median(r["seconds_each"]) for r in rows if r["backend"] == "torch conv"}
    body = []
    for r in rows:
        seconds = statistics.median(r["seconds_each"])
        r["ratio_to_torch"] = seconds / torch_seconds[r["batch"]] if r["batch"] in torch_seconds else None
        body.append([r["backend"], r["dtype"], r["batch"], f"{seconds:.2f}", f"{min(r['seconds_each']):.2f}",
                     f"{N_SAMPLES / seconds:,.0f}", f"{r['ratio_to_torch']:.2f}" if r["ratio_to_torch"] else "-",
                     f"{r['loss_per_sample']:.2f}"])
    print("\n" + markdown_table(["model", "dtype", "batch", "s/epoch", "min s", "samples/s", "x torch",
                                 "loss/sample"], body))
    share, elapsed = im2col_share(host_x, args)
    print(f"\nim2col + col2im: {100 * share:.0f}% of a profiled minivae conv pass ({elapsed:.1f} s under cProfile)")
    print(f"load average at the end: {load_average()}")
    return rows


# ---------------------------------------------------------------------------------------- main

def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2,
                        help="BLAS/OpenMP threads (env vars set before NumPy is imported) and torch threads")
    parser.add_argument("--backends", default=DEFAULT_BACKENDS,
                        help=f"comma-separated, from {DEFAULT_BACKENDS},cupy-float64 (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, action="append",
                        help="batch size; repeat for several (default: 128)")
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs per row; the median is reported")
    parser.add_argument("--epochs-fraction", type=float, default=1.0,
                        help="time only this fraction of each epoch's steps and scale to an epoch")
    parser.add_argument("--warmup-steps", type=int, default=5, help="untimed steps before timing")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data, the models and the noise")
    parser.add_argument("--json", metavar="PATH", help="write the machine, the GEMM peaks and every row here")
    parser.add_argument("--profile", action="store_true",
                        help="only cProfile one numpy float32 epoch and print the top 25 by tottime")
    parser.add_argument("--profile-out", metavar="PATH", help="with --profile: also dump the pstats file here")
    parser.add_argument("--cli", action="store_true",
                        help="only time whole epochs of python -m minivae.train (fused, plain) and of "
                             "benchmarks/torch_reference.py on Fashion-MNIST, --repeats times, interleaved")
    parser.add_argument("--cli-epochs", type=int, default=2, help="with --cli: K, the epochs added to the first")
    parser.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist",
                        help="with --cli: the Fashion-MNIST IDX files (default: Debian's dataset-fashion-mnist)")
    parser.add_argument("--startup", action="store_true",
                        help="only time start-up to the first training step: plain, fused compiling, fused cached")
    parser.add_argument("--architecture", choices=("mlp", "conv"), default="mlp",
                        help="conv: only the conv VAE rows, minivae numpy float32 against PyTorch (default: mlp)")
    args = parser.parse_args(argv)
    args.batch_size = args.batch_size or [128]
    if not 0 < args.epochs_fraction <= 1:
        parser.error("--epochs-fraction must be in (0, 1]")
    if args.repeats < 1 or min(args.batch_size) < 1 or args.warmup_steps < 1:
        parser.error("--repeats, --batch-size and --warmup-steps must be >= 1")
    return args


def make_data(seed, n_samples=N_SAMPLES, dim=INPUT_DIM):
    """MNIST-shaped stand-in data: (n_samples, dim) float32 uniform in [0, 1), fixed seed."""
    return np.random.default_rng(seed).random((n_samples, dim), dtype=np.float32)


def main(argv=None):
    args = parse_args(argv)
    warn_about_forced_blas_kernels()
    if args.cli:
        return time_cli_epochs(args)
    if args.startup:
        return time_startup(args)
    host_x = make_data(args.seed)
    if args.profile:
        profile_numpy_epoch(host_x, args)
        return 0
    info = machine_info(args.threads, torch_version())
    print(f"{info['cpu']}, {info['cores']} cores, {args.threads} threads; python {info['python']}, "
          f"numpy {info['numpy']} ({info['blas']}, kernel {info['blas_kernel']}), torch {info['torch']}; "
          f"load average {load_average()} (anything else running skews the timings)")
    if args.architecture == "conv":
        run_conv(host_x, args)
        return 0
    changed = info["minivae_files_changed"]
    print(f"minivae at {info['minivae_git']}, " + (f"with uncommitted changes in {' '.join(changed)}"
                                                  if changed else "no uncommitted changes in minivae/"))
    runs = plan_runs([b.strip() for b in args.backends.split(",") if b.strip()], args.batch_size,
                     info["torch"] is not None)
    flops = epoch_gemm_flops(N_SAMPLES)
    print(f"epoch: {N_SAMPLES} samples, {flops / 1e9:.1f} GFLOP of GEMM (elementwise work not counted); "
          f"fraction {args.epochs_fraction}, {args.repeats} repeats, median reported\n")
    first_peaks = measure_peaks(runs, args.threads)  # again at the end; the better of the two is kept
    benches = [setup_bench(name, dtype, batch, host_x, args, kernels) for name, dtype, batch, kernels in runs]
    for repeat in range(args.repeats):
        time_round(benches)
        print(f"  round {repeat + 1}: " + ", ".join(
            f"{b.row['backend']} {b.row['kernels']} {b.row['dtype']} {b.row['batch']}: "
            f"{b.row['seconds_each'][-1]:.2f} s"
            for b in benches), flush=True)
    rows = [finish_row(b.row) for b in benches]
    del benches  # free the models and data before measuring the GEMM rates again
    peaks = best_peaks(first_peaks, measure_peaks(runs, args.threads))
    add_ratios(rows, peaks)
    print("\nGEMM rates (" + str(args.threads) + " threads):\n" + peaks_table(peaks))
    print("\n" + results_table(rows))
    print("\nGFLOP/s and % peak count GEMM FLOPs only (of the median); x torch = seconds / torch seconds "
          "(same batch); GEMM-only s = the step's matmuls at the model's shapes, back to back, for an epoch.")
    warn_if_noisy(rows)
    info["load_average_at_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"load average at the end: {load_average()}")
    if args.json:
        write_json(args.json, info, args, peaks, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
