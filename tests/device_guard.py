"""A NumPy-backed stand-in for CuPy that refuses what CuPy refuses, so CI can prove without a GPU that
the device path never mixes host and device memory.

Device arrays are ``GuardArray`` objects wrapping a NumPy array. Like CuPy arrays they refuse:
- implicit conversion to NumPy (``np.asarray(a)``, ``np.exp(a)``, passing one to matplotlib, ...):
  ``__array__`` raises TypeError; the explicit ways are ``a.get()`` and ``backend.to_numpy(a)``;
- mixing with host arrays: an operation or ``xp`` function given a ``numpy.ndarray`` raises
  TypeError. The explicit way in is ``xp.asarray(host_array)`` (``backend.to_device``).
Python and NumPy scalars mix freely, and ``float()`` / ``bool()`` of a 0-d array work, as in CuPy.
Reductions return 0-d device arrays, as in CuPy.

Every call the device path makes through the guard (an ``xp`` or ``special`` function, a method of
the random generator or of an array) is recorded in ``CALLS``, so that the cuda-check tests can check
each one against the installed CuPy.
"""

import collections
import operator
import os
import sys
import types

import numpy as np
import scipy.special

from minivae.backend import Backend, get_backend

# Every explicit copy between host and device, counted, so a test can bound them.
TRANSFERS = collections.Counter()
# Every call made through the guard: (namespace, name, number of positional arguments, keyword
# names, "file:line" of the caller); namespace is "xp", "special", "rng" (the random generator),
# "array" (an array method) or "kernels" (a fused kernel).
CALLS = set()


def _record(namespace, name, args, kwargs):
    caller = sys._getframe(2)  # the code that called the guard's function or method
    where = f"{os.path.basename(caller.f_code.co_filename)}:{caller.f_lineno}"
    CALLS.add((namespace, name, len(args), tuple(sorted(kwargs)), where))


class GuardArray:
    """A device array: a NumPy array that may only meet other device arrays."""

    __slots__ = ("_array",)
    __array_priority__ = 1000

    def __init__(self, array):
        self._array = array

    def __array__(self, dtype=None, copy=None):
        raise TypeError("Implicit conversion of a device array to a NumPy array is not allowed; use .get()")

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        raise TypeError(f"NumPy ufunc {ufunc.__name__} applied to a device array: use the backend's xp")

    def __array_function__(self, func, types, args, kwargs):
        raise TypeError(f"NumPy function {func.__name__} applied to a device array: use the backend's xp")

    def get(self):
        """The explicit device -> host copy."""
        _record("array", "get", (), {})
        TRANSFERS["to_host"] += 1
        return self._array.copy()

    # shape and metadata
    shape = property(lambda self: self._array.shape)
    dtype = property(lambda self: self._array.dtype)
    size = property(lambda self: self._array.size)
    ndim = property(lambda self: self._array.ndim)
    flags = property(lambda self: self._array.flags)
    strides = property(lambda self: self._array.strides)  # in bytes, as CuPy's
    T = property(lambda self: GuardArray(self._array.T))

    def __len__(self):
        return len(self._array)

    def __repr__(self):
        return f"GuardArray({self._array!r})"

    # host scalars, explicitly (CuPy allows these on 0-d arrays)
    def __float__(self):
        TRANSFERS["to_host"] += 1
        return float(self._array)

    def __int__(self):
        TRANSFERS["to_host"] += 1
        return int(self._array)

    def __bool__(self):
        TRANSFERS["to_host"] += 1
        return bool(self._array)

    def __index__(self):
        return operator.index(self._array)

    def item(self):
        _record("array", "item", (), {})
        return self._array.item()

    # indexing
    def __getitem__(self, key):
        return _wrap(self._array[_unwrap_key(key)])

    def __setitem__(self, key, value):
        self._array[_unwrap_key(key)] = _unwrap(value)

    def __iter__(self):
        return (_wrap(row) for row in self._array)

    def __getattr__(self, name):
        """Methods (reshape, sum, copy, astype, mean, min, max, ravel, all, any, ...): unwrap the
        arguments, wrap the results."""
        attribute = getattr(self._array, name)
        if not callable(attribute):
            raise AttributeError(name)

        def method(*args, **kwargs):
            _record("array", name, args, kwargs)
            return _wrap(attribute(*_unwrap_all(args), **{k: _unwrap(v) for k, v in kwargs.items()}))

        return method


def _binary(op):
    def forward(self, other):
        return _wrap(op(self._array, _unwrap(other)))

    def reflected(self, other):
        return _wrap(op(_unwrap(other), self._array))

    return forward, reflected


def _inplace(op):
    def method(self, other):
        op(self._array, _unwrap(other))
        return self

    return method


for _name, _op, _iop in [("add", operator.add, operator.iadd), ("sub", operator.sub, operator.isub),
                         ("mul", operator.mul, operator.imul), ("truediv", operator.truediv, operator.itruediv),
                         ("pow", operator.pow, operator.ipow), ("matmul", operator.matmul, operator.imatmul)]:
    _forward, _reflected = _binary(_op)
    setattr(GuardArray, f"__{_name}__", _forward)
    setattr(GuardArray, f"__r{_name}__", _reflected)
    setattr(GuardArray, f"__i{_name}__", _inplace(_iop))
for _name, _op in [("lt", operator.lt), ("le", operator.le), ("gt", operator.gt), ("ge", operator.ge),
                   ("eq", operator.eq), ("ne", operator.ne), ("and", operator.and_), ("or", operator.or_)]:
    setattr(GuardArray, f"__{_name}__", _binary(_op)[0])
GuardArray.__neg__ = lambda self: GuardArray(-self._array)
GuardArray.__abs__ = lambda self: GuardArray(abs(self._array))
GuardArray.__invert__ = lambda self: GuardArray(~self._array)
GuardArray.__hash__ = None


def _unwrap(value):
    if isinstance(value, GuardArray):
        return value._array
    if isinstance(value, np.ndarray):
        raise TypeError("a host (NumPy) array met a device array: move it with backend.to_device first")
    if isinstance(value, tuple):
        return tuple(_unwrap(v) for v in value)
    if isinstance(value, list):
        return [_unwrap(v) for v in value]
    return value


def _unwrap_all(values):
    return [_unwrap(v) for v in values]


def _unwrap_key(key):
    if isinstance(key, tuple):
        return tuple(_unwrap(k) for k in key)
    return _unwrap(key)


def _wrap(value):
    if isinstance(value, np.ndarray):
        return GuardArray(value)
    if isinstance(value, np.generic):  # reductions give 0-d device arrays, as in CuPy
        return GuardArray(np.asarray(value))
    if isinstance(value, tuple):
        return tuple(_wrap(v) for v in value)
    if isinstance(value, list):
        return [_wrap(v) for v in value]
    return value


def _device_function(function, namespace, name):
    """``function`` on device arrays, recorded as ``namespace.name`` (how the code reaches it)."""
    def call(*args, **kwargs):
        _record(namespace, name, args, kwargs)
        return _wrap(function(*_unwrap_all(args), **{k: _unwrap(v) for k, v in kwargs.items()}))

    call.__name__ = name
    return call


def _to_device(array, dtype=None):
    """The explicit host -> device copy (``cupy.asarray``)."""
    _record("xp", "asarray", (array,), {} if dtype is None else {"dtype": dtype})
    TRANSFERS["to_device"] += 1
    if isinstance(array, GuardArray):
        return GuardArray(array._array.astype(dtype, copy=False)) if dtype is not None else array
    return GuardArray(np.array(array, dtype=dtype, copy=True))


class _GuardGenerator:
    """numpy's Generator, handing out device arrays."""

    def __init__(self, seed):
        self._generator = np.random.default_rng(seed)
        self.bit_generator = self._generator.bit_generator

    def standard_normal(self, size=None, dtype=np.float64):
        _record("rng", "standard_normal", (size,), {"dtype": dtype})
        return _wrap(self._generator.standard_normal(size, dtype=dtype))

    def random(self, size=None, dtype=np.float64):
        _record("rng", "random", (size,), {"dtype": dtype})
        return _wrap(self._generator.random(size, dtype=dtype))


def _module():
    xp = types.SimpleNamespace()
    for name in ("abs", "exp", "log", "log1p", "sqrt", "tanh", "maximum", "minimum", "multiply", "divide", "add",
                 "subtract", "matmul", "where", "concatenate", "stack", "tile", "argsort", "zeros", "ones", "empty",
                 "zeros_like", "empty_like", "ones_like", "isfinite", "isnan", "broadcast_to", "arange", "full",
                 "logaddexp", "expm1", "sign", "linspace", "sum", "mean", "max", "min", "all", "any", "square",
                 "ascontiguousarray"):
        setattr(xp, name, _device_function(getattr(np, name), "xp", name))
    xp.asarray = _to_device
    xp.dtype = np.dtype
    xp.result_type = np.result_type  # of dtypes: no array data involved
    xp.float32, xp.float64 = np.float32, np.float64
    xp.ndarray = GuardArray
    xp.random = types.SimpleNamespace(default_rng=_GuardGenerator)
    xp.linalg = types.SimpleNamespace(norm=_device_function(np.linalg.norm, "xp", "linalg.norm"))
    xp.lib = types.SimpleNamespace(stride_tricks=types.SimpleNamespace(as_strided=_device_function(
        np.lib.stride_tricks.as_strided, "xp", "lib.stride_tricks.as_strided")))
    special = types.SimpleNamespace(expit=_device_function(scipy.special.expit, "special", "expit"),
                                    logsumexp=_device_function(scipy.special.logsumexp, "special", "logsumexp"))
    return xp, special


def _elementwise_kernel(name, body):
    """Mimic the CuPy ElementwiseKernel ``name``: broadcast the device inputs, run ``body`` on NumPy arrays."""
    def kernel(*inputs):
        _record("kernels", name, inputs, {})
        return _wrap(body(*np.broadcast_arrays(*_unwrap_all(inputs))))

    kernel._body = body
    return kernel


def _gather_kernel(name, body):
    """Mimic the CuPy ElementwiseKernel ``name`` whose inputs are ``raw`` arrays and Python ints, called
    with its output array last: ``body`` computes the output's elements (flat) from the host arrays,
    which are written into that array. Like the CUDA kernel's flat indexing, it takes C-contiguous
    arrays only."""
    def kernel(*args):
        _record("kernels", name, args, {})
        *inputs, out = args
        arrays = [_unwrap(a) for a in inputs if isinstance(a, GuardArray)] + [_unwrap(out)]
        if not all(a.flags.c_contiguous for a in arrays):
            raise ValueError(f"{name}: its raw arrays are indexed as flat C-contiguous memory; pass contiguous ones")
        if not all(isinstance(a, (int, np.integer)) for a in inputs if not isinstance(a, GuardArray)):
            raise TypeError(f"{name}: its scalars are int32 parameters; pass Python ints")
        _unwrap(out).reshape(-1)[...] = body(*_unwrap_all(inputs))
        return out

    kernel._body = body
    return kernel


def _col2im_gather(cols, B, C, H, W, KH, KW, OH, OW, S, P):
    """``col2im_gather`` of minivae.kernels.cuda: its index arithmetic on NumPy index arrays, one entry
    per pixel of the pixel-major (H, W, B, C) image, the kernel offsets summed in its loops' order."""
    i = np.arange(H * W * B * C)
    c, r = i % C, i // C
    b, r = r % B, r // B
    w, h = r % W, r // W
    flat, total = cols.reshape(-1), np.zeros(i.shape, cols.dtype)
    for ki in range(KH):
        hu = h + P - ki
        for kj in range(KW):
            wv = w + P - kj
            read = (hu >= 0) & (hu % S == 0) & (hu // S < OH) & (wv >= 0) & (wv % S == 0) & (wv // S < OW)
            index = ((((hu // S) * OW + wv // S) * B + b) * KH + ki) * KW * C + kj * C + c
            total[read] += flat[index[read]]
    return total


def _bernoulli_nll_and_grad(l, x):
    a = np.abs(l)
    softplus = np.maximum(l, 0) + np.log1p(np.exp(-a))
    return softplus - x * l, np.exp(l - softplus) - x


def _head_gradient(dz_sum, dz_eps_sum, mu, logvar):
    return dz_sum + mu, dz_eps_sum * 0.5 * np.exp(0.5 * logvar) + 0.5 * (np.exp(logvar) - 1)


def guard_kernels():
    """The kernels of ``minivae.kernels.cuda``, same names, signatures and formulas, on the
    guard's arrays: so CI runs the code that dispatches to fused kernels and reduces their output."""
    bodies = {
        "bernoulli_nll_and_grad": _bernoulli_nll_and_grad,
        "reparameterize": lambda mu, logvar, eps: mu + eps * np.exp(0.5 * logvar),
        "kl_terms": lambda mu, logvar: -0.5 * (1 + logvar - mu * mu - np.exp(logvar)),
        "head_gradient": _head_gradient,
    }
    kernels = {name: _elementwise_kernel(name, body) for name, body in bodies.items()}
    kernels["col2im_gather"] = _gather_kernel("col2im_gather", _col2im_gather)
    return types.SimpleNamespace(**kernels)


class GuardBackend(Backend):
    """A Backend whose arrays behave like CuPy's in what they refuse; its random stream equals the
    NumPy backend's for the same seed, so results can be compared with a NumPy run. With
    ``fused=True`` it also takes CuPy's fused-kernel path (``guard_kernels``)."""

    def __init__(self, dtype="float32", seed=0, fused=False):
        xp, special = _module()
        super().__init__("device-guard", xp, special, dtype=dtype, seed=seed,
                         kernels=guard_kernels() if fused else None)

    def with_seed(self, seed):
        return GuardBackend(self.dtype.name, seed, fused=self.kernels is not None)


def backend_by_name(name):
    """``make(dtype="float64", seed=0)``: a new backend of that name (numpy, device-guard,
    device-guard-fused or cupy); ``make.name`` is the name."""

    def make(dtype="float64", seed=0):
        if name.startswith("device-guard"):
            return GuardBackend(dtype=dtype, seed=seed, fused=name.endswith("fused"))
        return get_backend(name, dtype=dtype, seed=seed)

    make.name = name
    return make
