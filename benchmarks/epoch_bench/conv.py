"""The conv VAE rows (``--architecture conv``): minivae's conv VAE on numpy float32, with its fused
conv kernels and with the plain xp code, against the same network in PyTorch eager, interleaved,
and the share of a profiled (fused) minivae pass in im2col / col2im."""

import cProfile
import pstats
import statistics
import time

from minivae.backend import get_backend
from minivae.model import VAE
from minivae.optim import Adam

from . import INPUT_DIM, LATENT, N_SAMPLES
from .machine import load_average
from .report import markdown_table
from .timing import Bench, batch_slices, minivae_epoch, time_round, torch_epoch, torch_version


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
    """A warmed-up Bench for the conv VAE: minivae on numpy float32 ("numpy": the fused kernels,
    "numpy-plain": the plain xp code), or PyTorch eager ("torch")."""
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
        if name == "numpy-plain":
            backend.kernels = None  # before the model is built: its layers read them
        model = conv_vae(backend)
        optimizer = Adam(model.parameters(), lr=1e-3)
        x = backend.to_device(host_x)
        bench = Bench(name.replace("-", " ") + " conv", "float32", batch_size,
                      lambda s: minivae_epoch(model, optimizer, backend, x, s))
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
    # the fused layers' im2col and col2im passes, each call over a chunk of images (its product not included)
    copies = sum(v[3] for (file, _, name), v in stats.items()
                 if name in ("_im2col_into", "_col2im_into") and file.endswith("conv_cpu.py"))
    return copies / elapsed, elapsed


def run_conv(host_x, args):
    """The conv rows: minivae numpy float32 (fused, plain) and PyTorch eager, interleaved repeats, x torch."""
    names = ["numpy", "numpy-plain"] + (["torch"] if torch_version() is not None else [])
    if "torch" not in names:
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
