"""Optimizers: Adam with bias correction (eq. (19)) and SGD with momentum (eq. (20)).

Both update ``parameter.data`` in place from ``parameter.grad``. Their state is keyed by each
parameter's qualified name (``encoder.0.W``), never by ``id()``, so it survives device moves and
serialises into checkpoints.

Speed: the parameters live in one flat ``ParameterBuffer`` (the model packs them at construction),
so an update is a handful of in-place passes over a few flat arrays, not a handful per parameter.
On the CPU the flat arrays are split into one contiguous share per thread (NumPy releases the GIL
inside its loops, so two cores update two halves at once); on a GPU each pass is one kernel.
(Splitting further into cache-sized chunks was measured slower: per-call overhead dominates.)
"""

import math
import os
from concurrent.futures import ThreadPoolExecutor

from .layers import ParameterBuffer


class Optimizer:
    """Shared parts: the flat buffers, the threaded update, the step count, the state_dict."""

    hyperparameter_names = ()
    moment_names = ()

    def __init__(self, parameters, backend=None, threads=None):
        """parameters: a list of Parameters (``model.parameters()``); backend: needed only when
        they are not packed in a ParameterBuffer yet; threads: CPU threads for the update
        (default: up to 2, the cores this project targets; always 1 on a GPU)."""
        self.parameters = list(parameters)
        names = [p.name for p in self.parameters]
        if len(set(names)) != len(names):
            raise ValueError(f"parameter names must be unique, got {names}")
        if backend is None:
            if not self.parameters or self.parameters[0].buffer is None:
                raise ValueError("pass backend=... for parameters that are not packed in a ParameterBuffer")
            backend = self.parameters[0].buffer.backend
        self.buffer = ParameterBuffer.of(self.parameters, backend)
        self.xp = backend.xp
        self.step_count = 0
        self._flat_moments = {kind: self.xp.zeros_like(self.buffer.data) for kind in self.moment_names}
        self.moments = {kind: self.buffer.views(flat) for kind, flat in self._flat_moments.items()}
        self._scratch = self.xp.empty_like(self.buffer.data)
        on_cpu = backend.name == "numpy"
        threads = (min(2, os.cpu_count() or 1) if threads is None else threads) if on_cpu else 1
        self._shares = _split_work(self.buffer.data.size, threads)
        self._pool = ThreadPoolExecutor(threads) if threads > 1 else None

    def step(self):
        """One update of every parameter from its current gradient: eq. (19) for Adam, eq. (20) for SGD."""
        self.step_count += 1
        constants = self._constants()
        if self._pool is None:
            self._update_share(self._shares[0], constants)
        else:
            for _ in self._pool.map(self._update_share, self._shares, [constants] * len(self._shares)):
                pass

    def _update_share(self, share, constants):
        flat = [self.buffer.data, self.buffer.grad, self._scratch] + [self._flat_moments[k] for k in self.moment_names]
        self._update(*(array[share] for array in flat), constants)

    def hyperparameters(self):
        return {name: getattr(self, name) for name in self.hyperparameter_names}

    def state_dict(self):
        """{"step": int, "hyperparameters": {...}, "<moment>": {parameter name: array}}."""
        state = {"step": self.step_count, "hyperparameters": self.hyperparameters()}
        for kind, arrays in self.moments.items():
            state[kind] = {name: array.copy() for name, array in arrays.items()}
        return state

    def load_state_dict(self, state):
        """Restore a state_dict; refuses one whose parameter names or shapes differ."""
        for kind, arrays in self.moments.items():
            given = state[kind]
            if set(given) != set(arrays):
                raise ValueError(f"optimizer state {kind!r} holds parameters {sorted(given)}, "
                                 f"expected {sorted(arrays)}")
            for name, array in arrays.items():
                if tuple(given[name].shape) != tuple(array.shape):
                    raise ValueError(f"optimizer state {kind}[{name!r}] has shape {tuple(given[name].shape)}, "
                                     f"expected {tuple(array.shape)}")
        for kind, arrays in self.moments.items():
            for name, array in arrays.items():
                array[...] = state[kind][name]
        for name, value in state["hyperparameters"].items():
            setattr(self, name, value)
        self.step_count = int(state["step"])


def _split_work(size, threads):
    """Split ``range(size)`` into ``threads`` contiguous slices of (nearly) equal length."""
    bounds = [size * i // threads for i in range(threads + 1)]
    return [slice(start, stop) for start, stop in zip(bounds[:-1], bounds[1:])]


class Adam(Optimizer):
    """Adam with bias correction, as torch.optim.Adam (L2 weight decay added to the gradient)."""

    hyperparameter_names = ("lr", "beta1", "beta2", "eps", "weight_decay")
    moment_names = ("m", "v")

    def __init__(self, parameters, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, backend=None,
                 threads=None):
        super().__init__(parameters, backend, threads)
        self.lr, (self.beta1, self.beta2), self.eps, self.weight_decay = lr, betas, eps, weight_decay

    def _constants(self):
        t = self.step_count
        return self.lr / (1 - self.beta1 ** t), math.sqrt(1 - self.beta2 ** t)

    def _update(self, theta, g, tmp, m, v, constants):
        """Eq. (19): ``m <- b1 m + (1-b1) g``; ``v <- b2 v + (1-b2) g^2``;
        ``theta <- theta - lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)``,
        computed as ``theta -= (lr / (1-b1^t)) * m / (sqrt(v) / sqrt(1-b2^t) + eps)`` (as PyTorch),
        in place on one share of the flat arrays with one scratch array."""
        step_size, sqrt_correction2 = constants
        xp = self.xp
        if self.weight_decay:
            g = g + self.weight_decay * theta
        xp.multiply(g, 1 - self.beta1, out=tmp)
        m *= self.beta1
        m += tmp
        xp.multiply(g, g, out=tmp)
        tmp *= 1 - self.beta2
        v *= self.beta2
        v += tmp
        xp.sqrt(v, out=tmp)
        tmp /= sqrt_correction2
        tmp += self.eps
        xp.divide(m, tmp, out=tmp)
        tmp *= step_size
        theta -= tmp


class SGD(Optimizer):
    """Stochastic gradient descent with (optional) momentum, as torch.optim.SGD."""

    hyperparameter_names = ("lr", "momentum", "weight_decay")
    moment_names = ("momentum_buffer",)

    def __init__(self, parameters, lr=1e-2, momentum=0.0, weight_decay=0.0, backend=None, threads=None):
        super().__init__(parameters, backend, threads)
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay

    def _constants(self):
        return self.step_count == 1

    def _update(self, theta, g, tmp, buf, first_step):
        """Eq. (20): ``buf <- momentum * buf + g`` (buf = g at the first step);
        ``theta <- theta - lr * buf``; without momentum ``theta <- theta - lr * g``."""
        if self.weight_decay:
            g = g + self.weight_decay * theta
        if self.momentum:
            if first_step:
                buf[...] = g
            else:
                buf *= self.momentum
                buf += g
            g = buf
        self.xp.multiply(g, self.lr, out=tmp)
        theta -= tmp
