"""A VAE's weights as a safetensors file, named and laid out as PyTorch's modules name them.

safetensors is the framework-neutral weight format (PyTorch, JAX and NumPy read it): a JSON header
(tensor names, dtypes, shapes, and string metadata) followed by the raw arrays; nothing in it executes.

Names. An MLP with one hidden layer on each side (the default 784-400-20) takes the names of the classic
PyTorch example's ``VAE``: ``fc1`` (x -> h), ``fc21`` (h -> mu), ``fc22`` (h -> logvar), ``fc3``
(z -> h), ``fc4`` (h -> the decoder's output), each ``.weight`` and ``.bias``. minivae's encoder head
is ONE Linear with 2J outputs ``[mu | logvar]`` (eq. (4)), so ``fc21`` and ``fc22`` are its two halves.
Every other model (more or fewer hidden layers, the conv architecture) takes the names of an
``nn.Sequential`` ``encoder`` and ``decoder`` with minivae's own layer indices (``encoder.0.weight``;
the head stays one Linear of 2J outputs, split with ``.chunk(2, dim=1)``). README.md gives both
PyTorch modules.

Layouts. ``Linear`` computes ``y = x W + b`` with W (in, out) (eq. (4), (6)); PyTorch's ``nn.Linear``
computes ``y = x weight^T + bias`` with weight (out, in): so ``weight = W^T``. Conv2d and
ConvTranspose2d already hold PyTorch's layouts (minivae/conv.py) and are written as they are.

Metadata (strings only, as safetensors requires): ``minivae.config`` (the model's config, JSON),
``minivae.dtype``, ``minivae.names`` ("pytorch-example" or "sequential"), ``minivae.version`` and,
when known, ``minivae.run`` (the run's config.json, JSON). A file without ``minivae.config`` (one that
PyTorch wrote) is read when it holds the example's names: its config comes from the shapes (relu,
Bernoulli likelihood, as in the example).

Reading checks the header first, then every value, and refuses a file that does not fit (a missing
or extra tensor, a wrong shape or dtype, a non-finite value) with a CheckpointError naming the
tensor, before any model is built. Host side only (NumPy).
"""

import json
import os
from collections import namedtuple

import numpy as np
import safetensors.numpy
from safetensors import SafetensorError, safe_open

from . import checks
from .version import __version__
from .backend import get_backend
from .conv import KERNEL, check_image_shape
from .errors import CheckpointError
from .fileio import atomic_write
from .likelihoods import LEARNED
from .model import VAE
from .settings import MODEL_RULES

SUFFIX = ".safetensors"
EXAMPLE_NAMES, SEQUENTIAL_NAMES = "pytorch-example", "sequential"
META_CONFIG, META_DTYPE, META_NAMES = "minivae.config", "minivae.dtype", "minivae.names"
META_VERSION, META_RUN = "minivae.version", "minivae.run"
REQUIRED_FIELDS = ("input_dim", "hidden", "latent_dim", "decoder_hidden", "activation", "likelihood")
FILE_DTYPES = {"F32": "float32", "F64": "float64"}  # the header's dtype codes minivae computes in

Tensor = namedtuple("Tensor", "name shape param transpose columns")
Tensor.__doc__ = """One tensor of the file: its ``name`` and ``shape`` there; the minivae Parameter
``param`` it comes from; ``transpose`` when it is a Linear weight (``weight = W^T``); ``columns``:
(start, stop, total) when it is a stretch of the parameter's last axis (fc21, fc22: the halves of the
head), else None."""


# --------------------------------------------------------------------------------------------------
# names and shapes


def uses_example_names(config):
    """True for an MLP with exactly one hidden layer on each side: the classic example's shape."""
    return config.get("architecture", "mlp") == "mlp" and len(config["hidden"]) == len(config["decoder_hidden"]) == 1


def layout(config, example_names=None):
    """The tensors of a file for a model of ``config`` (``VAE.config``), in order, from the config
    alone (nothing is built). ``example_names``: use fc1 ... fc4 (default: ``uses_example_names``)."""
    if example_names is None:
        example_names = uses_example_names(config)
    latent = config["latent_dim"]
    outputs = config["input_dim"] * (2 if config["likelihood"] == "gaussian" and config["variance"] == LEARNED else 1)
    if config.get("architecture", "mlp") == "conv":
        return _conv_layout(config, latent, outputs // config["input_dim"])
    encoder = [config["input_dim"], *config["hidden"], 2 * latent]
    decoder = [latent, *config["decoder_hidden"], outputs]
    if example_names:
        (hidden,), (decoder_hidden,) = config["hidden"], config["decoder_hidden"]
        return (_linear("fc1", "encoder.0", config["input_dim"], hidden)
                + _linear("fc21", "encoder.2", hidden, latent, (0, latent, 2 * latent))
                + _linear("fc22", "encoder.2", hidden, latent, (latent, 2 * latent, 2 * latent))
                + _linear("fc3", "decoder.0", latent, decoder_hidden)
                + _linear("fc4", "decoder.2", decoder_hidden, outputs))
    tensors = []
    for side, sizes in (("encoder", encoder), ("decoder", decoder)):
        for k, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            tensors += _linear(f"{side}.{2 * k}", f"{side}.{2 * k}", n_in, n_out)
    return tensors


def _conv_layout(config, latent, out_channels):
    """The conv VAE's layers (minivae/conv.py) at their nn.Sequential indices."""
    height, width = check_image_shape(config["image_shape"])
    c1, c2 = config["channels"]
    features = c2 * (height // 4) * (width // 4)
    return (_conv("encoder.1", (c1, 1, KERNEL, KERNEL), c1) + _conv("encoder.3", (c2, c1, KERNEL, KERNEL), c2)
            + _linear("encoder.6", "encoder.6", features, 2 * latent) + _linear("decoder.0", "decoder.0", latent, features)
            + _conv("decoder.3", (c2, c1, KERNEL, KERNEL), c1)
            + _conv("decoder.5", (c1, out_channels, KERNEL, KERNEL), out_channels))


def _linear(name, layer, n_in, n_out, columns=None):
    return [Tensor(f"{name}.weight", (n_out, n_in), f"{layer}.W", True, columns),
            Tensor(f"{name}.bias", (n_out,), f"{layer}.b", False, columns)]


def _conv(name, weight_shape, out_channels):
    """Conv2d weight (out, in, kh, kw), ConvTranspose2d weight (in, out, kh, kw): as they are."""
    return [Tensor(f"{name}.weight", tuple(weight_shape), f"{name}.W", False, None),
            Tensor(f"{name}.bias", (out_channels,), f"{name}.b", False, None)]


def state_dict(model):
    """``{name: array}`` of the file for ``model``: host arrays in its dtype, C-contiguous, in layout order."""
    params = {p.name: model.backend.to_numpy(p.data) for p in model.parameters()}
    tensors = layout(model.config)
    if {t.param for t in tensors} != set(params):
        raise AssertionError(f"safetensors layout {sorted({t.param for t in tensors})} misses parameters {sorted(params)}")
    arrays = {}
    for t in tensors:
        array = params[t.param]
        if t.columns is not None:
            array = array[..., t.columns[0]:t.columns[1]]
        arrays[t.name] = np.ascontiguousarray(array.T if t.transpose else array)
    return arrays


# --------------------------------------------------------------------------------------------------
# write


def save_safetensors(model, path, run_settings=None):
    """Write ``model``'s weights to ``path`` (safetensors, atomically), its config, dtype, naming scheme,
    the minivae version and ``run_settings`` (a run's config.json, when given) in the metadata."""
    path = os.fspath(path)
    metadata = {META_CONFIG: json.dumps(model.config), META_DTYPE: model.backend.dtype.name,
                META_NAMES: EXAMPLE_NAMES if uses_example_names(model.config) else SEQUENTIAL_NAMES,
                META_VERSION: __version__}
    if run_settings is not None:
        metadata[META_RUN] = json.dumps(run_settings)
    data = safetensors.numpy.save(state_dict(model), metadata=metadata)
    try:
        with atomic_write(path, "wb") as handle:
            handle.write(data)
    except OSError as exc:
        raise CheckpointError(f"cannot write {path}: {exc}; check that the folder exists, is writable and "
                              f"has free space") from exc
    return len(data)


# --------------------------------------------------------------------------------------------------
# read


def read_weights(path, config=None, fix=None):
    """Read and check a safetensors file. ``config``: the model it must fit (default: the file's own,
    from its metadata, or from the example's shapes when it has none); ``fix``: what a refusal of a
    tensor's name or shape tells the user to do (default: export the file again).

    Returns ``(config, dtype, params)``: the config, "float32" or "float64", and ``{minivae parameter
    name: NumPy array}`` in minivae's layouts. Raises CheckpointError naming the file and the tensor
    (or metadata field) for a file that cannot be read or does not fit.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such safetensors file; pass a file written by python -m minivae.export "
                              f"(or by safetensors.torch.save_file)")
    try:
        with safe_open(path, framework="np") as handle:
            metadata = handle.metadata() or {}
            header = {name: (tuple(handle.get_slice(name).get_shape()), handle.get_slice(name).get_dtype())
                      for name in handle.keys()}
            from_shapes = config is None and META_CONFIG not in metadata
            if config is None:
                config = _file_config(path, metadata, header)
            example_names = uses_example_names(config) and "fc1.weight" in header
            tensors = layout(config, example_names)
            dtype = _check_header(path, header, tensors, metadata.get(META_DTYPE), from_shapes, fix)
            arrays = {t.name: handle.get_tensor(t.name) for t in tensors}
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({' '.join(str(exc).split())}); "
                              f"export the run again with python -m minivae.export") from exc
    return config, dtype, _params(path, tensors, arrays)


def _file_config(path, metadata, header):
    """The model config of the file: its ``minivae.config`` metadata, checked, or the example's shapes."""
    if META_CONFIG not in metadata:
        return _config_from_shapes(path, header)
    try:
        config = json.loads(metadata[META_CONFIG])
    except ValueError as exc:
        raise CheckpointError(f"{path}: metadata {META_CONFIG} is not JSON ({exc}); export the run again") from exc
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: metadata {META_CONFIG} is not a JSON object; export the run again")
    problem = checks.first_problem(config, MODEL_RULES, REQUIRED_FIELDS)
    if problem is None and config.get("architecture") == "conv":
        problem = checks.first_problem(config, {"image_shape": checks.list_of(checks.positive_int),
                                                "channels": checks.list_of(checks.positive_int)},
                                       ("image_shape", "channels"))
        if problem is None and (len(config["image_shape"]) != 2 or len(config["channels"]) != 2):
            problem = ("image_shape", "image_shape and channels must each hold two sizes")
    if problem is not None:
        raise CheckpointError(f"{path}: metadata {META_CONFIG}: {problem[1]}; export the run again")
    try:
        layout(config)
    except ValueError as exc:
        raise CheckpointError(f"{path}: metadata {META_CONFIG}: {exc}") from exc
    return config


def _config_from_shapes(path, header):
    """Eq. (4), (6) with the example's names: fc1.weight (H, D), fc21.weight (J, H), fc3.weight (H', J)
    give D, H, J, H' (relu, Bernoulli likelihood, as in the example)."""
    sizes = {}
    for name in ("fc1.weight", "fc21.weight", "fc3.weight"):
        if name not in header:
            raise CheckpointError(f"{path}: tensor {name!r} is missing, and the file holds no {META_CONFIG} metadata: "
                                  f"without it only the PyTorch example's names (fc1, fc21, fc22, fc3, fc4) can be "
                                  f"read; export the run with python -m minivae.export")
        shape = header[name][0]
        if len(shape) != 2 or min(shape) < 1:
            raise CheckpointError(f"{path}: tensor {name!r} has shape {shape}, a Linear weight is (out, in); "
                                  f"save the PyTorch example's state_dict unchanged")
        sizes[name] = shape
    return {"input_dim": sizes["fc1.weight"][1], "hidden": [sizes["fc1.weight"][0]],
            "latent_dim": sizes["fc21.weight"][0], "decoder_hidden": [sizes["fc3.weight"][0]],
            "activation": "relu", "likelihood": "bernoulli", "variance": 1.0, "n_samples": 1}


def _check_header(path, header, tensors, declared, from_shapes=False, fix=None):
    """Names, shapes and dtypes of the header against ``tensors``; returns the file's dtype name."""
    expected = {t.name: t.shape for t in tensors}
    sizes = " (its sizes read from fc1.weight, fc21.weight, fc3.weight)" if from_shapes else ""
    fix = fix or "export the run again with python -m minivae.export, or save the model's state_dict unchanged"
    for name in expected:
        if name not in header:
            raise CheckpointError(f"{path}: tensor {name!r} is missing (the model needs {', '.join(expected)}); {fix}")
    for name in sorted(header):
        if name not in expected:
            raise CheckpointError(f"{path}: tensor {name!r} is not a tensor of this model (it needs "
                                  f"{', '.join(expected)}); {fix}")
    first = tensors[0].name
    dtype = declared if declared is not None else FILE_DTYPES.get(header[first][1], header[first][1])
    for name, shape in expected.items():
        if header[name][0] != shape:
            raise CheckpointError(f"{path}: tensor {name!r} has shape {header[name][0]}, this model{sizes} needs {shape}; {fix}")
        code = header[name][1]
        if FILE_DTYPES.get(code) != dtype:
            raise CheckpointError(f"{path}: tensor {name!r} has dtype {code}, minivae reads float32 (F32) or float64 "
                                  f"(F64), all tensors alike ({dtype}); convert the state_dict with .float()")
    return dtype


def _params(path, tensors, arrays):
    """Every tensor finite, then put back in minivae's layouts (``W = weight^T``, the head's halves joined)."""
    params = {}
    for t in tensors:
        array = arrays[t.name]
        if not np.isfinite(array).all():
            raise CheckpointError(f"{path}: tensor {t.name!r} holds NaN or infinite values; export weights of a "
                                  f"run that did not diverge")
        array = array.T if t.transpose else array
        if t.columns is None:
            params[t.param] = np.array(array)
            continue
        start, stop, total = t.columns
        target = params.setdefault(t.param, np.empty(array.shape[:-1] + (total,), dtype=array.dtype))
        target[..., start:stop] = array
    return params


def load_safetensors(path, backend=None):
    """The VAE a safetensors file holds (``minivae.load_model`` of a ``.safetensors`` path): built from
    the file's config, holding its weights. ``backend`` defaults to NumPy in the file's dtype (seed 0)."""
    config, dtype, params = read_weights(path)
    if backend is None:
        backend = get_backend("numpy", dtype=dtype, seed=0)
    try:
        model = VAE(**config, backend=backend)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: metadata {META_CONFIG} holds a config this minivae cannot build ({exc}); "
                              f"upgrade minivae or export the run again") from exc
    for p in model.parameters():
        p.data[...] = backend.to_device(params[p.name])
    return model


INIT_FIX = "build the model the file holds (its sizes, its architecture), or pass a file that fits this one"


def init_from(model, path):
    """Copy the weights of the safetensors file at ``path`` into ``model`` (``--init-from FILE``): its
    tensors must be those of ``model``'s config (names, shapes; float32 or float64, cast to the model's
    dtype) and finite, else CheckpointError naming the tensor and nothing is changed. Only the weights
    are taken: the model's own activation, likelihood and objective stay."""
    _, _, params = read_weights(path, config=model.config, fix=INIT_FIX)
    for p in model.parameters():
        p.data[...] = model.backend.to_device(params[p.name].astype(model.backend.dtype, copy=False))
