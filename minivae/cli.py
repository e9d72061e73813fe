"""Argument types and the parser shared by the command-line tools (train, evaluate, gradcheck):
a refused flag is reported on one line, with exit status 2."""

import argparse
import math
import sys

from .errors import MinivaeError
from .interrupts import check_interrupt, interrupt_guard


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def nonnegative_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text}")
    return value


def positive_float(text):
    value = float(text)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


# argparse reports a type's ValueError as "invalid <name> value": give the names a reader expects
positive_int.__name__ = "positive integer"
nonnegative_int.__name__ = "non-negative integer"
positive_float.__name__ = "positive number"


class Parser(argparse.ArgumentParser):
    """argparse, with each refused flag reported on ONE line (no usage block) and exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


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

    Returns 0 when done; 1 after printing ``failure_line`` (a MinivaeError, an OSError, running out of
    memory; ``--debug`` raises it instead); 130 after printing "interrupted; " and
    ``after_interrupt(args)`` (``args`` None when parsing had not finished) for Ctrl-C, wherever it
    came, also during the start-up imports. Each message is one line on stderr.
    """
    args = None
    with interrupt_guard():
        try:
            try:
                check_interrupt()  # one that came during the start-up imports
                args = parser.parse_args(argv)
                body(args)
                check_interrupt()
            except (MinivaeError, OSError, MemoryError) as error:
                if args.debug:
                    raise
                print(f"{program}: error: {failure_line(error, folder, memory_hint)}", file=sys.stderr)
                return 1
        except KeyboardInterrupt:
            print(f"{program}: interrupted; {after_interrupt(args)}", file=sys.stderr)
            return 130
    return 0
