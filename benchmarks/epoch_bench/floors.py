"""Floors (``--floors``): where a training step's time goes, and how low it could go, for the two
speed targets of issue 25 that compare a step with something else: the MLP's (a step <= 1.25x its
GEMM-only time) and the conv VAE's (a step <= 0.8x PyTorch's, measured in the same run).

Each part of the step is timed where it runs, by a timer around its call (about a microsecond a
call: cProfile's per-function cost would inflate the small parts). The **floor** of a step is

    its matrix products: for the MLP, GEMM-only (the step's products back to back, the round's
    measurement); for the conv VAE, the sum of each product timed alone in a loop, the best of 10
    rounds, whole or in the chunks of images the fused layers use (``conv_products``), a weight
    gradient in whichever orientation runs faster
  + the optimizer's update, timed alone (its moments and gradients hot in cache)
  + the likelihood kernel on one batch, timed alone,

and nothing else: the reparameterization, the KL, the ReLU and bias passes, im2col and col2im, the
layout copies, the batch gather, Python, and the products' own slowdown inside a step (other data in
the caches, BLAS threads waking) all count as free. It is the floor as measured in the run: the best
of a few rounds, so a slow spell can raise a product's time, and a longer run can find faster
rates. The target's budget less the floor is what the target leaves for all the rest, set against
what the rest takes now.
"""

import time

import numpy as np

from minivae.backend import get_backend
from minivae.conv import Conv2d, ConvTranspose2d
from minivae.kernels.conv_cpu import ConvKernels
from minivae.model import VAE
from minivae.optim import Adam

from . import HIDDEN, INPUT_DIM, LATENT, N_SAMPLES
from .conv import CONV_CHANNELS, IMAGE_SHAPE, conv_vae, setup_conv
from .gemm import back_to_back, seconds_per_call, step_gemms
from .machine import load_average
from .report import markdown_table
from .timing import batch_slices, minivae_epoch

MLP_TARGET = 1.25  # a step's time / GEMM-only
CONV_TARGET = 0.8  # a step's time / PyTorch's


class PartTimers:
    """Seconds spent in chosen methods of chosen objects, summed over calls: ``wrap(obj, "forward",
    "encoder")`` puts a timer around ``obj.forward`` (an attribute of that instance only)."""

    def __init__(self):
        self.seconds = {}

    def wrap(self, obj, method, label):
        inner = getattr(obj, method)
        self.seconds.setdefault(label, 0.0)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.seconds[label] += time.perf_counter() - start

        setattr(obj, method, timed)

    def wrap_update_and_likelihood(self, optimizer, model):
        """Timers around ``optimizer.step`` and the Bernoulli ``model.likelihood.nll_and_grad``;
        returns the two unwrapped, for timing them alone."""
        update, nll_and_grad = optimizer.step, model.likelihood.nll_and_grad
        self.wrap(optimizer, "step", "Adam update")
        self.wrap(model.likelihood, "nll_and_grad", "Bernoulli NLL and gradient")
        return update, nll_and_grad

    def reset(self):
        self.seconds = dict.fromkeys(self.seconds, 0.0)


def paired_rounds(epoch, slices, reference, repeats, timers):
    """``repeats`` rounds, each one pass of ``epoch(slices)`` then one measurement of ``reference()``
    (seconds per step), so that a slow spell of a shared machine falls on both; prints every round.
    Returns the round with the median ratio: (step seconds, reference seconds, each timed part's
    seconds per step)."""
    rounds = []
    for _ in range(repeats):
        timers.reset()
        start = time.perf_counter()
        epoch(slices)
        step = (time.perf_counter() - start) / len(slices)
        rounds.append((step, reference(), {label: s / len(slices) for label, s in timers.seconds.items()}))
    median = sorted(rounds, key=lambda r: r[0] / r[1])[len(rounds) // 2]
    pairs = ", ".join(f"{1e3 * step:.2f} / {1e3 * ref:.2f}" for step, ref, _ in rounds)
    print(f"  rounds, ms per step (step / reference): {pairs}")
    return median


def best_product_seconds(a, b, chunks=(None,)):
    """The best time of ``a @ b`` (a: (M, K), b: (K, N)): whole, or in row blocks of each size in
    ``chunks`` (None: whole), one product per block into a preallocated output."""
    out = np.empty((a.shape[0], b.shape[1]), a.dtype)
    best = float("inf")
    for rows in dict.fromkeys(min(rows or a.shape[0], a.shape[0]) for rows in chunks):  # a chunk >= M: whole
        edges = [(start, min(start + rows, a.shape[0])) for start in range(0, a.shape[0], rows)]

        def product():
            for start, stop in edges:
                np.matmul(a[start:stop], b, out=out[start:stop])

        best = min(best, seconds_per_call(product, lambda: None))  # 10 rounds of 0.1 s, as the GEMM probe
    return best


def conv_products(batch, rng):
    """The matrix products of one conv VAE training step (minivae/conv.py, 28x28, channels 32 and 64)
    as (name, a, b, row chunks), with a transposed view where the layer takes one: per convolution
    the forward, the weight gradient (in the orientation ``_set_grads`` picks) and, except for the
    first, the input gradient; per Linear the same three. The conv layers' row chunks are those of
    images whose columns fill the fused kernels' ~2 MB (``ConvKernels.chunk_bytes``)."""
    (height, width), (c1, c2) = IMAGE_SHAPE, CONV_CHANNELS
    taps, features = 16, c2 * (height // 4) * (width // 4)
    p14, p7 = batch * (height // 2) * (width // 2), batch * (height // 4) * (width // 4)
    chunk14, chunk7 = _chunk_rows(p14 // batch, taps), _chunk_rows(p7 // batch, taps * c1)
    r = lambda *shape: rng.random(shape, dtype=np.float32)  # noqa: E731
    return [
        ("conv 1 -> 32: y", r(p14, taps), r(c1, taps).T, (None, chunk14)),  # W_mat of one channel: F-ordered
        ("conv 1 -> 32: dW", r(p14, taps).T, r(p14, c1), (None,)),
        ("conv 32 -> 64: y", r(p7, taps * c1), r(taps * c1, c2), (None, chunk7)),
        ("conv 32 -> 64: dW", r(p7, c2).T, r(p7, taps * c1), (None,)),
        ("conv 32 -> 64: dx", r(p7, c2), r(taps * c1, c2).T, (None, chunk7)),
        ("linear 3136 -> 40: y", r(batch, features), r(features, 2 * LATENT), (None,)),
        ("linear 3136 -> 40: dW", r(batch, features).T, r(batch, 2 * LATENT), (None,)),
        ("linear 3136 -> 40: dx", r(batch, 2 * LATENT), r(features, 2 * LATENT).T, (None,)),
        ("linear 20 -> 3136: y", r(batch, LATENT), r(LATENT, features), (None,)),
        ("linear 20 -> 3136: dW", r(batch, LATENT).T, r(batch, features), (None,)),
        ("linear 20 -> 3136: dx", r(batch, features), r(LATENT, features).T, (None,)),
        ("transpose conv 64 -> 32: y", r(p7, c2), r(taps * c1, c2).T, (None, chunk7)),
        ("transpose conv 64 -> 32: dx", r(p7, taps * c1), r(taps * c1, c2), (None, chunk7)),
        ("transpose conv 64 -> 32: dW", r(p7, c2).T, r(p7, taps * c1), (None,)),
        ("transpose conv 32 -> 1: y", r(p14, c1), r(c1, taps), (None, chunk14)),
        ("transpose conv 32 -> 1: dx", r(p14, taps), r(c1, taps).T, (None, chunk14)),
        ("transpose conv 32 -> 1: dW", r(p14, taps).T, r(p14, c1), (None,)),
    ]


def _chunk_rows(pixels, columns):
    """The rows of a chunk of the fused conv layers (``ConvKernels._chunks``): the images whose
    float32 columns (``pixels`` rows of ``columns`` values each) fill about ``chunk_bytes``."""
    return max(1, ConvKernels.chunk_bytes // (pixels * columns * 4)) * pixels


def hot_update_seconds(update):
    """The optimizer's update (``optimizer.step``, unwrapped) alone, repeated: its arrays hot in
    cache; best of rounds. It goes on training the model, which is not timed again afterwards."""
    return seconds_per_call(update, lambda: None, min_seconds=0.3, rounds=5)


def hot_likelihood_seconds(nll_and_grad, backend, batch, rng):
    """The likelihood kernel (``likelihood.nll_and_grad``, unwrapped) on one batch of logits alone,
    best of rounds."""
    logits = backend.to_device(rng.standard_normal((batch, INPUT_DIM)).astype(np.float32))
    x = backend.to_device(rng.random((batch, INPUT_DIM), dtype=np.float32))
    return seconds_per_call(lambda: nll_and_grad(logits, x), lambda: None, min_seconds=0.3, rounds=5)


def floor_report(title, step, parts, reference_name, reference, target, products, update, likelihood,
                 products_how):
    """Print one model's table: the step's parts, the floor, the target's budget; returns the row."""
    floor = products + update + likelihood
    budget = target * reference
    rows = [[label, f"{1e3 * s:.3f}", f"{100 * s / step:.0f}%"] for label, s in parts.items()]
    rows.append(["rest (outside the timed parts)", f"{1e3 * (step - sum(parts.values())):.3f}",
                 f"{100 * (step - sum(parts.values())) / step:.0f}%"])
    print(f"\n{title}: a step takes {1e3 * step:.2f} ms = {step / reference:.2f}x {reference_name} "
          f"({1e3 * reference:.2f} ms); parts, ms per step, timed in the step:")
    print(markdown_table(["part", "ms", "share"], rows))
    print(f"floor: products {products_how} {1e3 * products:.2f} ms + update alone {1e3 * update:.3f} ms "
          f"+ likelihood alone {1e3 * likelihood:.3f} ms = {1e3 * floor:.2f} ms = {floor / reference:.2f}x "
          f"{reference_name}")
    print(f"target <= {target}x {reference_name} = {1e3 * budget:.2f} ms: it leaves "
          f"{1e3 * (budget - floor):.2f} ms for everything else, which takes {1e3 * (step - floor):.2f} ms now")
    return {"model": title, "step_ms": 1e3 * step, "reference": reference_name, "reference_ms": 1e3 * reference,
            "ratio": step / reference, "floor_ms": 1e3 * floor, "floor_ratio": floor / reference,
            "target": target, "budget_left_ms": 1e3 * (budget - floor), "rest_now_ms": 1e3 * (step - floor),
            "parts_ms": {label: 1e3 * s for label, s in parts.items()}}


def mlp_floor(host_x, args, batch):
    """The default MLP at ``batch``: its fused numpy float32 step against GEMM-only, in paired rounds."""
    backend = get_backend("numpy", dtype="float32", seed=args.seed)
    model = VAE(input_dim=INPUT_DIM, hidden=(HIDDEN,), latent_dim=LATENT, backend=backend)
    optimizer = Adam(model.parameters(), lr=1e-3)
    x = backend.to_device(host_x)
    timers = PartTimers()
    for label, obj in (("encoder", model.encoder), ("decoder", model.decoder)):
        timers.wrap(obj, "forward", f"{label} forward (products, bias + ReLU)")
        timers.wrap(obj, "backward", f"{label} backward (products, ReLU mask + bias sums)")
    update, nll_and_grad = timers.wrap_update_and_likelihood(optimizer, model)
    slices, _ = batch_slices(N_SAMPLES, batch, args.epochs_fraction)
    epoch = lambda s: minivae_epoch(model, optimizer, backend, x, s)  # noqa: E731
    epoch(slices[:args.warmup_steps])
    products = back_to_back(np, step_gemms(np, np.float32, batch))
    print(f"\nMLP, batch {batch}:")
    gemm_only_per_step = lambda: seconds_per_call(products, lambda: None, 0.3, 5)  # noqa: E731
    step, gemm_only, parts = paired_rounds(epoch, slices, gemm_only_per_step, args.repeats, timers)
    rng = np.random.default_rng(args.seed)
    return floor_report(f"MLP, batch {batch}", step, parts, "GEMM-only", gemm_only, MLP_TARGET, gemm_only,
                        hot_update_seconds(update), hot_likelihood_seconds(nll_and_grad, backend, batch, rng),
                        "back to back (GEMM-only)")


def conv_floor(host_x, args, batch):
    """The conv VAE at ``batch``: its fused numpy float32 step against PyTorch's, in paired rounds."""
    torch_bench = setup_conv("torch", batch, host_x, args)  # warmed up, its slices those below
    backend = get_backend("numpy", dtype="float32", seed=args.seed)
    model = conv_vae(backend)
    optimizer = Adam(model.parameters(), lr=1e-3)
    x = backend.to_device(host_x)
    timers = PartTimers()
    for layer in model.encoder.layers + model.decoder.layers:
        if isinstance(layer, (Conv2d, ConvTranspose2d)):
            label = f"{type(layer).__name__} {layer.in_channels} -> {layer.out_channels}"
            timers.wrap(layer, "forward", label + " forward")
            timers.wrap(layer, "backward", label + " backward")
    update, nll_and_grad = timers.wrap_update_and_likelihood(optimizer, model)
    slices, _ = batch_slices(N_SAMPLES, batch, args.epochs_fraction)
    ours = lambda s: minivae_epoch(model, optimizer, backend, x, s)  # noqa: E731
    ours(slices[:args.warmup_steps])

    def torch_seconds_per_step():
        start = time.perf_counter()
        torch_bench.epoch(torch_bench.slices)
        return (time.perf_counter() - start) / len(torch_bench.slices)

    print(f"\nconv VAE, batch {batch} (reference: PyTorch's step):")
    step, torch_step, parts = paired_rounds(ours, slices, torch_seconds_per_step, args.repeats, timers)
    rng = np.random.default_rng(args.seed)
    products = 0.0
    rates = []
    for name, a, b, chunks in conv_products(batch, rng):
        seconds = best_product_seconds(a, b, chunks)
        if name.endswith("dW"):  # a weight gradient may be taken either way round: dW_mat^T = b^T a^T
            seconds = min(seconds, best_product_seconds(b.T, a.T))
        products += seconds
        rates.append([name, f"{a.shape[0]} x {a.shape[1]} x {b.shape[1]}", f"{1e3 * seconds:.3f}",
                      f"{2 * a.shape[0] * a.shape[1] * b.shape[1] / seconds / 1e9:.0f}"])
    print("\nthe conv VAE's products, each at its best rate (whole or in the fused layers' chunks; a weight "
          "gradient either way round):")
    print(markdown_table(["product", "M x K x N", "ms", "GFLOP/s"], rates))
    return floor_report(f"conv VAE, batch {batch}", step, parts, "PyTorch", torch_step, CONV_TARGET, products,
                        hot_update_seconds(update), hot_likelihood_seconds(nll_and_grad, backend, batch, rng),
                        "each at its best rate")


def run_floors(host_x, args, has_torch):
    """Both models' tables (the conv one when PyTorch imports); returns their rows."""
    rows = [mlp_floor(host_x, args, batch) for batch in args.batch_size]
    if has_torch:
        rows += [conv_floor(host_x, args, batch) for batch in args.batch_size]
    else:
        print("\nskipping the conv floor: it sets the step against PyTorch's, and `import torch` failed")
    print(f"\nload average at the end: {load_average()}")
    return rows
