"""Layers with hand-written forward and backward passes.

Conventions (docs/derivation.md, "Notation"):
- Batches are row-major: ``x`` has shape (B, features). ``Linear`` computes ``y = x @ W + b`` with
  ``W`` of shape (in, out).
- ``forward(x)`` stores on the layer exactly what ``backward`` needs (its cache, one slot,
  overwritten by the next ``forward``). ``backward`` before any ``forward`` raises.
- ``backward(dy)`` returns ``dx = dLoss/dx`` and **overwrites** (never accumulates) each of the
  layer's parameter gradients, in place, so ``parameter.grad`` stays the same array object.
- No operation changes the dtype it is given, and no forward or backward mutates its arguments.
"""

import math


class Parameter:
    """A trainable array with its gradient and its qualified name (e.g. ``encoder.0.W``).

    Once packed into a ``ParameterBuffer``, ``data`` and ``grad`` are views into its flat arrays
    and ``buffer`` points to it. They are never rebound: assigning ``p.data = values`` (or
    ``p.grad``) copies the values into the array that is there, so the buffer and every optimizer
    built on it keep seeing them; values of another shape, or complex ones, are refused.
    """

    __slots__ = ("name", "_data", "_grad", "buffer")

    def __init__(self, name, data):
        self.name = name
        self._data = data
        self._grad = data * 0
        self.buffer = None

    @property
    def data(self):
        return self._data

    @data.setter
    def data(self, values):
        self._copy_into(self._data, values, "data")

    @property
    def grad(self):
        return self._grad

    @grad.setter
    def grad(self, values):
        self._copy_into(self._grad, values, "grad")

    def _copy_into(self, array, values, what):
        shape = tuple(getattr(values, "shape", ()))
        if shape != tuple(array.shape):
            raise ValueError(f"parameter {self.name}: cannot assign {what} of shape {shape}; it holds shape "
                             f"{tuple(array.shape)} (values are copied into it, never rebound)")
        if getattr(getattr(values, "dtype", None), "kind", "f") not in "fiub":
            raise TypeError(f"parameter {self.name}: cannot assign {what} of dtype {values.dtype}; give real numbers")
        array[...] = values

    def _rebind(self, data, grad):
        """Point ``data`` and ``grad`` at new arrays holding the same values (``ParameterBuffer`` only)."""
        self._data, self._grad = data, grad

    def __repr__(self):
        return f"Parameter({self.name!r}, shape={tuple(self.data.shape)}, dtype={self.data.dtype})"


class ParameterBuffer:
    """Parameters packed into two contiguous 1-D arrays, ``data`` and ``grad``: each Parameter's
    ``data`` and ``grad`` become views into them (values kept), so that an optimizer can update the
    whole model in a few passes over memory instead of a few per parameter.

    A parameter is packed once: every optimizer of it works on this one buffer (``of``), so
    ``model.buffer`` always holds the values being trained.
    """

    def __init__(self, parameters, backend):
        self.parameters = list(parameters)
        self.backend = backend
        total = sum(int(p.data.size) for p in self.parameters)
        self.data = backend.xp.empty(total, dtype=backend.dtype)
        self.grad = backend.xp.zeros(total, dtype=backend.dtype)
        self.slices = {}
        offset = 0
        for p in self.parameters:
            if p.buffer is not None:
                raise ValueError(f"parameter {p.name} is packed in a ParameterBuffer already; pack it once")
            shape, size = p.data.shape, int(p.data.size)
            self.slices[p.name] = slice(offset, offset + size)
            self.data[offset:offset + size] = p.data.reshape(-1)
            self.grad[offset:offset + size] = p.grad.reshape(-1)
            p._rebind(self.data[offset:offset + size].reshape(shape), self.grad[offset:offset + size].reshape(shape))
            p.buffer = self
            offset += size

    @classmethod
    def of(cls, parameters, backend):
        """The one buffer that holds all of ``parameters`` (any subset of it, in any order), or a new
        buffer when none of them is packed yet. Parameters spread over several buffers, or partly
        packed, are refused: nothing is ever packed twice."""
        parameters = list(parameters)
        if not parameters:
            raise ValueError("no parameters given")
        buffers = {id(p.buffer): p.buffer for p in parameters}
        if len(buffers) == 1 and parameters[0].buffer is not None:
            return parameters[0].buffer
        if len(buffers) > 1:
            raise ValueError("these parameters are not all packed in one ParameterBuffer (they come from several "
                             "models, or only some are packed); build an optimizer from one model's parameters")
        return cls(parameters, backend)

    def segments(self, parameters):
        """The contiguous stretches of the flat arrays that hold exactly ``parameters``, as slices in
        the order of the buffer (one slice for all of the buffer's parameters)."""
        spans = sorted((self.slices[p.name].start, self.slices[p.name].stop) for p in parameters)
        merged = []
        for start, stop in spans:
            if merged and merged[-1][1] == start:
                merged[-1][1] = stop
            else:
                merged.append([start, stop])
        return [slice(start, stop) for start, stop in merged]


class Layer:
    """Base class: a layer has a name, parameters (maybe none), forward and backward."""

    def __init__(self, name=""):
        self.name = name
        self._cache = None

    def parameters(self):
        return []

    def _saved(self):
        """The cache written by the last forward; raises if backward is called before forward."""
        if self._cache is None:
            raise RuntimeError(f"{type(self).__name__} {self.name!r}: backward called before forward")
        return self._cache

    def __call__(self, x):
        return self.forward(x)


class Linear(Layer):
    """Affine map ``y = x W + b`` (eq. (4), (6)); x: (B, in), W: (in, out), b: (out,), y: (B, out).

    Initialised as PyTorch's ``nn.Linear``: W and b uniform in [-1/sqrt(in), 1/sqrt(in)].
    ``needs_input_grad = False`` skips ``dx`` (for the first layer, whose input is the data).
    ``forward_relu`` and ``backward_relu`` are this layer and the ReLU after it, run as one by the
    backend's fused kernels (``Sequential`` uses them where the backend has them: the CPU's).
    """

    def __init__(self, in_features, out_features, backend, name=""):
        super().__init__(name)
        self.xp = backend.xp
        # the CPU's fused kernels for this layer with a ReLU after it (minivae/kernels/cpu.py), or None
        self.bias_relu = getattr(backend.kernels, "bias_relu", None)
        self.relu_backward_column_sums = getattr(backend.kernels, "relu_backward_column_sums", None)
        bound = 1.0 / math.sqrt(in_features)
        W = (backend.uniform((in_features, out_features)) * 2 - 1) * bound
        b = (backend.uniform((out_features,)) * 2 - 1) * bound
        self.W = Parameter(f"{name}.W", W)
        self.b = Parameter(f"{name}.b", b)
        self.needs_input_grad = True

    def parameters(self):
        return [self.W, self.b]

    def forward(self, x):
        self._cache = x
        y = x @ self.W.data
        y += self.b.data  # in place: one pass, no second (B, out) array
        return y

    def backward(self, dy):
        """Eq. (12): ``dW = x^T dy``, ``db = sum_rows dy``, ``dx = dy W^T``.

        dy: (B, out) -> dx: (B, in), or None when ``needs_input_grad`` is False.
        """
        dy.sum(axis=0, out=self.b.grad)  # db = sum_rows dy
        return self._weight_and_input_grads(dy)

    def fuses(self, layer):
        """Whether ``forward_relu``/``backward_relu`` can run this layer and ``layer`` after it as one:
        ``layer`` is a ReLU, the backend has the fused kernels, and the ReLU's forward and backward are
        its class's (one replaced on the instance, as the recorder of gradcheck's
        ``smallest_relu_inputs``, is called: the pair then runs unfused)."""
        return (isinstance(layer, ReLU) and self.bias_relu is not None and self.relu_backward_column_sums is not None
                and "forward" not in vars(layer) and "backward" not in vars(layer))

    def forward_relu(self, x, relu):
        """``a = relu(x W + b)``, eq. (4), (6) and the ReLU: the product, then the bias and the ReLU in
        one pass (the kernel ``bias_relu``). Caches x here and a on ``relu``, as the two forwards would."""
        self._cache = x
        a = self.bias_relu(x @ self.W.data, self.b.data)
        relu._cache = a
        return a

    def backward_relu(self, da, relu):
        """Eq. (13) then eq. (12): ``dy = da * [a > 0]``; ``dW = x^T dy``, ``db = sum_rows dy``,
        ``dx = dy W^T``. dy and db come from one pass (the kernel ``relu_backward_column_sums``), the
        products as in ``backward``. da: (B, out) -> dx: (B, in), or None as ``backward``."""
        dy = self.relu_backward_column_sums(da, relu._saved(), self.b.grad)  # dy, and db = sum_rows dy
        return self._weight_and_input_grads(dy)

    def _weight_and_input_grads(self, dy):
        """Eq. (12)'s products: ``dW = x^T dy`` into W's gradient; returns ``dx = dy W^T`` (or None)."""
        x = self._saved()
        self.xp.matmul(x.T, dy, out=self.W.grad)  # dW = x^T dy
        if not self.needs_input_grad:
            return None
        return dy @ self.W.data.T  # dx = dy W^T


class ReLU(Layer):
    """``y = max(x, 0)`` elementwise. ``kernels``: the backend's fused kernels; where they have
    ``relu`` and ``relu_backward`` (the CPU's), each pass below runs as one."""

    def __init__(self, name="", kernels=None):
        super().__init__(name)
        self.kernels = kernels

    def forward(self, x):
        fused = getattr(self.kernels, "relu", None)
        y = fused(x) if fused is not None else x * (x > 0)
        self._cache = y
        return y

    def backward(self, dy):
        """Eq. (13): ``dx = dy * [x > 0]`` (the subgradient at 0 is taken as 0); uses the saved y,
        which is positive exactly where x is."""
        y = self._saved()
        fused = getattr(self.kernels, "relu_backward", None)
        return fused(dy, y) if fused is not None else dy * (y > 0)


class Tanh(Layer):
    """``y = tanh(x)`` elementwise."""

    def __init__(self, backend, name=""):
        super().__init__(name)
        self.xp = backend.xp

    def forward(self, x):
        y = self.xp.tanh(x)
        self._cache = y
        return y

    def backward(self, dy):
        """Eq. (14): ``dx = dy * (1 - y^2)`` with the saved output y."""
        y = self._saved()
        return dy * (1 - y * y)


class Sigmoid(Layer):
    """``y = 1 / (1 + exp(-x))`` elementwise (computed by the backend's stable ``expit``)."""

    def __init__(self, backend, name=""):
        super().__init__(name)
        self.special = backend.special

    def forward(self, x):
        y = self.special.expit(x)
        self._cache = y
        return y

    def backward(self, dy):
        """Eq. (15): ``dx = dy * y * (1 - y)`` with the saved output y."""
        y = self._saved()
        return dy * y * (1 - y)


class Sequential(Layer):
    """Layers applied in order; backward runs them in reverse."""

    def __init__(self, layers, name=""):
        super().__init__(name)
        self.layers = list(layers)

    def parameters(self):
        return [p for layer in self.layers for p in layer.parameters()]

    def forward(self, x):
        for linear, layer in self._pieces():
            x = layer.forward(x) if linear is None else linear.forward_relu(x, layer)
        return x

    def backward(self, dy):
        """The chain rule: each layer's backward (eq. (12)-(15)) feeds the one before it."""
        for linear, layer in reversed(self._pieces()):
            dy = layer.backward(dy) if linear is None else linear.backward_relu(dy, layer)
        return dy

    def _pieces(self):
        """The layers in order as (None, layer), except a Linear followed by a ReLU it ``fuses``:
        (linear, relu), run as one by its ``forward_relu`` / ``backward_relu``."""
        pieces, i = [], 0
        while i < len(self.layers):
            layer, after = self.layers[i], self.layers[i + 1] if i + 1 < len(self.layers) else None
            if isinstance(layer, Linear) and layer.fuses(after):
                pieces.append((layer, after))
                i += 2
            else:
                pieces.append((None, layer))
                i += 1
        return pieces


ACTIVATIONS = ("relu", "tanh", "sigmoid")


def activation(kind, backend, name=""):
    """An activation layer by name: "relu", "tanh" or "sigmoid"."""
    if kind == "relu":
        return ReLU(name, backend.kernels)
    if kind == "tanh":
        return Tanh(backend, name)
    if kind == "sigmoid":
        return Sigmoid(backend, name)
    raise ValueError(f"unknown activation {kind!r}: choose one of {ACTIVATIONS}")


def mlp(sizes, activation_kind, backend, name):
    """A Sequential of Linear layers of the given sizes with an activation between them (none after
    the last). Layers are numbered like PyTorch's nn.Sequential: ``{name}.0`` is the first Linear."""
    layers = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        if layers:
            layers.append(activation(activation_kind, backend, f"{name}.{len(layers)}"))
        layers.append(Linear(n_in, n_out, backend, f"{name}.{len(layers)}"))
    return Sequential(layers, name)
