"""``python -m minivae.train --distributed``: what changes when N ranks train one model (section 24 of
docs/derivation.md; the engine is minivae/distributed.py).

Every rank runs the whole command: it parses the same flags, loads the data, builds the same model
from the same seed and visits the same global batches with the same noise as one process would.
What differs, and is written here:
  - the step: each rank takes its shard of the global batch, and one allreduce (sum) of the flat
    gradient buffer gives every rank the gradient of the whole batch (eq. (48)) (``training_step``);
  - the test losses: each rank evaluates its shard of each test chunk, the sums are reduced
    (``test_rows``, ``summed``);
  - the run folder: rank 0 alone prepares, locks and writes it (config.json, metrics, pictures,
    checkpoints, the progress bar and every log line); the others receive its saved settings
    (``run_folder``);
  - failures: a rank that fails prints one line naming it and ends every rank (MPI_Abort), so none
    waits for a peer that is gone; a failure that every rank meets (a NaN, which all ranks compute
    alike) is printed by rank 0 alone (``main_on_ranks``);
  - after each epoch, the parameters are compared across ranks, bit for bit.
One process (``comm`` None) takes the plain paths, so the loop in minivae/train_loop.py reads the same.
"""

import contextlib
import io
import sys
import time

import numpy as np

from .distributed import connect, distributed_step
from .errors import DistributedError

PEER_GRACE_S = 1.5
"""How long a failing rank other than 0 holds its line back: when rank 0 fails too (the same error on
every rank), rank 0's MPI_Abort ends this rank first, so the failure is printed once."""


def wants_ranks(argv):
    """Whether the command line asks for --distributed (read before parsing: the ranks must connect
    before anything they print, so that each error line can name its rank)."""
    return "--distributed" in (sys.argv[1:] if argv is None else argv)


def main_on_ranks(program, run_command_on):
    """Run the command on this rank: ``run_command_on(program_name, comm)`` returns its exit status.
    Returns 2 with one line when this process cannot join the ranks (no mpi4py, no MPI launcher);
    ends every rank (MPI_Abort) when this one fails, after its one line."""
    try:
        comm = connect()
    except DistributedError as error:
        print(f"{program}: error: {error}", file=sys.stderr)
        return 2
    name = f"{program} (rank {comm.rank} of {comm.size})"
    held = None if comm.is_root else io.StringIO()
    with contextlib.redirect_stderr(held) if held is not None else contextlib.nullcontext():
        status = run_command_on(name, comm)
    if status != 0:
        if held is not None:
            time.sleep(PEER_GRACE_S)
            sys.stderr.write(held.getvalue())
        comm.abort(status)
    return status


@contextlib.contextmanager
def run_folder(opened, out, resuming, comm):
    """``opened(out, resuming)`` (minivae/run_folder.py) on rank 0, its saved settings sent to every rank."""
    if comm is None:
        with opened(out, resuming) as saved:
            yield saved
    elif comm.is_root:
        with opened(out, resuming) as saved:
            comm.world.bcast(saved, root=0)
            yield saved
    else:
        yield comm.world.bcast(None, root=0)


def training_step(model, x, kl_weight, comm):
    """The loss terms of the global batch x and, in every parameter's grad, their gradient: one process's
    ``loss_and_backward``, or this rank's shard and the allreduce (eq. (48)), with the same noise."""
    if comm is None:
        return model.loss_and_backward(x, kl_weight=kl_weight, checked=True)
    return distributed_step(model, x, model.draw_eps(x.shape[0]), comm, kl_weight=kl_weight, checked=True)


def test_rows(comm, count):
    """The rows of a test chunk of ``count`` rows this rank evaluates (all of them in one process)."""
    return slice(None) if comm is None else comm.shard(count)


def summed(comm, sums):
    """Host sums (float64) over the ranks; ``sums`` itself in one process."""
    return sums if comm is None else comm.allreduce_sums(np.asarray(sums, dtype=np.float64))


def check_same_model(comm, model, epoch):
    """After an epoch: the parameters of every rank must be rank 0's, bit for bit (one line if not)."""
    if comm is not None:
        comm.check_same_parameters(model.buffer, f"after epoch {epoch}")
