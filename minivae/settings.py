"""Every setting of minivae, declared once: name, type, default, rule, flag and help, whether a resume
may change it, and which models use it.

Built from ``SETTINGS``: the flags of ``python -m minivae.train``, ``evaluate`` and ``gradcheck``
(``cli.add_setting_flags``: each command picks the settings it has), the checks of the VAE's arguments
(``MODEL_RULES``, ``model_problem``), of a run's ``config.json`` and of a checkpoint's metadata
(``checkpoint_checks.py``), and the migration of files older minivae versions wrote. A setting has one
name everywhere: the key in config.json, the VAE's argument and ``VAE.config`` key, and the parsed
argument (``--samples`` is ``n_samples``).

A setting the chosen model does not use is refused when it is given (``unused``: a conv VAE has no
``--hidden``, a Bernoulli likelihood no ``--variance``, the IWAE objective no ``--beta``) and is not
recorded (``used``): a run's config.json holds only what its model used. Which objectives take a KL
weight (beta, kl_warmup) is asked of minivae/objectives.py (``combination_problem``), which states the
rule once.

Imports: checks and the name tuples of the modules below the model; the names of the datasets and of
the binarising modes are looked up in minivae/data only when a command checks one (``_datasets``).
"""

import dataclasses

from . import checks
from .backend import BACKEND_NAMES, DTYPES
from .layers import ACTIVATIONS
from .likelihoods import LEARNED, LIKELIHOODS
from .objectives import OBJECTIVES, combination_problem

ARCHITECTURES = ("mlp", "conv")


@dataclasses.dataclass(frozen=True)
class Setting:
    """One setting. ``rule`` (minivae/checks.py) checks a value wherever it comes from (a flag, a file,
    the library); ``convert`` turns a flag's text into the value the rule checks (unless ``choices``
    lists the values); ``many`` is "append" (a repeated flag) or a number of values. A setting whose
    ``help`` is None has no flag (an optimizer hyperparameter, checked in checkpoints)."""

    name: str
    rule: object
    default: object
    help: str = None
    flag: str = None              # default: "--" + name with "-" for "_"
    convert: object = str
    choices: object = None        # a tuple, or a function returning it (checks.one_of)
    many: object = None
    metavar: object = None
    default_text: str = None      # what the help says of the default, when not the value itself
    nullable: bool = False        # None is a value: "not set" (the dataset's, --hidden reversed, ...)
    recorded: bool = True         # written into a run's config.json (when its model uses it)
    resumable: bool = False       # a resumed run may change it
    added_later: bool = False     # a run may predate it: missing from its config.json, it has the default
    model: bool = False           # an argument of VAE, a field of VAE.config
    hyperparameter: bool = False  # an optimizer hyperparameter, as a checkpoint holds it
    memory: bool = False          # memory grows with it: the out-of-memory hint names it
    architectures: tuple = ARCHITECTURES  # the models that use it
    likelihoods: tuple = LIKELIHOODS
    objectives: tuple = OBJECTIVES
    needs: str = None             # used only when this other setting is given (not None)
    purpose: str = ""             # what it does, for the line refusing it where it is not used

    @property
    def option(self):
        return self.flag or "--" + self.name.replace("_", "-")


def _datasets():
    from .data.registry import DATASETS  # the registry: minivae/data (and SciPy's file readers) only for commands

    return tuple(sorted(DATASETS))


def _binarize_modes():
    from .data.binarize import BINARIZE_MODES

    return BINARIZE_MODES


def _variance(text):
    """A fixed variance (a number) or "learned" (eq. (39)-(41))."""
    return text if text == LEARNED else float(text)


def _height_by_width(text):
    """``HxW`` -> [H, W]."""
    height, width = text.lower().split("x")
    return [int(height), int(width)]


_WIDTHS = checks.list_of(checks.positive_int, allow_empty=True)
_PAIR = checks.list_of(checks.positive_int, length=2)
_MLP, _CONV, _GAUSSIAN = ("mlp",), ("conv",), ("gaussian",)
_KL_WEIGHTED = tuple(name for name in OBJECTIVES if combination_problem(name, kl_weight=0.5, warmup_epochs=1) is None)
"""The objectives whose KL term a weight (--beta) and a warm-up (--kl-warmup) may scale."""

SETTINGS = {setting.name: setting for setting in (
    # the data
    Setting("dataset", checks.one_of(_datasets), None, choices=_datasets, nullable=True,
            help="dataset to train on",
            default_text="mnist; when MNIST is unreachable, a Fashion-MNIST copy on this machine, else "
                         "fashion-mnist-small, which ships with minivae; with --data-dir alone: the IDX files there"),
    Setting("data_dir", checks.text, None, nullable=True, resumable=True, metavar="DIR",
            help="folder holding the dataset's files (IDX files with MNIST's names, or frey_rawface.mat)"),
    Setting("data_file", checks.text, None, nullable=True, added_later=True, metavar="FILE",
            help="train on your own arrays: a .npz (fields x, optional y, x_test, y_test) or a .npy of images "
                 "(N, H, W) or rows (N, D), uint8 0..255 or floats in [0, 1] (minivae/data/arrays.py)"),
    Setting("test_fraction", checks.open_fraction, None, convert=float, nullable=True, added_later=True,
            needs="data_file", metavar="F", default_text="0.1, when the file holds no x_test",
            help="share of --data-file's x held out as the test set (drawn with --seed)",
            purpose="holds out a test set from --data-file's arrays"),
    Setting("binarize", checks.one_of(_binarize_modes), "none", choices=_binarize_modes,
            help="pixels as they are (none), one fixed Bernoulli draw (static), a fresh draw every epoch (dynamic)"),
    # where and how it computes
    Setting("backend", checks.one_of(BACKEND_NAMES), "numpy", choices=BACKEND_NAMES, resumable=True,
            help="array backend (auto: cupy when a GPU is usable, else numpy)"),
    Setting("dtype", checks.one_of(DTYPES), "float32", choices=DTYPES, help="floating-point type"),
    Setting("seed", checks.nonnegative_int, 1, convert=int, help="random seed"),
    # training
    Setting("epochs", checks.positive_int, 10, convert=int, resumable=True, help="total number of epochs"),
    Setting("batch_size", checks.positive_int, 128, convert=int, memory=True, help="batch size"),
    Setting("lr", checks.positive_number, 1e-3, convert=float, hyperparameter=True, help="Adam's learning rate"),
    Setting("init_from", checks.text, None, nullable=True, added_later=True, metavar="FILE",
            help="start from the weights of a safetensors file (python -m minivae.export, or the PyTorch "
                 "example's state dict); its tensors must fit the model the other flags describe"),
    # the model
    Setting("input_dim", checks.positive_int, 784, convert=int, model=True, recorded=False, architectures=_MLP,
            help="D, values per data point", purpose="sets D, the values per data point (the conv VAE's is "
                                                     "--image-shape's H*W)"),
    Setting("architecture", checks.one_of(ARCHITECTURES), "mlp", choices=ARCHITECTURES, model=True,
            added_later=True,
            help="mlp (Linear layers, --hidden) or conv (two stride-2 4x4 convolutions of --channels channels and "
                 "a Linear head; the decoder mirrors it; images whose sides are multiples of 4)"),
    Setting("hidden", _WIDTHS, [400], convert=int, many="append", model=True, memory=True, architectures=_MLP,
            help="encoder hidden width; repeat for a deeper net",
            purpose="sets the widths of the MLP's hidden Linear layers"),
    Setting("decoder_hidden", _WIDTHS, None, convert=int, many="append", nullable=True, model=True, memory=True,
            architectures=_MLP, default_text="--hidden reversed", help="decoder hidden width; repeat for several",
            purpose="sets the widths of the MLP decoder's hidden Linear layers"),
    Setting("channels", _PAIR, [32, 64], convert=int, many=2, metavar=("C1", "C2"), model=True, memory=True,
            added_later=True, architectures=_CONV, default_text="32 64",
            help="channels of the conv encoder's two convolutions (the decoder mirrors them)",
            purpose="sets the channels of the conv VAE's convolutions"),
    Setting("image_shape", _PAIR, None, convert=_height_by_width, nullable=True, model=True,
            recorded=False, architectures=_CONV, metavar="HxW", help="HxW of the conv VAE's images, multiples of 4",
            purpose="sets the size of the conv VAE's images"),
    Setting("latent_dim", checks.positive_int, 20, convert=int, model=True, memory=True, help="J, the size of z"),
    Setting("n_samples", checks.positive_int, 1, flag="--samples", convert=int, model=True, memory=True, metavar="L",
            help="L, z samples per datapoint (or K of the IWAE bound)"),
    Setting("activation", checks.one_of(ACTIVATIONS), "relu", choices=ACTIVATIONS, model=True,
            help="activation between layers"),
    Setting("likelihood", checks.one_of(LIKELIHOODS), None, choices=LIKELIHOODS, model=True,
            default_text="the dataset's: bernoulli for pixels", help="decoder likelihood"),
    Setting("variance", checks.or_literal(LEARNED, checks.positive_number), 1.0, convert=_variance, model=True,
            likelihoods=_GAUSSIAN, metavar="S2",
            help="variance of the gaussian likelihood: a fixed number, or 'learned', a variance per value "
                 "output by the decoder", purpose="sets the variance of the gaussian likelihood"),
    # the objective
    Setting("objective", checks.one_of(OBJECTIVES), "elbo", choices=OBJECTIVES, model=True, added_later=True,
            help="elbo (eq. (3)) or iwae, the importance-weighted bound with K = --samples (eq. (43))"),
    Setting("beta", checks.nonnegative_number, 1.0, convert=float, added_later=True, objectives=_KL_WEIGHTED,
            help="weight of the KL in the ELBO objective; beta != 1 is not the ELBO (eq. (42))",
            purpose="weights the KL term of the ELBO objective"),
    Setting("kl_warmup", checks.nonnegative_int, 0, convert=int, added_later=True, objectives=_KL_WEIGHTED, metavar="N",
            help="ramp the KL weight from 0 to --beta over the first N epochs (0: no warm-up)",
            purpose="ramps up the KL weight of the ELBO objective"),
    # optimizer hyperparameters beside lr, as a checkpoint holds them (their defaults: minivae/optim.py)
    Setting("beta1", checks.below_one, None, recorded=False, hyperparameter=True),
    Setting("beta2", checks.below_one, None, recorded=False, hyperparameter=True),
    Setting("eps", checks.positive_number, None, recorded=False, hyperparameter=True),
    Setting("weight_decay", checks.nonnegative_number, None, recorded=False, hyperparameter=True),
    Setting("momentum", checks.nonnegative_number, None, recorded=False, hyperparameter=True),
)}

RUN_SETTINGS = tuple(name for name, setting in SETTINGS.items() if setting.recorded)
"""The settings a run records in its config.json (those its model uses) and resumes with."""

MODEL_RULES = {name: checks.optional(s.rule) if s.nullable else s.rule for name, s in SETTINGS.items() if s.model}
"""What each argument of ``VAE`` (each field of ``VAE.config``) must be: checked by its constructor and,
before a model is built from one, on a checkpoint's config (minivae/checkpoint_checks.py)."""

HYPERPARAMETER_RULES = {name: s.rule for name, s in SETTINGS.items() if s.hyperparameter}
"""What each optimizer hyperparameter a checkpoint holds must be (others: finite numbers)."""

RENAMED = {"samples": "n_samples"}
"""Old config.json names -> today's (minivae 0.1 wrote ``samples``)."""

# What decides which model uses a setting: the field of the settings, and the Setting attribute
# listing the values that use it.
_DECIDED_BY = (("architecture", "architectures"), ("likelihood", "likelihoods"), ("objective", "objectives"))


def defaults(names, **overrides):
    """{name: default} of the settings ``names``, a command's own defaults (``overrides``) over the table's."""
    return {name: overrides.get(name, SETTINGS[name].default) for name in names}


def resumable(names):
    """The settings of ``names`` a resumed run may change (every other one must match the saved run)."""
    return tuple(name for name in names if SETTINGS[name].resumable)


def option(name):
    """The flag of a setting (``--samples`` for n_samples)."""
    return SETTINGS[name].option


def uses(values, name):
    """Whether the model that ``values`` (a dict of settings) describes uses the setting ``name``. A
    deciding setting that ``values`` lacks or leaves None (a likelihood still to come from the dataset)
    rules nothing out."""
    setting = SETTINGS[name]
    if _lacks_what_it_needs(setting, values):
        return False
    return all(values.get(field) is None or values[field] in getattr(setting, attribute)
               for field, attribute in _DECIDED_BY)


def _lacks_what_it_needs(setting, values):
    """Whether ``setting`` is used only with another setting (its ``needs``) that ``values`` leaves None."""
    return setting.needs is not None and values.get(setting.needs) is None


def unused(values, given):
    """The line refusing the first setting named in ``given`` that the model of ``values`` does not use
    (None when it uses them all): what the setting does, which choice has no use for it, and the two
    ways out."""
    for name in given:
        setting = SETTINGS[name]
        if _lacks_what_it_needs(setting, values):
            return f"{setting.option} {setting.purpose}, which only {option(setting.needs)} has: drop {setting.option}, " \
                   f"or pass {option(setting.needs)} {SETTINGS[setting.needs].metavar}"
        for field, attribute in _DECIDED_BY:
            chosen, allowed = values.get(field), getattr(setting, attribute)
            if chosen is not None and chosen not in allowed:
                return (f"{setting.option} {setting.purpose}, which the {chosen} {field} does not have: drop "
                        f"{setting.option}, or pass {option(field)} {' or '.join(allowed)}")
    return None


def used(values):
    """``values`` without the settings its model does not use (what a run records). Names that are no
    setting (``version``) are kept."""
    return {name: value for name, value in values.items() if name not in SETTINGS or uses(values, name)}


def memory_flags(values):
    """The flags of the settings that memory grows with and the model of ``values`` uses, as a phrase:
    what the out-of-memory hint tells the user to make smaller."""
    flags = [setting.option for name, setting in SETTINGS.items()
             if setting.memory and name in values and uses(values, name)]
    return ", ".join(flags[:-1]) + f" or {flags[-1]}" if len(flags) > 1 else "".join(flags)


def model_problem(values):
    """The line refusing the first argument of ``VAE`` in ``values`` that breaks its rule; None when all
    keep them."""
    problem = checks.first_problem(values, MODEL_RULES)
    return None if problem is None else problem[1]


def saved_problem(values):
    """The first problem of a run's saved settings (``values``, migrated): a setting its model uses that
    is missing, or null where null means nothing, named as such; or a value that breaks its rule."""
    for name in RUN_SETTINGS:
        if not uses(values, name):
            continue
        setting = SETTINGS[name]
        if name not in values:
            return f'the field "{name}" is missing; it {setting.rule(None)} (the value of {setting.option})'
        if values[name] is None and not setting.nullable:
            return f'the field "{name}" is null; it {setting.rule(None)} (the value of {setting.option})'
    rules = {name: checks.optional(SETTINGS[name].rule) if SETTINGS[name].nullable else SETTINGS[name].rule
             for name in RUN_SETTINGS}
    problem = checks.first_problem(values, {**rules, "version": checks.text})
    return None if problem is None else problem[1]
