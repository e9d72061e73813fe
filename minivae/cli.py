"""Argument types and the parser shared by the command-line tools (train, evaluate, gradcheck):
a refused flag is reported on one line, with exit status 2."""

import argparse
import math


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


def nonnegative_float(text):
    value = float(text)
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def variance_setting(text):
    """The Gaussian likelihood's variance: a positive number (fixed), or "learned" (eq. (44)-(46))."""
    return text if text == "learned" else positive_float(text)


# argparse reports a type's ValueError as "invalid <name> value": give the names a reader expects
positive_int.__name__ = "positive integer"
nonnegative_int.__name__ = "non-negative integer"
positive_float.__name__ = "positive number"
nonnegative_float.__name__ = "non-negative number"
variance_setting.__name__ = "variance (a positive number or 'learned')"


class Parser(argparse.ArgumentParser):
    """argparse, with each refused flag reported on ONE line (no usage block) and exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def add_output_flags(parser):
    """--no-progress, --quiet and --debug, as every long-running command takes them."""
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--quiet", action="store_true", help="print only errors")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
