"""One rank of ``python -m minivae.train --distributed`` that goes wrong on purpose, for an MPMD launch:

    mpiexec -n 1 python -m minivae.train ARGS : -n 1 python tests/mpi_scripts/failing_rank.py MODE STEP ARGS

It runs the command with ARGS, and at its training step number STEP (counted from 1 over the whole
run) it changes its first parameter by one unit in the last place and trains on (MODE "drift": the
ranks no longer hold one model), or runs out of memory (MODE "memory": a MemoryError)."""

import sys

import numpy as np

from minivae import train, train_loop

MODE, FAILING_STEP = sys.argv[1], int(sys.argv[2])
steps = []
training_step = train_loop.training_step


def failing_step(model, x, kl_weight, comm):
    steps.append(1)
    if len(steps) == FAILING_STEP:
        if MODE == "memory":
            raise MemoryError("rank 1 runs out of memory on purpose")
        model.buffer.data[0] = np.nextafter(model.buffer.data[0], np.inf)
    return training_step(model, x, kl_weight, comm)


if __name__ == "__main__":
    train_loop.training_step = failing_step
    sys.exit(train.main(sys.argv[3:]))
