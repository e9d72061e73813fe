"""A short training run (Adam, a tiny model and data, 2 epochs of 5 global batches) written
the way the trainer runs it: one process (``comm`` None: ``model.loss_and_backward(x)`` draws eps
itself) or data-parallel (every rank draws the global batch's eps and takes its shard:
``distributed_step``); the test sums split across ranks and reduced; the parameters compared across
ranks after each epoch. Under ``mpiexec -n N`` rank 0 saves what it saw, in float32 and in float64
(keys ending in _float32, _float64), to the .npz path given as the first argument; with a second argument "kill-rank-1" rank 1 kills itself (SIGKILL) in epoch 2,
with "raise-rank-1" it raises an exception there."""

import os
import signal
import sys

import numpy as np

from common import tiny_data, tiny_model
from minivae.distributed import connect, distributed_step, run_ranks
from minivae.optim import Adam

TRAIN_ROWS, TEST_ROWS, BATCH, EVAL_CHUNK, EPOCHS, SEED = 37, 13, 8, 5, 2, 5


def train(comm, dtype="float32", mode=""):
    """{"parameters": the flat parameters after the run, "train": per-epoch (reconstruction, KL,
    total) sums, "test": per-epoch test sums}, float64 host arrays."""
    model = tiny_model(dtype, seed=SEED, hidden=(12,), latent_dim=3, n_samples=2)
    backend = model.backend
    optimizer = Adam(model.parameters(), lr=1e-2)
    train_x, test_x = backend.to_device(tiny_data(TRAIN_ROWS)), backend.to_device(tiny_data(TEST_ROWS, seed=12))
    train_sums, test_sums = [], []
    for epoch in range(1, EPOCHS + 1):
        order = backend.permutation(TRAIN_ROWS)
        sums = np.zeros(3)
        for step, start in enumerate(range(0, TRAIN_ROWS, BATCH)):
            if mode and comm.rank == 1 and epoch == 2 and step == 2:
                if mode == "kill-rank-1":
                    os.kill(os.getpid(), signal.SIGKILL)
                raise RuntimeError("rank 1 fails on purpose")
            x = train_x[order[start:start + BATCH]]
            if comm is None:
                terms = model.loss_and_backward(x)
            else:
                terms = distributed_step(model, x, model.draw_eps(x.shape[0]), comm)
            sums += [float(term) for term in terms]
            optimizer.step()
        train_sums.append(sums)
        test_sums.append(test_loss_sums(model, test_x, epoch, comm))
        if comm is not None:
            comm.check_same_parameters(model.buffer, f"after epoch {epoch}")
    return {"parameters": backend.to_numpy(model.buffer.data).astype(np.float64),
            "train": np.array(train_sums), "test": np.array(test_sums)}


def test_loss_sums(model, test_x, epoch, comm):
    """Summed (reconstruction, KL) over the test set with z sampled from a generator of its own:
    every rank draws each chunk's eps, evaluates its shard of the chunk; the sums are reduced."""
    noise = model.backend.with_seed(SEED * 100_003 + epoch)
    sums = np.zeros(2)
    for start in range(0, test_x.shape[0], EVAL_CHUNK):
        x = test_x[start:start + EVAL_CHUNK]
        eps = noise.standard_normal((model.n_samples, x.shape[0], model.latent_dim))
        rows = slice(None) if comm is None else comm.shard(x.shape[0])
        if x[rows].shape[0]:
            reconstruction, kl = model.elbo_terms(x[rows], eps[:, rows])
            sums += [float(reconstruction.sum()), float(kl.sum())]
    return sums if comm is None else comm.allreduce_sums(sums)


def main(comm, out, mode=""):
    results = {f"{key}_{dtype}": value for dtype in ("float32", "float64")
               for key, value in train(comm, dtype, mode).items()}
    if comm.is_root:
        np.savez(out, size=comm.size, **results)
    return 0


if __name__ == "__main__":
    communicator = connect()
    sys.exit(run_ranks(communicator, main, communicator, *sys.argv[1:]))
