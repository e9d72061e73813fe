"""Optimizers: Adam with bias correction (eq. (19)) and SGD with momentum (eq. (20)).

Both update ``parameter.data`` in place from ``parameter.grad``. Their state is keyed by each
parameter's qualified name (``encoder.0.W``), never by ``id()``, so it survives device moves and
serialises into checkpoints.

Speed: the parameters live in one flat ``ParameterBuffer`` (the model packs them at construction),
which every optimizer of them shares (one on a subset updates its stretches of it), so an update is
a handful of in-place passes over a few flat arrays, not a handful per parameter
(on a GPU each pass is one kernel). Where the backend has a fused kernel for the update (the CPU's,
minivae/kernels/cpu.py) it does the same operations in one pass. On the CPU the flat arrays are cut
into one block per thread (``Backend.split_rows``), each block updated by its own thread: the update
is elementwise, so the result does not depend on the number of threads. Measured on 2 CPU cores and
not kept: cache-sized chunks (slower: per-call overhead dominates).
"""

import math

from .layers import ParameterBuffer


class Optimizer:
    """Shared parts: the flat buffers, the step count, the state_dict (which holds the moments
    exactly as stored, so that a checkpoint round trip is bit-exact)."""

    hyperparameter_names = ()
    moment_names = ()
    kernel_name = None  # the backend kernel that does ``_update`` in one pass, when it has one

    def __init__(self, parameters, backend=None):
        """parameters: a list of Parameters (``model.parameters()``); backend: needed only when
        they are not packed in a ParameterBuffer yet."""
        self.parameters = list(parameters)
        names = [p.name for p in self.parameters]
        if len(set(names)) != len(names):
            raise ValueError(f"parameter names must be unique, got {names}")
        if backend is None:
            if not self.parameters or self.parameters[0].buffer is None:
                raise ValueError("pass backend=... for parameters that are not packed in a ParameterBuffer")
            backend = self.parameters[0].buffer.backend
        self.buffer = ParameterBuffer.of(self.parameters, backend)
        self.backend = backend
        self.xp = backend.xp
        self.step_count = 0
        # The stretches of the model's one buffer that hold these parameters (one for the whole
        # model), and where each lies in this optimizer's own flat arrays (the moments, a scratch).
        self.segments = self.buffer.segments(self.parameters)
        lengths = [segment.stop - segment.start for segment in self.segments]
        self._offsets = [sum(lengths[:k]) for k in range(len(lengths))]
        total = sum(lengths)
        self._flat_moments = {kind: self.xp.zeros(total, dtype=backend.dtype) for kind in self.moment_names}
        self.moments = {kind: self._views(flat) for kind, flat in self._flat_moments.items()}
        self._scratch = self.xp.empty(total, dtype=backend.dtype)

    def _views(self, flat):
        """``{parameter name: view of flat (laid out like this optimizer's segments) shaped like it}``."""
        views = {}
        for p in self.parameters:
            where = self.buffer.slices[p.name]
            for segment, offset in zip(self.segments, self._offsets):
                if segment.start <= where.start < segment.stop:
                    start = offset + where.start - segment.start
                    views[p.name] = flat[start:start + where.stop - where.start].reshape(p.data.shape)
        return views

    def step(self):
        """One update of every parameter from its current gradient: eq. (19) for Adam, eq. (20) for SGD,
        by the backend's fused kernel when it has one (one pass), else by ``_update`` (the reference)."""
        self.step_count += 1
        fused = getattr(self.backend.kernels, self.kernel_name, None)
        for segment, offset in zip(self.segments, self._offsets):
            own = slice(offset, offset + segment.stop - segment.start)
            moments = [self._flat_moments[kind][own] for kind in self.moment_names]
            if fused is not None:
                fused(self.buffer.data[segment], self.buffer.grad[segment], *moments, self.step_count,
                      **self.hyperparameters())
            else:
                self.backend.split_rows(self._update, self.buffer.data[segment], self.buffer.grad[segment],
                                        self._scratch[own], *moments)

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
        for name, value in state["hyperparameters"].items():
            setattr(self, name, value)
        for kind, arrays in self.moments.items():
            for name, array in arrays.items():
                array[...] = state[kind][name]
        self.step_count = int(state["step"])


class Adam(Optimizer):
    """Adam with bias correction, as torch.optim.Adam (L2 weight decay added to the gradient)."""

    hyperparameter_names = ("lr", "beta1", "beta2", "eps", "weight_decay")
    moment_names = ("m", "v")
    kernel_name = "adam_update"

    def __init__(self, parameters, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, backend=None):
        super().__init__(parameters, backend)
        self.lr, (self.beta1, self.beta2), self.eps, self.weight_decay = lr, betas, eps, weight_decay

    def _update(self, theta, g, tmp, m, v):
        """Eq. (19): ``m <- b1 m + (1-b1) g``; ``v <- b2 v + (1-b2) g^2``;
        ``theta <- theta - lr * m_hat / (sqrt(v_hat) + eps)`` with ``m_hat = m / (1-b1^t)``,
        ``v_hat = v / (1-b2^t)``; the corrections go into scalars, ``lr m_hat = (lr / (1-b1^t)) m``
        and ``sqrt(v_hat) = sqrt(v) / sqrt(1-b2^t)``, as Kingma and Ba suggest (one division per
        element, not three). In place, through one scratch array."""
        xp, t = self.xp, self.step_count
        if self.weight_decay:
            g = g + self.weight_decay * theta
        m *= self.beta1
        xp.multiply(g, 1 - self.beta1, out=tmp)
        m += tmp
        v *= self.beta2
        xp.multiply(g, g, out=tmp)
        tmp *= 1 - self.beta2
        v += tmp
        xp.sqrt(v, out=tmp)
        tmp *= 1 / math.sqrt(1 - self.beta2 ** t)
        tmp += self.eps  # sqrt(v_hat) + eps
        xp.divide(m, tmp, out=tmp)
        tmp *= self.lr / (1 - self.beta1 ** t)
        theta -= tmp


class SGD(Optimizer):
    """Stochastic gradient descent with (optional) momentum, as torch.optim.SGD."""

    hyperparameter_names = ("lr", "momentum", "weight_decay")
    moment_names = ("momentum_buffer",)
    kernel_name = "sgd_update"

    def __init__(self, parameters, lr=1e-2, momentum=0.0, weight_decay=0.0, backend=None):
        super().__init__(parameters, backend)
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay

    def _update(self, theta, g, tmp, buf):
        """Eq. (20): ``buf <- momentum * buf + g`` (buf = g at the first step);
        ``theta <- theta - lr * buf``; without momentum ``theta <- theta - lr * g``."""
        if self.weight_decay:
            g = g + self.weight_decay * theta
        if self.momentum:
            if self.step_count == 1:
                buf[...] = g
            else:
                buf *= self.momentum
                buf += g
            g = buf
        self.xp.multiply(g, self.lr, out=tmp)
        theta -= tmp
