"""What is read back from a file is checked before anything is built with it, and what older minivae
versions wrote is brought to today's terms in one place (``migrate``).

- A checkpoint's archive (``read_members``: every member read now, CRC-checked, never unpickled), its
  metadata (``parse_meta``, ``check_meta``: the model config by ``settings.MODEL_RULES``, the
  optimizer's hyperparameters by ``settings.HYPERPARAMETER_RULES``) and its arrays (``check_array``).
- A run's saved settings (its ``config.json``, or those inside its checkpoint): ``read_run_settings``,
  ``check_run_settings``, by the rules of minivae/settings.py.

Every refusal is a CheckpointError naming the file, the field or array, and the fix.
"""

import json

import numpy as np

from . import checks
from .errors import CheckpointError
from .settings import HYPERPARAMETER_RULES, MODEL_RULES, RENAMED, RUN_SETTINGS, SETTINGS, saved_problem, used

META_KEY = "meta"
OPTIM_PREFIX = "optim/"

ARCHITECTURE_FIELDS = ("input_dim", "hidden", "latent_dim", "decoder_hidden", "activation", "likelihood",
                       "variance", "n_samples")
"""The model config fields a checkpoint must hold, and agree on before it is restored into a model."""

ADAM_SUMS = {"m_sum": ("m", "beta1"), "v_sum": ("v", "beta2")}
"""How minivae's Adam kept its moments before it kept m and v themselves: m_sum = m / (1-b1),
v_sum = v / (1-b2)."""


def migrate(path, settings=None, optimizer_state=None):
    """What an older minivae wrote, in today's terms; ``path`` names the file for messages.

    ``settings``, a run's saved settings (a dict), comes back as a new dict: an old name renamed
    (``settings.RENAMED``: ``samples`` is ``n_samples``); a setting the run predates (architecture,
    objective, beta, kl_warmup, channels) given its default, which is what the run had; a setting its
    model did not use dropped (older runs recorded every one: ``hidden`` on a conv run, ``variance``
    with a Bernoulli likelihood).

    ``optimizer_state`` (a checkpoint's, as ``load_checkpoint`` reads it), when it holds an Adam state
    kept as sums (``ADAM_SUMS``), is turned into today's in place: m = (1-b1) m_sum, v = (1-b2) v_sum
    (docs/derivation.md, section 14.1), computed in float64 and rounded once to the stored dtype, so
    that resuming continues the same run, to that rounding.
    """
    if optimizer_state is not None and set(ADAM_SUMS) <= set(optimizer_state):
        hyper = optimizer_state["hyperparameters"]
        for old, (new, beta) in ADAM_SUMS.items():
            try:
                scale = 1.0 - float(hyper[beta])
            except (KeyError, TypeError, ValueError) as exc:
                raise corrupt(path, f"its Adam state {old!r} needs the hyperparameter {beta!r} ({exc!r})") from exc
            optimizer_state[new] = {name: (array.astype(np.float64) * scale).astype(array.dtype)
                                    for name, array in optimizer_state.pop(old).items()}
    if settings is None:
        return None
    settings = dict(settings)
    for old, new in RENAMED.items():
        if old in settings:
            settings.setdefault(new, settings.pop(old))
    for name in RUN_SETTINGS:
        if SETTINGS[name].added_later and name not in settings:
            settings[name] = SETTINGS[name].default
    return used(settings)


def read_run_settings(path, fix):
    """The settings a run saved in its ``config.json`` at ``path``, migrated and checked
    (``check_run_settings``); CheckpointError naming the file, the field and ``fix`` when it cannot be
    read or a field is missing or wrong."""
    try:
        with open(path) as handle:
            settings = json.load(handle)
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{path}: cannot read the saved settings ({error}); {fix}") from error
    return check_run_settings(settings, path, fix)


def check_run_settings(settings, where, fix):
    """``settings`` (a run's, read from ``where``) migrated (``migrate``), when it is a JSON object
    holding every setting its model uses, each keeping its rule (``settings.saved_problem``); fields
    that are no setting of minivae are left to their readers."""
    if not isinstance(settings, dict):
        raise CheckpointError(f"{where}: the run's settings are a JSON {type(settings).__name__}, not an object; {fix}")
    settings = migrate(where, settings)
    problem = saved_problem(settings)
    if problem is not None:
        raise CheckpointError(f"{where}: {problem}; {fix}")
    return settings


def check_meta(path, meta):
    """Refuse metadata whose values no model or optimizer can take, before anything is built:
    the epoch and step (integers >= 0), the dtype, the model config (``settings.MODEL_RULES``), the
    optimizer's hyperparameters (finite numbers in their ranges), the random state (an object)."""
    optimizer = meta.get("optimizer")
    hyperparameters = optimizer.get("hyperparameters") if isinstance(optimizer, dict) else None
    parts = [("", meta, {"epoch": checks.nonnegative_int, "dtype": SETTINGS["dtype"].rule}, ("epoch", "dtype")),
             ("config: ", meta.get("config"), MODEL_RULES, ARCHITECTURE_FIELDS),
             ("optimizer: ", optimizer, {"step": checks.nonnegative_int, "name": checks.text}, ("step", "name"))]
    if isinstance(hyperparameters, dict):
        rules = {name: HYPERPARAMETER_RULES.get(name, checks.finite_number) for name in hyperparameters}
        parts.append(("optimizer hyperparameter ", hyperparameters, rules, ()))
    for where, values, rules, required in parts:
        if not isinstance(values, dict):
            raise corrupt(path, f"its metadata lacks or mangles {where.rstrip(': ') or 'its top level'} (not an object)")
        problem = checks.first_problem(values, rules, required)
        if problem is not None:
            raise unusable(path, where + problem[1])
    if meta.get("rng_state") is not None and not isinstance(meta["rng_state"], dict):
        raise unusable(path, f"rng_state={meta['rng_state']!r} must be an object (or null)")
    rng_arrays = meta.get("rng_arrays", [])
    if not (isinstance(rng_arrays, list) and all(isinstance(key, str) for key in rng_arrays)) or (
            rng_arrays and not isinstance(meta.get("rng_state"), dict)):
        raise unusable(path, f"rng_arrays={rng_arrays!r} must be a list of names, beside an rng_state object")


def check_array(path, key, array, dtype):
    """Every stored array is real floating point of the checkpoint's dtype and finite (Adam's second
    moment v, or v_sum in older checkpoints, also >= 0): a complex, string or NaN array is refused, naming it."""
    if array.dtype != np.dtype(dtype):
        raise unusable(path, f"array {key!r} has dtype {array.dtype}, not the checkpoint's {dtype}")
    if not np.isfinite(array).all():
        raise unusable(path, f"array {key!r} holds {'NaN' if np.isnan(array).any() else 'inf'}")
    if key.startswith((f"{OPTIM_PREFIX}v/", f"{OPTIM_PREFIX}v_sum/")) and (array < 0).any():
        raise unusable(path, f"array {key!r} holds negative values (a sum of squares is >= 0)")


def read_members(path):
    """Every member of the archive as a NumPy array, read now with ``allow_pickle=False``."""
    try:
        npz = np.load(path, allow_pickle=False)
    except ValueError as exc:
        # NumPy takes any file that is neither a zip nor a .npy for a pickle, and refuses it.
        raise corrupt(path, "it is not a .npz archive (NumPy would read it as a pickle, refused for safety)") from exc
    except Exception as exc:  # zipfile.BadZipFile, OSError, EOFError, ... : anything is a broken file
        raise corrupt(path, f"it is not a readable .npz archive ({type(exc).__name__}: {exc})") from exc
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise corrupt(path, "it is a single .npy array, not a .npz archive")
    members = {}
    with npz:
        for key in npz.files:
            try:
                value = npz[key]  # reads the whole member: zipfile checks its CRC at the end
            except ValueError as exc:
                if "allow_pickle" in str(exc):
                    raise pickled(path, f"member {key!r}") from exc
                raise corrupt(path, f"member {key!r} cannot be read ({exc})") from exc
            except Exception as exc:  # BadZipFile (CRC), zlib.error, EOFError, NotImplementedError, ...
                raise corrupt(path, f"member {key!r} cannot be read ({type(exc).__name__}: {exc})") from exc
            if not isinstance(value, np.ndarray):  # NpzFile hands back raw bytes for a non-.npy member
                raise corrupt(path, f"member {key!r} is not a NumPy array")
            members[key] = value
        try:
            bad = npz.zip.testzip()  # belt and braces: every member's CRC, independent of numpy's reader
        except Exception as exc:
            raise corrupt(path, f"its zip structure is damaged ({type(exc).__name__}: {exc})") from exc
    if bad is not None:
        raise corrupt(path, f"member {bad!r} fails its CRC check")
    return members


def parse_meta(path, array):
    if array.ndim != 0 or array.dtype.kind != "U":
        raise corrupt(path, f"its {META_KEY!r} member is a {array.dtype} array of shape {array.shape}, "
                             f"not a JSON string")
    try:
        meta = json.loads(str(array[()]))
    except ValueError as exc:
        raise corrupt(path, f"its metadata is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise corrupt(path, f"its metadata is a JSON {type(meta).__name__}, not an object")
    return meta


def corrupt(path, what):
    return CheckpointError(f"checkpoint {path} is truncated or corrupted: {what}; restore it from a backup or "
                           f"retrain (start a new --out folder)")


def unusable(path, what):
    return CheckpointError(f"checkpoint {path} holds values no model can take: {what}; restore it from a backup or "
                           f"retrain (start a new --out folder)")


def pickled(path, where):
    return CheckpointError(f"checkpoint {path}: {where} holds a pickled object, refused for safety (a pickle can "
                           f"run arbitrary code); minivae checkpoints hold only plain arrays, so use one written "
                           f"by minivae's save_checkpoint")


