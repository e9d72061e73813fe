"""Strong scaling of data-parallel training (minivae/distributed.py): one epoch of the default VAE
(784-400-20-400-784, Adam lr 1e-3, float32, batch 128) on 1 and on 2 ranks, and the share of a step
each part takes: the forward and backward of the rank's shard, the wait for the slowest rank, the
one allreduce of the P gradient values, the loss sums' allreduce, the optimizer step.

Run plainly, this script is the driver: for each rank count it starts itself under
``mpiexec -n N`` (``pip install -e ".[mpi]"``), each rank on ``--threads-per-rank`` CPU threads
(default: the cores over N), and prints one table with the machine's load average before and
after (numbers taken while the load average exceeds the core count are not results). The epoch is
60,000 generated rows of MNIST's shape (values uniform in [0, 1], fixed seed; nothing is
downloaded); ``--fraction f`` times the first fraction f of its steps and scales to an epoch.
Every step runs as ``distributed_step`` does, with a barrier added before the allreduce so that the
wait for the slower rank is not counted as allreduce time. A separate loop times 50 allreduces of
the P-value buffer alone (its bandwidth: eq. (50) has each rank send 2 (N-1)/N P values).

    python benchmarks/bench_distributed.py                     # 1 and 2 ranks, a full epoch each
    python benchmarks/bench_distributed.py --fraction 0.2      # a quick look
    python benchmarks/bench_distributed.py --ranks 1 2 4 --threads-per-rank 1
    python benchmarks/bench_distributed.py --json results/bench_distributed.json
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

PARTS = ("compute", "wait", "allreduce", "loss sums", "optimizer")


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2], help="rank counts to time (default: 1 2)")
    parser.add_argument("--threads-per-rank", type=int, default=None, help="CPU threads per rank (default: cores / N)")
    parser.add_argument("--fraction", type=float, default=1.0, help="fraction of the epoch's steps to time")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--rank-out", help=argparse.SUPPRESS)  # set by the driver for the ranks
    return parser.parse_args(argv)


def run_rank(args):
    """One rank's part: the timed epoch and the allreduce loop; rank 0 writes the results."""
    import numpy as np

    from minivae.backend import numpy_backend
    from minivae.distributed import connect, run_ranks
    from minivae.model import VAE
    from minivae.optim import Adam

    comm = connect()

    def body():
        backend = comm.attach(numpy_backend("float32", seed=0, threads=args.threads_per_rank))
        model = VAE(backend=backend)
        optimizer = Adam(model.parameters(), lr=1e-3)
        rows = 60_000
        train_x = backend.to_device(np.random.default_rng(1).random((rows, 784), dtype=np.float32))
        order = backend.permutation(rows)
        steps = max(1, int(-(-rows // args.batch_size) * args.fraction))
        totals = dict.fromkeys(PARTS, 0.0)
        for step in range(steps + 5):  # 5 untimed warm-up steps first
            x = train_x[order[(step % steps) * args.batch_size:(step % steps + 1) * args.batch_size]]
            eps = model.draw_eps(x.shape[0])
            ticks = [time.perf_counter()]
            shard = comm.shard(x.shape[0])
            terms = model.loss_and_backward(x[shard], eps=eps[:, shard])
            ticks.append(time.perf_counter())
            comm.world.Barrier()
            ticks.append(time.perf_counter())
            comm.allreduce_gradients(model.buffer)
            ticks.append(time.perf_counter())
            comm.allreduce_sums(backend.xp.stack(list(terms)))
            ticks.append(time.perf_counter())
            optimizer.step()
            ticks.append(time.perf_counter())
            if step >= 5:
                for part, start, stop in zip(PARTS, ticks, ticks[1:]):
                    totals[part] += stop - start
        scale = -(-rows // args.batch_size) / steps
        epoch = {part: seconds * scale for part, seconds in totals.items()}
        grad = model.buffer.grad
        comm.world.Barrier()
        start = time.perf_counter()
        for _ in range(50):
            comm.allreduce_gradients(model.buffer)
        alone = (time.perf_counter() - start) / 50
        if comm.is_root:
            with open(args.rank_out, "w") as handle:
                json.dump({"ranks": comm.size, "threads_per_rank": args.threads_per_rank, "epoch": epoch,
                           "parameters": int(grad.size), "allreduce_alone_s": alone}, handle)
        return 0

    return run_ranks(comm, body)


def drive(args):
    launcher = shutil.which("mpiexec")
    if launcher is None:
        sys.exit('bench_distributed: mpiexec is not on PATH; pip install -e ".[mpi]"')
    cores = os.cpu_count() or 1
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    load_before = os.getloadavg()
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for ranks in args.ranks:
            threads = args.threads_per_rank or max(1, cores // ranks)
            out = os.path.join(folder, f"{ranks}.json")
            env = {**os.environ, "PYTHONPATH": root, "OMP_NUM_THREADS": str(threads),
                   "OPENBLAS_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
            command = [launcher, "-n", str(ranks), sys.executable, os.path.abspath(__file__),
                       "--fraction", str(args.fraction), "--batch-size", str(args.batch_size),
                       "--threads-per-rank", str(threads), "--rank-out", out]
            subprocess.run(command, env=env, check=True)
            with open(out) as handle:
                results.append(json.load(handle))
    load_after = os.getloadavg()
    print(f"load average (1, 5, 15 min) before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}, "
          f"after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}; {cores} cores"
          + ("  -- LOADED: not results" if max(load_before[0], load_after[0]) > cores else ""))
    base = sum(results[0]["epoch"].values())
    print(f"{'ranks':>5} {'threads':>7} {'epoch s':>8} {'speed-up':>8}  " + "  ".join(f"{p:>10}" for p in PARTS)
          + f"  {'allreduce alone':>15}")
    for result in results:
        total = sum(result["epoch"].values())
        shares = "  ".join(f"{100 * result['epoch'][p] / total:9.1f}%" for p in PARTS)
        alone = result["allreduce_alone_s"]
        rate = result["parameters"] * 4 / alone / 1e9 if result["ranks"] > 1 else float("nan")
        print(f"{result['ranks']:>5} {result['threads_per_rank']:>7} {total:8.2f} {base / total:8.2f}  {shares}  "
              f"{1e3 * alone:7.3f} ms {rate:5.2f} GB/s")
    print(f"P = {results[0]['parameters']:,} gradient values (float32) per allreduce; GB/s is P*4 bytes over its time")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"load_before": load_before, "load_after": load_after, "cores": cores, "runs": results},
                      handle, indent=2)


if __name__ == "__main__":
    arguments = parse(sys.argv[1:])
    if arguments.rank_out:
        sys.exit(run_rank(arguments))
    drive(arguments)
