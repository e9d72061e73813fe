"""Optimizers: Adam with bias correction (eq. (19)) and SGD with momentum (eq. (20)).

Both update ``parameter.data`` in place from ``parameter.grad``. Their state is keyed by each
parameter's qualified name (``encoder.0.W``), never by ``id()``, so it survives device moves and
serialises into checkpoints.
"""

import math


class Optimizer:
    """Shared parts: the parameter list, the step count and the state_dict format."""

    hyperparameter_names = ()
    moment_names = ()

    def __init__(self, parameters):
        self.parameters = list(parameters)
        names = [p.name for p in self.parameters]
        if len(set(names)) != len(names):
            raise ValueError(f"parameter names must be unique, got {names}")
        self.step_count = 0
        self.moments = {kind: {p.name: p.data * 0 for p in self.parameters} for kind in self.moment_names}

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


class Adam(Optimizer):
    """Adam with bias correction, as torch.optim.Adam (L2 weight decay added to the gradient)."""

    hyperparameter_names = ("lr", "beta1", "beta2", "eps", "weight_decay")
    moment_names = ("m", "v")

    def __init__(self, parameters, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(parameters)
        self.lr, (self.beta1, self.beta2), self.eps, self.weight_decay = lr, betas, eps, weight_decay

    def step(self):
        """Eq. (19): ``m <- b1 m + (1-b1) g``; ``v <- b2 v + (1-b2) g^2``;
        ``theta <- theta - lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)``."""
        self.step_count += 1
        t = self.step_count
        step_size = self.lr / (1 - self.beta1 ** t)
        sqrt_correction2 = math.sqrt(1 - self.beta2 ** t)
        m_all, v_all = self.moments["m"], self.moments["v"]
        for p in self.parameters:
            g = p.grad if not self.weight_decay else p.grad + self.weight_decay * p.data
            m, v = m_all[p.name], v_all[p.name]
            m *= self.beta1
            m += (1 - self.beta1) * g
            v *= self.beta2
            v += (1 - self.beta2) * (g * g)
            denom = v ** 0.5
            denom /= sqrt_correction2
            denom += self.eps
            p.data -= step_size * (m / denom)


class SGD(Optimizer):
    """Stochastic gradient descent with (optional) momentum, as torch.optim.SGD."""

    hyperparameter_names = ("lr", "momentum", "weight_decay")
    moment_names = ("momentum_buffer",)

    def __init__(self, parameters, lr=1e-2, momentum=0.0, weight_decay=0.0):
        super().__init__(parameters)
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay

    def step(self):
        """Eq. (20): ``buf <- momentum * buf + g`` (buf = g at the first step); ``theta <- theta - lr * buf``."""
        self.step_count += 1
        buffers = self.moments["momentum_buffer"]
        for p in self.parameters:
            g = p.grad if not self.weight_decay else p.grad + self.weight_decay * p.data
            if not self.momentum:
                p.data -= self.lr * g
                continue
            buf = buffers[p.name]
            if self.step_count == 1:
                buf[...] = g
            else:
                buf *= self.momentum
                buf += g
            p.data -= self.lr * buf
