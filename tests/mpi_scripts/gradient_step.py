"""Under ``mpiexec -n N``: one data-parallel step's allreduced gradient against the one-process
gradient of the whole batch with the same eps (float64), for several models and batch sizes; also
the same with only half of the gradient buffer allreduced (a broken step, which must differ).
Then the parameter check across ranks, on equal models and after rank 1 changed one value by one
unit in the last place. Rank 0 writes ``{"cases": {case: [relative error of the gradient, of the
loss, of the broken gradient]}, "mismatch": the check's message}`` as JSON to the path given as the
first argument."""

import json
import sys

import numpy as np

from common import tiny_data, tiny_model
from minivae.distributed import connect, distributed_step, run_ranks
from minivae.errors import DistributedError

CASES = {  # name: (model options, global batch rows)
    "mlp": ({}, 7),
    "mlp-2-samples": ({"n_samples": 2}, 9),
    "iwae": ({"n_samples": 3, "objective": "iwae"}, 6),
    "one-row": ({}, 1),  # fewer rows than ranks: a rank with an empty shard
}


def relative_error(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def one_case(comm, options, rows, broken):
    model = tiny_model(**options)
    x = model.backend.to_device(tiny_data(rows))
    eps = model.draw_eps(rows)
    kl_weight = 1.0 if options.get("objective") == "iwae" else 0.7  # the IWAE bound takes no KL weight
    if broken:  # allreduce only the first half of the buffer
        half = model.buffer.grad.size // 2
        comm.allreduce_gradients = lambda buffer: comm._allreduce_in_place(buffer.grad[:half])
    terms = distributed_step(model, x, eps, comm, kl_weight=kl_weight)
    if broken:
        del comm.allreduce_gradients  # the class's method again
    reference = tiny_model(**options)
    expected = reference.loss_and_backward(x, eps=eps, kl_weight=kl_weight)
    return (relative_error(model.buffer.grad, reference.buffer.grad),
            relative_error(np.array([float(t) for t in terms]), np.array([float(t) for t in expected])))


def main(comm, out):
    results = {}
    for name, (options, rows) in CASES.items():
        gradient_error, loss_error = one_case(comm, options, rows, broken=False)
        broken_error = one_case(comm, options, rows, broken=True)[0]
        results[name] = [gradient_error, loss_error, broken_error]
    model = tiny_model()
    comm.check_same_parameters(model.buffer, "equal models")
    if comm.rank == 1:
        model.buffer.data[5] = np.nextafter(model.buffer.data[5], np.inf)
    try:
        comm.check_same_parameters(model.buffer, "after one changed value")
        mismatch = None
    except DistributedError as error:
        mismatch = str(error)
    if comm.is_root:
        with open(out, "w") as handle:
            json.dump({"size": comm.size, "cases": results, "mismatch": mismatch}, handle)
    return 0


if __name__ == "__main__":
    communicator = connect()
    sys.exit(run_ranks(communicator, main, communicator, sys.argv[1]))
