"""What the example scripts share on their command lines (a helper module, not an example): minivae's
``Parser`` (a refused flag is one line and exit status 2), counts that must be >= 1 and within the
data, the flags that ``--quick`` replaces (refused beside it rather than ignored), and ``--json PATH``, where an example writes the numbers it prints (tests/test_doc_numbers.py
reruns the examples the docs quote and compares)."""

import argparse
import json
import os

from minivae.cli import Parser
from minivae.fileio import atomic_write

__all__ = ["Parser", "add_json_flag", "check_within", "count", "refuse_beside_quick", "write_json"]


def count(text):
    """An argparse type: an integer >= 1 (a size, a number of epochs or samples)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return value


def add_json_flag(parser, name):
    parser.add_argument("--json", metavar="PATH",
                        help=f"where to write the results as JSON (default: OUT/{name}.json)")


def refuse_beside_quick(parser, args, options):
    """``options`` are the flags (their option strings) that --quick replaces with its own small
    settings: given with --quick, one is refused (exit status 2) instead of being ignored."""
    if not args.quick:
        return
    for option in options:
        dest = option.lstrip("-").replace("-", "_")
        if getattr(args, dest) != parser.get_default(dest):
            parser.error(f"{option} has no effect with --quick, which sets its own small run; drop one of them")


def check_within(parser, option, value, available, source):
    """Refuse (exit status 2) a count larger than what the data holds."""
    if value > available:
        parser.error(f"{option} {value} is more than the {available} images of {source}; pass {available} or less")


def write_json(args, name, results):
    """``results`` as JSON at --json (default OUT/<name>.json), written atomically; returns the path."""
    path = args.json or os.path.join(args.out, f"{name}.json")
    with atomic_write(path, "w") as handle:
        json.dump(results, handle, indent=2)
    print(f"wrote {path}")
    return path
