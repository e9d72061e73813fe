"""Time one training epoch on a GPU: minivae on CuPy (its fused CUDA kernels, and the plain xp code)
against PyTorch eager on the same GPU, for the default MLP VAE and the conv VAE, in one run.

    python benchmarks/bench_gpu.py [--batch-size 128 --batch-size 4096] [--repeats 5] [--json PATH]

The rows are those of bench_epoch.py, on the device: the same models, the same 60,000 MNIST-shaped
random images (copied to the GPU once), the same steps (a permutation, gather, forward, backward,
Adam). The repeats are interleaved (every row once, then again), each epoch ends with a device
synchronisation, and the median is reported; "x torch" is that median over PyTorch's at the same
batch size and architecture. PyTorch computes in float32 as minivae does: its TF32 tensor-core
paths (on by default for cuDNN convolutions) are turned off unless --torch-tf32 is given. Needs
CuPy and a visible CUDA device; PyTorch with CUDA for the reference rows (without it, only
minivae's rows are printed).
"""

import argparse
import json
import os
import platform
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # epoch_bench/ and torch_reference.py

from minivae.backend import cupy_unavailable_reason, get_backend  # noqa: E402
from minivae.fileio import atomic_write  # noqa: E402
from minivae.model import VAE  # noqa: E402
from minivae.optim import Adam  # noqa: E402

from epoch_bench import HIDDEN, INPUT_DIM, LATENT, N_SAMPLES  # noqa: E402
from epoch_bench.conv import conv_torch_loss, conv_torch_model, conv_vae  # noqa: E402
from epoch_bench.report import markdown_table  # noqa: E402
from epoch_bench.timing import Bench, batch_slices, minivae_epoch, time_round, torch_epoch  # noqa: E402


def torch_cuda():
    """PyTorch when it imports and sees a CUDA device, else None."""
    try:
        import torch
    except Exception:
        return None
    return torch if torch.cuda.is_available() else None


def minivae_bench(architecture, kernels, batch_size, host_x, seed):
    """minivae on CuPy float32, with its fused kernels or (``kernels="plain"``) the plain xp code."""
    backend = get_backend("cupy", dtype="float32", seed=seed)
    if kernels == "plain":
        backend.kernels = None  # before the model is built: its layers read them
    model = (conv_vae(backend) if architecture == "conv" else
             VAE(input_dim=INPUT_DIM, hidden=(HIDDEN,), latent_dim=LATENT, backend=backend))
    optimizer, x = Adam(model.parameters(), lr=1e-3), backend.to_device(host_x)
    return Bench(f"minivae cupy {architecture}", "float32", batch_size,
                 lambda s: minivae_epoch(model, optimizer, backend, x, s), kernels=kernels)


def torch_bench(torch, architecture, batch_size, host_x, seed):
    """PyTorch eager on the same GPU: the classic example's model (mlp) or bench_epoch's conv VAE."""
    from torch_reference import VAE as TorchVAE, loss_function

    torch.manual_seed(seed)
    model = (conv_torch_model(torch) if architecture == "conv" else TorchVAE()).cuda()
    loss = conv_torch_loss(torch) if architecture == "conv" else loss_function
    optimizer, x = torch.optim.Adam(model.parameters(), lr=1e-3), torch.from_numpy(host_x).cuda()

    def epoch(slices):
        total = torch_epoch(model, optimizer, x, slices, torch, loss)
        torch.cuda.synchronize()
        return total

    return Bench(f"torch cuda {architecture}", "float32", batch_size, epoch)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, action="append", help="repeat for several (default: 128, 4096)")
    parser.add_argument("--architecture", choices=("mlp", "conv"), action="append",
                        help="repeat for both (default: mlp and conv)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup-steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--torch-tf32", action="store_true",
                        help="leave PyTorch's TF32 defaults on (cuDNN convolutions in TF32: fewer mantissa bits)")
    parser.add_argument("--json", metavar="PATH", help="write the device and every row here")
    args = parser.parse_args(argv)
    batch_sizes = args.batch_size or [128, 4096]
    reason = cupy_unavailable_reason()
    if reason is not None:
        print(f"bench_gpu: {reason}", file=sys.stderr)
        return 2
    import cupy
    import numpy as np

    torch = torch_cuda()
    if torch is not None and not args.torch_tf32:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    device = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    print(f"{device}; cupy {cupy.__version__}, CUDA runtime {cupy.cuda.runtime.runtimeGetVersion()}; "
          f"torch {torch.__version__ if torch else 'not usable with CUDA: no reference rows'}"
          f"{' (TF32 as PyTorch defaults)' if args.torch_tf32 else ' (float32: TF32 off)'}; "
          f"python {platform.python_version()}")
    host_x = np.random.default_rng(args.seed).random((N_SAMPLES, INPUT_DIM), dtype=np.float32)
    benches = []
    for architecture in args.architecture or ["mlp", "conv"]:
        for batch_size in batch_sizes:
            benches += [minivae_bench(architecture, k, batch_size, host_x, args.seed) for k in ("fused", "plain")]
            if torch is not None:
                benches.append(torch_bench(torch, architecture, batch_size, host_x, args.seed))
    for bench in benches:
        bench.slices, bench.timed_samples = batch_slices(N_SAMPLES, bench.row["batch"])
        bench.epoch(bench.slices[:args.warmup_steps])
    for repeat in range(args.repeats):
        time_round(benches)
        print(f"  round {repeat + 1}: " + ", ".join(
            f"{b.row['backend']} {b.row['kernels']} {b.row['batch']}: {b.row['seconds_each'][-1]:.3f} s"
            for b in benches), flush=True)
    rows = [b.row for b in benches]
    for r in rows:
        r["seconds"] = statistics.median(r["seconds_each"])
    reference = {(r["backend"].split()[-1], r["batch"]): r["seconds"] for r in rows if r["backend"].startswith("torch")}
    body = []
    for r in rows:
        torch_seconds = reference.get((r["backend"].split()[-1], r["batch"]))
        r["ratio_to_torch"] = r["seconds"] / torch_seconds if torch_seconds else None
        body.append([r["backend"], r["kernels"], r["batch"], f"{r['seconds']:.3f}", f"{min(r['seconds_each']):.3f}",
                     f"{N_SAMPLES / r['seconds']:,.0f}", f"{r['ratio_to_torch']:.2f}" if r["ratio_to_torch"] else "-",
                     f"{r['loss_per_sample']:.2f}"])
    print("\n" + markdown_table(["model", "kernels", "batch", "s/epoch", "min s", "samples/s", "x torch",
                                 "loss/sample"], body))
    print("\nloss/sample: the mean loss of the last timed epoch (random uniform images, so only a sanity check).")
    if args.json:
        with atomic_write(args.json, "w") as handle:
            json.dump({"device": device, "cupy": cupy.__version__, "rows": rows}, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
