"""The report: ratios to the GEMM-only time and to PyTorch, the Markdown tables, the noise notes and
the JSON file of a run."""

import json
import os

from . import LAYER_SIZES, N_SAMPLES
from .gemm import SQUARE, epoch_gemm_flops


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
    """The run as JSON at ``path``: the machine, the settings, the GEMM peaks (none for ``--floors``)
    and every row."""
    result = {"machine": info, "settings": {"n_samples": N_SAMPLES, "layer_sizes": LAYER_SIZES,
                                            "epoch_gemm_flops": epoch_gemm_flops(N_SAMPLES),
                                            "epochs_fraction": args.epochs_fraction, "repeats": args.repeats,
                                            "warmup_steps": args.warmup_steps, "seed": args.seed},
              "gemm_peaks_gflops": [{"library": n, "dtype": d, **p} for (n, d), p in sorted(peaks.items())],
              "results": rows}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
