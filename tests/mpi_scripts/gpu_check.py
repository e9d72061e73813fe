"""The multi-GPU check, for a machine with N >= 2 CUDA GPUs, CuPy, NCCL and the mpi extra:

    mpiexec -n 2 python tests/mpi_scripts/gpu_check.py

Each rank takes the GPU of its local rank and joins the NCCL communicator. Checks, each reported by
rank 0 on one line: (1) one float64 step's allreduced gradient equals the one-process gradient of
the whole batch with the same eps (computed on each rank's own GPU) to 1e-12 relative; (2) 20 Adam
steps of the default VAE in float32 leave the parameters bit for bit the same on every rank;
(3) the time of one NCCL allreduce of the P gradient values, and the bytes per second each rank
sends by eq. (50). Exits non-zero (every rank, through MPI_Abort) when a check fails."""

import sys
import time

import numpy as np

from minivae.backend import cupy_backend
from minivae.distributed import connect, distributed_step, run_ranks
from minivae.model import VAE
from minivae.optim import Adam


def gradient_check(comm):
    backend = comm.attach(cupy_backend("float64", seed=3))
    model, reference = (VAE(input_dim=64, hidden=(32,), latent_dim=4, n_samples=2, backend=backend.with_seed(3))
                        for _ in range(2))
    x = backend.uniform((13, 64))
    eps = model.draw_eps(13)
    distributed_step(model, x, eps, comm)
    reference.loss_and_backward(x, eps=eps)
    got, expected = backend.to_numpy(model.buffer.grad), backend.to_numpy(reference.buffer.grad)
    error = float(np.max(np.abs(got - expected)) / np.max(np.abs(expected)))
    worst = comm.allreduce_sums([error])[0] / comm.size  # the mean over the ranks; each must pass
    if error > 1e-12:
        raise AssertionError(f"rank {comm.rank}: the allreduced gradient is {error:.1e} from the batch gradient")
    return worst


def training_check(comm):
    float32 = cupy_backend("float32", seed=0)  # on this rank's GPU, which attach made the current device
    model = VAE(backend=float32)
    optimizer = Adam(model.parameters(), lr=1e-3)
    data = float32.uniform((20 * 128, 784))
    for step in range(20):
        x = data[step * 128:(step + 1) * 128]
        distributed_step(model, x, model.draw_eps(128), comm)
        optimizer.step()
    comm.check_same_parameters(model.buffer, "after 20 steps on the GPUs")
    float32.synchronize()
    start = time.perf_counter()
    for _ in range(50):
        comm.allreduce_gradients(model.buffer)
    float32.synchronize()
    return model.buffer.grad.size, (time.perf_counter() - start) / 50


def main(comm):
    mean_error = gradient_check(comm)
    size, seconds = training_check(comm)
    sent = 2 * (comm.size - 1) / comm.size * size * 4  # bytes each rank sends, eq. (50)
    if comm.is_root:
        print(f"ok: {comm.size} ranks on GPUs over NCCL; float64 gradient of the whole batch to {mean_error:.1e}")
        print("ok: 20 float32 Adam steps of the default VAE: the parameters are bit for bit the same on every rank")
        print(f"allreduce of P = {size:,} float32 values: {1e6 * seconds:.0f} us, {sent / seconds / 1e9:.1f} GB/s "
              f"sent per rank")
    return 0


if __name__ == "__main__":
    communicator = connect()
    sys.exit(run_ranks(communicator, main, communicator))
