"""What the command-line tools (train, evaluate, gradcheck) share: their flags built from the settings
table (minivae/settings.py), argument types that check a value by the same rule as a file or the
library does, a parser that reports a refused flag on one line with exit status 2, and ``run_command``,
which turns every failure into one line."""

import argparse
import os
import sys

from . import checks, settings
from .errors import MinivaeError
from .fileio import silence
from .interrupts import check_interrupt, interrupt_guard

BROKEN_PIPE_STATUS = 141  # 128 + SIGPIPE: what a shell reports for a command whose reader went away


class UsageError(MinivaeError):
    """A flag the command cannot use with the others (a setting the chosen model does not use): reported
    like a refused flag, with exit status 2."""


def argument_type(convert, rule):
    """An argparse type: ``convert`` the text (int, float, ...), then check it by ``rule``
    (minivae/checks.py); a refusal reads "must be an integer >= 1, got 0"."""
    def parse(text):
        try:
            value = convert(text)
        except (TypeError, ValueError):
            value = None
        problem = rule(value)
        if problem is not None:
            raise argparse.ArgumentTypeError(f"{problem}, got {text}")
        return value
    return parse


positive_int = argument_type(int, checks.positive_int)
nonnegative_int = argument_type(int, checks.nonnegative_int)
positive_float = argument_type(float, checks.positive_number)
nonnegative_float = argument_type(float, checks.nonnegative_number)


def setting_type(name):
    """The argparse type of one value of the setting ``name`` (one item of a list setting)."""
    setting = settings.SETTINGS[name]
    return argument_type(setting.convert, getattr(setting.rule, "item_rule", setting.rule))


variance_setting = setting_type("variance")


def _shown(value):
    return " ".join(str(item) for item in value) if isinstance(value, (list, tuple)) else str(value)


def add_setting_flags(container, names, defaults=None, helps=None, types=None):
    """Add the flags of the settings ``names`` to ``container`` (a parser or an argument group), each
    from the table: its flag, type or choices, and help ending in "(default: ...)", where ``defaults``
    and ``helps`` (dicts by name) give a command's own; ``types`` a command's own argparse type.

    Every flag defaults to None, so that ``given_settings`` can tell what was given from what was not
    (a setting the model does not use is refused only when given); ``setting_values`` fills in the rest.
    """
    defaults, helps, types = defaults or {}, helps or {}, types or {}
    for name in names:
        setting = settings.SETTINGS[name]
        text = helps.get(name, setting.help)
        if name in defaults:  # a command's own default (None: its help says what it is)
            text += "" if defaults[name] is None else f" (default: {_shown(defaults[name])})"
        elif setting.default_text or setting.default is not None:
            text += f" (default: {setting.default_text or _shown(setting.default)})"
        kwargs = {"dest": name, "default": None, "help": text}
        if setting.choices is not None:
            kwargs["choices"] = setting.choices() if callable(setting.choices) else setting.choices
        else:
            kwargs["type"] = types.get(name) or setting_type(name)
        if setting.many == "append":
            kwargs["action"] = "append"
        elif setting.many is not None:
            kwargs["nargs"] = setting.many
        if setting.metavar is not None:
            kwargs["metavar"] = setting.metavar
        container.add_argument(setting.option, **kwargs)


def given_settings(args, names):
    """{name: value} of the settings among ``names`` given on the command line."""
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def setting_values(args, names, defaults=None):
    """The settings ``names``: the command line's values over ``defaults`` (a command's own) over the table's."""
    return {**settings.defaults(names, **(defaults or {})), **given_settings(args, names)}


def refuse_unused(values, given):
    """Raise UsageError (exit status 2) when ``given`` names a setting the model of ``values`` does not use."""
    problem = settings.unused(values, given)
    if problem is not None:
        raise UsageError(problem)


def dataset_label(dataset, name):
    """How a message names a loaded dataset: by its name and folder when the run named one (``name``,
    its dataset setting), else by the folder (``--data-dir`` alone, files read with MNIST's names) or the
    file (``--data-file``)."""
    return f"{dataset.name} ({dataset.source})" if name else unnamed_data_label(dataset.source)


def unnamed_data_label(source):
    """How a message names data that no dataset name stands for: the IDX files of a folder
    (``--data-dir`` alone), or the file itself (``--data-file``)."""
    return f"the IDX files in {source}" if os.path.isdir(source) else source


class Parser(argparse.ArgumentParser):
    """argparse, with each refused flag reported on ONE line (no usage block) and exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.usage_line(message)}\n")

    def usage_line(self, message):
        return f"{self.prog}: error: {message}; see {self.prog} --help"


def add_output_flags(parser):
    """--no-progress, --quiet and --debug, as every long-running command takes them."""
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--quiet", action="store_true", help="print only errors")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")


def failure_line(error, folder, memory_hint):
    """The one line a command prints for a failure it cannot go on after: a MinivaeError's message
    (on one line), an OSError naming its file and ``folder`` to check, or running out of memory
    (NumPy's MemoryError, CuPy's OutOfMemoryError) with ``memory_hint``."""
    if isinstance(error, MemoryError):
        return f"out of memory ({' '.join(str(error).split()) or 'no details'}); {memory_hint}"
    if isinstance(error, OSError) and not isinstance(error, MinivaeError):
        where = f"{error.filename}: " if error.filename else ""
        return f"{where}{error.strerror or error}; check that {folder} is writable and has free space"
    return " ".join(str(error).split())


def run_command(program, parser, body, after_interrupt, folder, memory_hint, argv=None):
    """Run a command: ``body(parser.parse_args(argv))`` under the interrupt guard (minivae/interrupts.py).

    Returns what ``body`` returns when it is an exit status (an int), else 0; 2 after a UsageError,
    printed as a refused flag is; 1 after printing ``failure_line`` (a MinivaeError, an OSError, running
    out of memory, with ``memory_hint``: a string, or a function of ``args``; ``--debug`` raises it
    instead); 130 after printing
    "interrupted; " and ``after_interrupt(args)`` (``args`` None when parsing had not finished) for
    Ctrl-C, wherever it came, also during the start-up imports; 141, quietly, when whoever reads the
    output has closed it (``| head -1``). Each message is one line on stderr.
    """
    args = None
    with interrupt_guard():
        try:
            try:
                check_interrupt()  # one that came during the start-up imports
                args = parser.parse_args(argv)
                status = body(args)
                sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's last flush
                check_interrupt()
            except BrokenPipeError:
                silence(sys.stdout)  # nothing more (the interpreter's flush at exit) goes to the closed pipe
                return BROKEN_PIPE_STATUS
            except UsageError as error:
                if args.debug:
                    raise
                print(parser.usage_line(error), file=sys.stderr)
                return 2
            except (MinivaeError, OSError, MemoryError) as error:
                if args.debug:
                    raise
                hint = memory_hint(args) if callable(memory_hint) else memory_hint
                print(f"{program}: error: {failure_line(error, folder, hint)}", file=sys.stderr)
                return 1
        except KeyboardInterrupt:
            print(f"{program}: interrupted; {after_interrupt(args)}", file=sys.stderr)
            return 130
    return status if isinstance(status, int) else 0


def quiet_on_closed_pipe(main):
    """Run ``main()`` (a script's main function) and return its exit status; when whoever reads its
    output has closed it (``python examples/trace_gradients.py | head -1``), end quietly with 141, as
    ``run_command`` does for the commands, instead of a BrokenPipeError traceback."""
    try:
        status = main()
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's last flush
        return status
    except BrokenPipeError:
        silence(sys.stdout)
        return BROKEN_PIPE_STATUS
