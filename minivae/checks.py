"""One rule per kind of setting, shared by the library's constructors and by what is read back from
files (a run's config.json, a checkpoint's metadata), so that a value is refused the same way
wherever it comes from, before anything is built with it.

A rule takes a value and returns None when it is fine, else a phrase saying what it must be
("must be an integer >= 1"). ``first_problem`` applies a dict of rules to a dict of values.
"""

import math
import numbers


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def positive_int(value):
    return None if _is_int(value) and value >= 1 else "must be an integer >= 1"


def nonnegative_int(value):
    return None if _is_int(value) and value >= 0 else "must be an integer >= 0"


def positive_number(value):
    return None if _is_real(value) and math.isfinite(value) and value > 0 else "must be a finite number > 0"


def nonnegative_number(value):
    return None if _is_real(value) and math.isfinite(value) and value >= 0 else "must be a finite number >= 0"


def finite_number(value):
    return None if _is_real(value) and math.isfinite(value) else "must be a finite number"


def below_one(value):
    return None if _is_real(value) and 0 <= value < 1 else "must be a number in [0, 1)"


def open_fraction(value):
    return None if _is_real(value) and 0 < value < 1 else "must be a number in (0, 1)"


def text(value):
    return None if isinstance(value, str) else "must be a string"


def one_of(choices):
    """One of the names ``choices``: a tuple, or a function returning it (for names whose module only the
    commands import, looked up when a value is checked)."""
    def rule(value):
        names = choices() if callable(choices) else choices
        return None if isinstance(value, str) and value in names else f"must be one of {', '.join(names)}"
    return rule


def optional(rule):
    """``rule``, or None (JSON null) for "not set"."""
    def check(value):
        return None if value is None else rule(value)
    return check


def list_of(rule, allow_empty=False, length=None):
    """A list (or tuple) whose every item passes ``rule``; of exactly ``length`` items when given."""
    def check(value):
        if length is not None and not (isinstance(value, (list, tuple)) and len(value) == length):
            return f"must be a list of {length} items; each item {rule(None)}"
        if not isinstance(value, (list, tuple)) or (not value and not allow_empty):
            return f"must be a {'' if allow_empty else 'non-empty '}list; each item {rule(None)}"
        problems = [rule(item) for item in value]
        return next((f"holds {item!r}: each item {problem}" for item, problem in zip(value, problems) if problem),
                    None)
    check.item_rule = rule  # what a command-line flag giving one item checks
    return check


def or_literal(literal, rule):
    """``literal`` itself, or a value that passes ``rule`` (e.g. a variance: "learned" or a number > 0)."""
    def check(value):
        problem = None if value == literal else rule(value)
        return None if problem is None else f"must be {literal!r} or {problem.removeprefix('must be ')}"
    return check


def first_problem(values, rules, required=()):
    """``(field, "field=<value> <what it must be>")`` for the first field of ``values`` (a dict) that
    breaks its rule or that ``required`` names but ``values`` lacks; None when all are fine. Fields
    without a rule are not checked."""
    for field in required:
        if field not in values:
            return field, f"{field} is missing"
    for field, rule in rules.items():
        if field in values:
            problem = rule(values[field])
            if problem is not None:
                return field, f"{field}={values[field]!r} {problem}"
    return None
