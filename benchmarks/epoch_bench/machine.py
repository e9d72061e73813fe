"""Machine and BLAS facts: the CPU, its load and what other processes took, this process's memory,
the BLAS NumPy runs (and whether OPENBLAS_CORETYPE forces its kernel), the checkout being timed."""

import datetime
import os
import platform
import resource
import subprocess
import sys

import numpy as np

from . import BENCHMARKS_DIR


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
    root = os.path.dirname(BENCHMARKS_DIR)
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
