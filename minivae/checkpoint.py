"""Checkpoints: model parameters, optimizer state, random state and run metadata in one ``.npz``.

Layout of the archive (every member is a plain NumPy array; nothing is pickled):

    param/<name>          each parameter, e.g. ``param/encoder.0.W``
    optim/<kind>/<name>   each optimizer moment, e.g. ``optim/m/encoder.0.W`` (Adam: m, v; SGD:
                          momentum_buffer; older checkpoints' Adam m_sum, v_sum are read as m, v)
    rng/<field>           the arrays of the random state (CuPy's: ``rng/device_state``, the cuRAND
                          generator's state); its other fields are in ``meta``
    meta                  a 0-d unicode array holding ONE JSON document: format version, minivae
                          version, epoch, model config, dtype, optimizer name / step /
                          hyperparameters, the backend's random state (or why there is none), the
                          parameter names in order, and ``extra`` (whatever JSON the caller passes)

Host side only: arrays come to the host with ``backend.to_numpy`` and go back with
``backend.to_device``. Files are written atomically (``fileio.atomic_write``) and read with
``allow_pickle=False``; every member is read, and its CRC checked, at load time, so a truncated or
corrupted file is refused with a ``CheckpointError`` rather than half-loaded.
"""

import dataclasses
import json
import os
from collections import namedtuple

import numpy as np

from .version import __version__
from .backend import get_backend
from .checkpoint_checks import (ARCHITECTURE_FIELDS, META_KEY, OPTIM_PREFIX, check_array, check_meta,
                                check_run_settings, corrupt, migrate, parse_meta, read_members, read_run_settings)
from .errors import BackendUnavailable, CheckpointError
from .fileio import atomic_write
from .model import VAE
from .settings import SETTINGS

FORMAT_VERSION = 1
"""Bump when the layout changes in a way an older reader cannot follow."""

PARAM_PREFIX = "param/"
RNG_PREFIX = "rng/"

# The names minivae.train gives a run's files in its --out folder (minivae.evaluate reads them).
CHECKPOINT_NAME = "checkpoint.npz"
CONFIG_NAME = "config.json"


@dataclasses.dataclass
class Checkpoint:
    """Everything ``load_checkpoint`` read, on the host (NumPy arrays, plain Python values).

    Attributes:
        params: parameter name -> array, in the model's parameter order.
        optimizer_state: a state_dict in ``optim.py``'s format: {"step", "hyperparameters",
            "m" / "v" or "momentum_buffer": {parameter name: array}}.
        optimizer_name: the optimizer's class name ("Adam", "SGD").
        rng_state: the backend generator's state (a dict), or None when the backend could not
            export it (then ``meta["rng_state_note"]`` in the file says why).
        epoch: the epoch the checkpoint was written after.
        config: the model's config (``VAE.config``).
        dtype: "float32" or "float64".
        version: the minivae version that wrote the file.
        format_version: the file's FORMAT_VERSION.
        extra: the caller's JSON dict (metrics history, run config, ...), {} when none was given.
        path: the file it was read from (for messages).
    """

    params: dict
    optimizer_state: dict
    optimizer_name: str
    rng_state: object
    epoch: int
    config: dict
    dtype: str
    version: str
    format_version: int
    extra: dict
    path: str = "<memory>"


# --------------------------------------------------------------------------------------------------
# save


def save_checkpoint(path, model, optimizer, *, epoch, extra=None):
    """Write ``model``'s parameters, ``optimizer``'s state, the backend's random state, ``epoch``,
    the model config and ``extra`` (a JSON-serialisable dict) to ``path`` as one ``.npz``, atomically:
    a failure at any point leaves the previous file at ``path`` untouched.

    Raises CheckpointError when ``extra`` is not JSON-serialisable, when the optimizer does not hold
    exactly the model's parameters, or when the file cannot be written (an OSError: no such folder,
    disk full, permission denied).
    """
    path = os.fspath(path)
    backend = model.backend
    parameters = model.parameters()
    names = [p.name for p in parameters]
    if extra is not None and not isinstance(extra, dict):
        raise CheckpointError(f"cannot write checkpoint {path}: extra must be a dict (or None), "
                              f"got {type(extra).__name__}")
    state = optimizer.state_dict()
    for kind in optimizer.moment_names:
        if sorted(state[kind]) != sorted(names):
            raise CheckpointError(f"cannot write checkpoint {path}: the optimizer's {kind!r} state holds "
                                  f"parameters {sorted(state[kind])}, the model has {sorted(names)}; "
                                  f"build the optimizer from model.parameters()")

    arrays = {PARAM_PREFIX + p.name: backend.to_numpy(p.data) for p in parameters}
    for kind in optimizer.moment_names:
        for name, array in state[kind].items():
            arrays[f"{OPTIM_PREFIX}{kind}/{name}"] = backend.to_numpy(array)

    try:
        rng_state, rng_note = backend.rng_state(), None
    except BackendUnavailable as exc:
        rng_state, rng_note = None, str(exc)
    rng_arrays = {key: value for key, value in (rng_state or {}).items() if isinstance(value, np.ndarray)}
    arrays.update({RNG_PREFIX + key: value for key, value in rng_arrays.items()})
    if rng_state is not None:
        rng_state = {key: value for key, value in rng_state.items() if key not in rng_arrays}
    meta = {
        "format_version": FORMAT_VERSION,
        "minivae_version": __version__,
        "epoch": int(epoch),
        "config": model.config,
        "dtype": backend.dtype.name,
        "backend": backend.name,
        "parameter_names": names,
        "optimizer": {"name": type(optimizer).__name__, "step": int(state["step"]),
                      "hyperparameters": state["hyperparameters"], "moments": list(optimizer.moment_names)},
        "rng_state": rng_state,
        "rng_arrays": sorted(rng_arrays),
        "rng_state_note": rng_note,
        "extra": {} if extra is None else extra,
    }
    try:
        meta_json = json.dumps(meta, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"cannot write checkpoint {path}: its metadata is not JSON-serialisable ({exc}); "
                              f"pass only dicts, lists, strings, numbers, booleans and None in extra") from exc
    arrays[META_KEY] = np.array(meta_json)

    try:
        with atomic_write(path, "wb") as handle:
            np.savez(handle, **arrays)  # on a file handle np.savez writes there and adds no ".npz"
    except OSError as exc:
        raise CheckpointError(f"cannot write checkpoint {path}: {exc}; check that the folder exists, "
                              f"is writable and has free space") from exc


def _json_default(value):
    """NumPy scalars (a learning rate that came out of NumPy) become Python numbers."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} {value!r} is not JSON-serialisable")


# --------------------------------------------------------------------------------------------------
# load


def load_checkpoint(path):
    """Read a checkpoint written by ``save_checkpoint``; every member is read (and CRC-checked) now.

    Raises CheckpointError, naming the file, what is wrong and the fix, when the file is missing,
    is not a .npz, is truncated or corrupted, holds a pickled object (refused, never unpickled),
    lacks minivae's metadata, or was written by a newer minivae.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path} does not exist; check the path, or train first to write one")
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path} is a folder, not a file; pass the .npz file inside it")
    members = read_members(path)

    if META_KEY not in members:
        raise CheckpointError(f"checkpoint {path} holds no minivae metadata (no {META_KEY!r} member): it was not "
                              f"written by minivae's save_checkpoint; pass a checkpoint.npz written by "
                              f"minivae.train")
    meta = parse_meta(path, members.pop(META_KEY))
    fmt = meta.get("format_version")
    if not isinstance(fmt, int) or isinstance(fmt, bool) or fmt < 1:
        raise corrupt(path, f"its metadata has format_version={fmt!r}")
    if fmt > FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} was written by a newer minivae (format {fmt}, this one reads "
                              f"up to {FORMAT_VERSION}); upgrade minivae")

    check_meta(path, meta)
    try:
        names = list(meta["parameter_names"])
        optim_meta = meta["optimizer"]
        kinds = list(optim_meta["moments"])
        optimizer_state = {"step": int(optim_meta["step"]),
                           "hyperparameters": dict(optim_meta["hyperparameters"])}
        checkpoint = Checkpoint(
            params={}, optimizer_state=optimizer_state, optimizer_name=str(optim_meta["name"]),
            rng_state=meta["rng_state"], epoch=int(meta["epoch"]), config=dict(meta["config"]),
            dtype=str(meta["dtype"]), version=str(meta["minivae_version"]), format_version=fmt,
            extra=dict(meta["extra"]), path=path)
    except (KeyError, TypeError, ValueError) as exc:
        raise corrupt(path, f"its metadata lacks or mangles a field ({type(exc).__name__}: {exc})") from exc

    rng_arrays = [RNG_PREFIX + key for key in meta.get("rng_arrays", [])]
    expected = {PARAM_PREFIX + name for name in names} | set(rng_arrays)
    expected |= {f"{OPTIM_PREFIX}{kind}/{name}" for kind in kinds for name in names}
    if set(members) != expected:
        missing, unexpected = sorted(expected - set(members)), sorted(set(members) - expected)
        raise corrupt(path, f"its arrays do not match its metadata (missing {missing}, unexpected {unexpected})")
    checkpoint.params = {name: members[PARAM_PREFIX + name] for name in names}
    for kind in kinds:
        optimizer_state[kind] = {name: members[f"{OPTIM_PREFIX}{kind}/{name}"] for name in names}
    for key in rng_arrays:
        checkpoint.rng_state[key[len(RNG_PREFIX):]] = members.pop(key)
    for key, array in members.items():
        check_array(path, key, array, checkpoint.dtype)
    migrate(path, optimizer_state=optimizer_state)
    return checkpoint


# --------------------------------------------------------------------------------------------------
# restore


def restore(checkpoint, model, optimizer):
    """Copy the checkpoint's parameters, optimizer state and random state into ``model``,
    ``optimizer`` and ``model.backend``, to resume training exactly where it stopped.

    Checks first that config (ARCHITECTURE_FIELDS), dtype, optimizer class and parameter names and
    shapes all match, and raises CheckpointError naming the field and both values when one does
    not; nothing is modified then. Parameters are copied INTO the existing arrays (``p.data[...] =``),
    so the arrays the optimizer holds stay the same objects. The optimizer's hyperparameters are
    those of the checkpoint afterwards (``Optimizer.load_state_dict``).

    Returns True when the random state was restored, False when there was none to restore (saved
    from a backend that cannot export it) or ``model.backend`` cannot import it (CuPy): then the
    run continues correctly but not bit for bit.
    """
    path = checkpoint.path
    backend = model.backend
    _check_config(checkpoint, model.config)
    if checkpoint.dtype != backend.dtype.name:
        raise CheckpointError(f"checkpoint {path} holds {checkpoint.dtype} arrays, this model computes in "
                              f"{backend.dtype.name}: {_USE_ITS_CONFIG}")
    optimizer_name = type(optimizer).__name__
    if checkpoint.optimizer_name != optimizer_name:
        raise CheckpointError(f"checkpoint {path} holds the state of an {checkpoint.optimizer_name} optimizer, this "
                              f"one is {optimizer_name}: restore it into an {checkpoint.optimizer_name} optimizer "
                              f"(minivae.train trains with Adam only), or start a new --out folder")
    parameters = model.parameters()
    _check_arrays(path, "parameters", checkpoint.params, {p.name: p.data.shape for p in parameters})
    state = checkpoint.optimizer_state
    for kind in optimizer.moment_names:
        if kind not in state:
            raise CheckpointError(f"checkpoint {path} has no optimizer state {kind!r} for {optimizer_name}; "
                                  f"start a new --out folder")
        _check_arrays(path, f"optimizer state {kind!r}", state[kind],
                      {name: array.shape for name, array in optimizer.moments[kind].items()})
    hyper = state.get("hyperparameters", {})
    if set(hyper) != set(optimizer.hyperparameter_names):
        raise CheckpointError(f"checkpoint {path} holds {optimizer_name} hyperparameters {sorted(hyper)}, this "
                              f"optimizer has {sorted(optimizer.hyperparameter_names)}; start a new --out folder")

    # Everything matches: now modify. The random state goes first: the only step that may still fail.
    rng_restored = False
    if checkpoint.rng_state is not None:
        try:
            backend.set_rng_state(checkpoint.rng_state)
            rng_restored = True
        except BackendUnavailable:
            pass
        except (ValueError, TypeError, KeyError) as exc:
            raise CheckpointError(f"checkpoint {path} holds a random state the {backend.name} backend cannot "
                                  f"take ({type(exc).__name__}: {exc}); start a new --out folder") from exc
    for p in parameters:
        p.data[...] = backend.to_device(checkpoint.params[p.name])
    device_state = {"step": state["step"], "hyperparameters": dict(hyper)}
    for kind in optimizer.moment_names:
        device_state[kind] = {name: backend.to_device(array) for name, array in state[kind].items()}
    optimizer.load_state_dict(device_state)
    return rng_restored


_USE_ITS_CONFIG = ("build the model from the checkpoint's own config (in a run folder its config.json must "
                   "say the same: the two files come from different runs), or start a new --out folder")


def _check_config(checkpoint, config):
    """The model's config must equal the checkpoint's, field by field. No command-line flag can fix a
    difference (a resumed run takes its settings from its config.json), so the advice is the file's."""
    fields = list(ARCHITECTURE_FIELDS) + sorted((set(checkpoint.config) | set(config)) - set(ARCHITECTURE_FIELDS))
    for field in fields:
        default = SETTINGS[field].default if field in SETTINGS else None  # a field older configs left out
        saved, ours = checkpoint.config.get(field, default), config.get(field, default)
        if saved == ours:
            continue
        fix = (f"use the dataset it was trained on ({saved} values per example), or start a new --out folder"
               if field == "input_dim" else _USE_ITS_CONFIG)
        raise CheckpointError(f"checkpoint {checkpoint.path} was trained with {field}={_show(saved)}, this model "
                              f"has {field}={_show(ours)}: {fix}")


def _show(value):
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def _check_arrays(path, what, arrays, shapes):
    if set(arrays) != set(shapes):
        raise CheckpointError(f"checkpoint {path} holds {what} {sorted(arrays)}, this model has {sorted(shapes)}; "
                              f"start a new --out folder")
    for name, shape in shapes.items():
        if tuple(arrays[name].shape) != tuple(shape):
            raise CheckpointError(f"checkpoint {path} holds {what} {name!r} of shape {tuple(arrays[name].shape)}, "
                                  f"this model has shape {tuple(shape)}; start a new --out folder")


# --------------------------------------------------------------------------------------------------
# evaluation


def model_from_checkpoint(checkpoint, backend):
    """A VAE built from the checkpoint's config on ``backend``, holding the checkpoint's parameters
    (for evaluation; no optimizer, no random state). The parameters are cast to ``backend``'s
    dtype, so a float32 checkpoint can be evaluated in float64. Building the model draws its
    (then overwritten) initial weights from ``backend``'s generator.
    """
    try:
        model = VAE(**checkpoint.config, backend=backend)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {checkpoint.path} holds a model config this minivae cannot build "
                              f"({exc}); upgrade minivae or retrain") from exc
    parameters = model.parameters()
    _check_arrays(checkpoint.path, "parameters", checkpoint.params, {p.name: p.data.shape for p in parameters})
    for p in parameters:
        p.data[...] = backend.to_device(checkpoint.params[p.name])
    return model


def checkpoint_path(run):
    """The checkpoint file named by RUN: RUN itself, or RUN/checkpoint.npz when RUN is a folder."""
    if os.path.isdir(run):
        path = os.path.join(run, CHECKPOINT_NAME)
        if not os.path.isfile(path):
            raise CheckpointError(f"{run}: holds no {CHECKPOINT_NAME}; pass the --out folder of a run that has "
                                  f"trained at least one epoch, or a checkpoint file")
        return path
    if not os.path.exists(run):
        raise CheckpointError(f"{run}: no such run folder or checkpoint file; pass the --out folder of a "
                              f"minivae.train run, or its {CHECKPOINT_NAME}")
    return run


SavedRun = namedtuple("SavedRun", ["checkpoint", "settings"])
SavedRun.__doc__ = """A run as ``read_run`` finds it: its Checkpoint, and its settings (a dict, migrated and
checked: minivae/checkpoint_checks.py)."""

SAME_RUN = "the folder's config.json and checkpoint.npz must come from the same run; pass the checkpoint file alone"


def read_run(path, fix=SAME_RUN):
    """The checkpoint and the settings of a run: ``path`` is a run folder (the ``--out`` of
    ``minivae.train``) or a checkpoint file. The settings are the folder's ``config.json``, whose every
    model setting must equal the checkpoint's model config field of the same name, or else the settings
    saved inside the checkpoint ({} when it holds none). CheckpointError naming the file, the field and
    ``fix`` (for config.json) when anything does not fit."""
    file = checkpoint_path(path)
    checkpoint = load_checkpoint(file)
    config_file = os.path.join(os.path.dirname(os.path.abspath(file)), CONFIG_NAME)
    if os.path.isfile(config_file):
        settings = read_run_settings(config_file, fix)
        config = dict(checkpoint.config)
        for name, value in settings.items():
            if name in SETTINGS and SETTINGS[name].model:
                # decoder_hidden null: the mirror of hidden, as VAE builds it
                config[name] = list(reversed(settings["hidden"])) if name == "decoder_hidden" and value is None \
                    else value
        _check_config(checkpoint, config)
        return SavedRun(checkpoint, settings)
    saved = checkpoint.extra.get("settings")
    return SavedRun(checkpoint, check_run_settings(saved, f"{file} (its saved settings)", fix) if saved else {})


def load_model(path, backend=None):
    """The trained VAE of a run: ``path`` is a run folder (the ``--out`` of ``minivae.train``) or a
    checkpoint file, or a ``.safetensors`` file of ``python -m minivae.export`` (or PyTorch's example).
    The model is built from the checkpoint's config, checked field by field against the folder's
    ``config.json`` when there is one (``read_run``), and holds the checkpoint's parameters. ``backend``
    defaults to NumPy in the checkpoint's dtype (seed 0; the seed only matters for sampling).

    Raises CheckpointError naming the file and the field when anything does not fit.
    """
    if os.fspath(path).endswith(".safetensors"):  # weights exported for PyTorch (minivae/safetensors_io.py)
        from .safetensors_io import load_safetensors
        return load_safetensors(path, backend)
    checkpoint = read_run(path).checkpoint
    if backend is None:
        backend = get_backend("numpy", dtype=checkpoint.dtype, seed=0)
    return model_from_checkpoint(checkpoint, backend)
