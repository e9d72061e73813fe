"""Train the same model on NumPy and on CuPy from the same weights, data and noise, and check that
the losses and the final parameters agree to float32 precision.

    python benchmarks/compare_backends.py [--steps 200] [--batch-size 128] [--backend cupy]

The two backends' random generators differ, so the batch order and the noise eps are drawn once on
the host (NumPy) and copied to both. Exit status 0 when every step's loss agrees within --rtol.
"""

import argparse
import sys

import numpy as np

from minivae import VAE, Adam, get_backend


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="cupy", help="the backend compared with numpy (default: cupy)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rtol", type=float, default=1e-3,
                        help="allowed relative difference of each loss (float32 GEMMs sum in different orders)")
    args = parser.parse_args(argv)

    host = np.random.default_rng(0)
    prototypes = (host.random((10, 784)) < 0.3).astype(np.float32)
    data = np.clip(prototypes[host.integers(0, 10, 4096)] + 0.1 * host.random((4096, 784), dtype=np.float32), 0, 1)
    batches = [host.integers(0, len(data), args.batch_size) for _ in range(args.steps)]
    noise = [host.standard_normal((1, args.batch_size, 20), dtype=np.float32) for _ in range(args.steps)]

    losses, params = {}, {}
    reference = VAE(backend=get_backend("numpy", "float32", seed=1))
    initial = [p.data.copy() for p in reference.parameters()]
    for name in ("numpy", args.backend):
        backend = get_backend(name, "float32", seed=1)
        model = VAE(backend=backend)
        for p, value in zip(model.parameters(), initial):
            p.data[...] = backend.to_device(value)
        optimizer = Adam(model.parameters())
        device_data = backend.to_device(data)
        totals = backend.zeros((args.steps,))
        for step, (rows, eps) in enumerate(zip(batches, noise)):
            totals[step] = model.loss_and_backward(device_data[backend.xp.asarray(rows)],
                                                   backend.to_device(eps)).total
            optimizer.step()
        backend.synchronize()
        losses[name] = backend.to_numpy(totals) / args.batch_size
        params[name] = [backend.to_numpy(p.data) for p in model.parameters()]

    loss_error = np.abs(losses[args.backend] - losses["numpy"]) / np.abs(losses["numpy"])
    param_error = max(float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))
                      for a, b in zip(params[args.backend], params["numpy"]))
    print(f"{args.steps} steps, batch {args.batch_size}: loss per sample numpy {losses['numpy'][-1]:.4f}, "
          f"{args.backend} {losses[args.backend][-1]:.4f}")
    print(f"max relative loss difference {loss_error.max():.2e} (tolerance {args.rtol:g}); "
          f"max relative parameter difference {param_error:.2e}")
    ok = bool(loss_error.max() <= args.rtol)
    print("backends agree" if ok else "BACKENDS DISAGREE")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
