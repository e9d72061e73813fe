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
    python benchmarks/bench_epoch.py --floors --epochs-fraction 0.25 --repeats 5  # each step's parts and floor

``--architecture conv`` times the conv VAE (minivae/conv.py: 1 -> 32 -> 64 channels, stride-2 4x4
convolutions, a Linear head; the decoder mirrors it) on numpy float32, with its fused conv kernels
and with the plain xp code, against the same network in PyTorch eager (``conv_torch_model``),
interleaved, same threads, and reports the share of a (fused) minivae epoch spent in im2col / col2im
(from cProfile of one more pass).

``--floors`` times the parts of a step of the default MLP and of the conv VAE (numpy float32, fused)
where they run, and each step's floor: its matrix products at their best rates, plus the optimizer's
update and the likelihood kernel each timed alone, against the targets of issue 25 (the MLP step at
<= 1.25x GEMM-only, the conv step at <= 0.8x PyTorch's): how much time a target leaves for all the
rest (epoch_bench/floors.py).

The code is cut into the modules of benchmarks/epoch_bench/ (its ``__init__`` lists them); this
script holds the command line: the thread count, the flags and ``main``.
"""

import argparse
import os
import sys


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
sys.path.insert(0, HERE)  # torch_reference.py and epoch_bench/

# Only now may minivae be imported, and minivae before NumPy, as `python -m minivae.train` does:
# importing it sets OpenBLAS's thread timeout (minivae/__init__.py), which OpenBLAS reads when NumPy loads.
import minivae  # noqa: E402, F401
import numpy as np  # noqa: E402

from epoch_bench import INPUT_DIM, N_SAMPLES  # noqa: E402
from epoch_bench.cli_runs import time_cli_epochs, time_startup  # noqa: E402
from epoch_bench.conv import run_conv  # noqa: E402
from epoch_bench.floors import run_floors  # noqa: E402
from epoch_bench.gemm import best_peaks, epoch_gemm_flops, measure_peaks  # noqa: E402
from epoch_bench.machine import load_average, machine_info, warn_about_forced_blas_kernels  # noqa: E402
from epoch_bench.report import add_ratios, peaks_table, results_table, warn_if_noisy, write_json  # noqa: E402
from epoch_bench.timing import (finish_row, plan_runs, profile_numpy_epoch, setup_bench, time_round,  # noqa: E402
                                torch_version)

DEFAULT_BACKENDS = "numpy-float32,numpy-float32-plain,numpy-float64,cupy-float32,torch"


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
    parser.add_argument("--floors", action="store_true",
                        help="only time the parts of an MLP and a conv VAE step and print each step's floor: its "
                             "products at their best rates + the update + the likelihood, against the target")
    parser.add_argument("--architecture", choices=("mlp", "conv"), default="mlp",
                        help="conv: only the conv VAE rows, minivae numpy float32 against PyTorch (default: mlp)")
    args = parser.parse_args(argv)
    args.batch_size = args.batch_size or [128]
    if not 0 < args.epochs_fraction <= 1:
        parser.error("--epochs-fraction must be in (0, 1]")
    if args.floors and args.architecture == "conv":
        parser.error("--floors times the MLP and the conv VAE both: drop --architecture conv")
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
    if args.floors:
        rows = run_floors(host_x, args, info["torch"] is not None)
        if args.json:
            write_json(args.json, info, args, {}, rows)
        return 0
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
