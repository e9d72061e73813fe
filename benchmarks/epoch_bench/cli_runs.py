"""Whole command-line runs, each in a new Python process: epochs of ``python -m minivae.train``
against the PyTorch example (``--cli``), and start-up to the first training step (``--startup``)."""

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from . import BENCHMARKS_DIR
from .report import markdown_table


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
        "torch example": (os.path.join(BENCHMARKS_DIR, "torch_reference.py"),
                          ["--data-dir", args.data_dir, "--epochs", str(epochs), "--threads", str(args.threads)], {}),
    }


def spread(values):
    """'median (min-max)' of a list of seconds."""
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def time_cli_epochs(args):
    """Whole epochs of each row: per round, each row runs 1 and 1 + K epochs (interleaved, rows in
    turn); an epoch is their difference over K, start-up the rest of the 1-epoch run."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.path.dirname(BENCHMARKS_DIR),
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
    """Start-up, in a new process each time: the interpreter alone, ``import minivae``,
    ``python -m minivae.train --help``, and to the end of the first training step: the plain path,
    the fused one compiling its kernels (an empty NUMBA_CACHE_DIR), and loading them from that cache."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.path.dirname(BENCHMARKS_DIR),
                                                                      os.environ.get("PYTHONPATH")])),
           "PYTHONWARNINGS": "ignore"}
    folder = tempfile.mkdtemp(prefix="bench_startup_")
    scripts = {name: os.path.join(folder, f"{name}.py") for name in ("nothing", "import_minivae", "first_step")}
    for name, code in (("nothing", "pass\n"), ("import_minivae", "import minivae\n"), ("first_step", STARTUP_CODE)):
        with open(scripts[name], "w") as script:
            script.write(code)
    results = {"python, nothing imported": [], "import minivae": [], "python -m minivae.train --help": [],
               "first step, plain": [], "first step, fused compiling": [], "first step, fused cached": []}
    for repeat in range(args.repeats):
        cache = tempfile.mkdtemp(prefix="bench_numba_cache_")
        try:
            for name, target, arguments, extra in (
                    ("python, nothing imported", scripts["nothing"], [], {}),
                    ("import minivae", scripts["import_minivae"], [], {}),
                    ("python -m minivae.train --help", "minivae.train", ["--help"], {}),
                    ("first step, plain", scripts["first_step"], [], {"MINIVAE_KERNELS": "plain"}),
                    ("first step, fused compiling", scripts["first_step"], [], {"MINIVAE_KERNELS": "fused", "NUMBA_CACHE_DIR": cache}),
                    ("first step, fused cached", scripts["first_step"], [], {"MINIVAE_KERNELS": "fused", "NUMBA_CACHE_DIR": cache})):
                results[name].append(run_python(target, arguments, {**env, **extra}))
        finally:
            shutil.rmtree(cache, ignore_errors=True)
        print(f"  round {repeat + 1}: " + ", ".join(f"{n} {r[-1][0]:.2f} s" for n, r in results.items()), flush=True)
    shutil.rmtree(folder, ignore_errors=True)
    plain = [seconds for seconds, _ in results["first step, plain"]]
    body = []
    for name, runs in results.items():
        seconds = [s for s, _ in runs]
        added = [a - b for a, b in zip(seconds, plain)]
        peaks = [rss for _, rss in runs if rss is not None]
        body.append([name, spread(seconds), spread(added) if "fused" in name else "-",
                     f"{max(peaks):.0f}" if peaks else "-"])
    print(f"\nprocess start to its end: the interpreter alone, import minivae, train --help, and the first training "
          f"step (default model, batch 128; plain, fused compiling, fused cached); {args.repeats} rounds, median "
          f"(min-max) in seconds; 'added' is paired with the plain run of the same round")
    print(markdown_table(["run", "seconds", "added to plain", "peak RSS MiB"], body))
