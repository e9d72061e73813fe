"""No allocation grows with the number of training steps: caches are one slot per layer, optimizer
state is preallocated, nothing is appended per step."""

import gc
import tracemalloc

from minivae import VAE, Adam


def test_training_steps_do_not_grow_memory(make_backend):
    backend = make_backend("float32", 0)
    model = VAE(64, (32,), 4, n_samples=2, backend=backend)
    optimizer = Adam(model.parameters())
    x = backend.uniform((16, 64))

    def steps(n):
        for _ in range(n):
            model.loss_and_backward(x)
            optimizer.step()

    steps(20)  # warm up: caches, scratch arrays, thread pool
    tracemalloc.start()
    try:
        steps(20)
        gc.collect()  # count what is still reachable, not garbage awaiting the cycle collector
        before = tracemalloc.get_traced_memory()[0]
        steps(300)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    # one step's arrays are ~50 KB here; 300 steps of any per-step leak would be far above this bound
    assert after - before < 20_000, f"memory grew by {after - before} bytes over 300 steps"
