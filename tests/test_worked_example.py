"""Section 12 of docs/derivation.md, the worked example, agrees with the code number for number.

The section gives the command that reproduces it (``python examples/trace_gradients.py --dims 1 1 1
...``) and tables whose rows start with the name the script prints (`dW3`, `dmu via z`, ...). The
tests run that very command (in-process), read the script's output, and check

- that every value the script prints appears in the tables, under its name, with the same number
  (both are written with 6 significant digits, so they must be equal, digit for digit);
- that every "By hand" entry of the tables, evaluated as arithmetic and rounded to 6 significant
  digits, gives the row's value (the numerical check of the head's gradient uses ``F``, built here
  from the library's eq. (5) and (7)).

The readers are plain functions, so the tests at the end can run them on a section made to fail.
"""

import ast
import contextlib
import importlib.util
import io
import math
import pathlib
import re
import shlex

import numpy as np
import pytest

from minivae.gaussian import kl_divergence, reparameterize

ROOT = pathlib.Path(__file__).resolve().parent.parent
DERIVATION = ROOT / "docs" / "derivation.md"
SCRIPT = ROOT / "examples" / "trace_gradients.py"

# a label line of the script: "dW3 = z^T da3      eq. (12)      shape (1, 1)"
LABEL = re.compile(r"^(?P<label>\S.*?)\s{2,}(?:eq\. \(\d+\)\s+)?shape \((?P<shape>[0-9, ]*)\)$")
NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?")


def section(markdown, number):
    """The text of section ``number`` (from its '## N.' heading to the next '## ' heading)."""
    match = re.search(rf"^## {number}\. .*?(?=^## |\Z)", markdown, re.MULTILINE | re.DOTALL)
    assert match, f"no section {number}"
    return match.group(0)


def command_of(text):
    """The arguments of the ``python examples/trace_gradients.py ...`` line of a section."""
    (line,) = [line for line in text.splitlines() if line.startswith("python examples/trace_gradients.py")]
    return shlex.split(line)[2:]


def run_script(args):
    """Run examples/trace_gradients.py's main(args) in-process; return (exit status, output)."""
    spec = importlib.util.spec_from_file_location("trace_gradients", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = module.main(args)
    return status, out.getvalue()


def printed_values(output):
    """{name: [numbers]} for every labelled array the script prints. The name is the label up to
    ' = ' or a double space ("dW3", "dmu via z", "eps"); a gradient's numbers are the analytic ones
    (the left column, beside the finite difference)."""
    values, name = {}, None
    for line in output.splitlines():
        label = LABEL.match(line)
        if label:
            name = re.split(r" = |  ", label["label"])[0].strip()
            continue
        if name is None or not line.startswith("    ") or "backward (analytic)" in line:
            continue
        if "rel. error" in line:
            continue
        array = line.strip().split("   ")[0]  # the analytic column
        values.setdefault(name, []).extend(float(n) for n in NUMBER.findall(array))
    return values


def table_rows(text):
    """The rows of the section's tables whose first cell is a `code name`:
    [(name, by_hand or None, value), ...] with by_hand and value the TeX between the dollars."""
    rows, header = [], None
    for line in text.splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
            continue
        name = re.fullmatch(r"`([^`]+)`", cells[0])
        if not name:
            continue  # the |---| line
        row = dict(zip(header, cells))
        by_hand = row.get("By hand")
        rows.append((name.group(1), by_hand and by_hand.strip("$"), row["Value"].strip("$")))
    return rows


# TeX of the "By hand" and "Value" cells -> Python arithmetic
TEX_TO_PYTHON = [(r"\cdot", "*"), (r"\operatorname{relu}", "relu"), (r"\operatorname{sigmoid}", "sigmoid"),
                 (r"\exp", "exp"), (r"\log", "log"), ("^", "**"), ("{", "("), ("}", ")")]
FUNCTIONS = {"relu": lambda t: max(t, 0.0), "sigmoid": lambda t: 1 / (1 + math.exp(-t)), "exp": math.exp,
             "log": math.log}
ALLOWED = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Constant, ast.List, ast.Call, ast.Name, ast.Load,
           ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Pow, ast.USub)


def evaluate(tex, functions):
    """A number or a list of numbers written in TeX arithmetic: "1.5 \\cdot (-0.75)",
    "[1 \\cdot 1 - 0.5, 0]", "5.2 \\cdot 10^{-6}", "\\exp(0)"; only arithmetic and ``functions``."""
    source = tex
    for old, new in TEX_TO_PYTHON:
        source = source.replace(old, new)
    tree = ast.parse(source, mode="eval")
    for node in ast.walk(tree):
        if not isinstance(node, ALLOWED) or (isinstance(node, ast.Name) and node.id not in functions):
            raise ValueError(f"not plain arithmetic: {tex!r}")
    value = eval(compile(tree, "<by hand>", "eval"), {"__builtins__": {}}, dict(functions))
    return [float(v) for v in value] if isinstance(value, list) else [float(value)]


def head_loss(dz):
    """F(mu, logvar) of section 12: the decoder replaced by the straight line of slope dz, plus the
    KL, through the library's eq. (5) and eq. (7) (eps = 1, one data point, J = 1)."""
    def F(mu, logvar):
        mu, logvar = np.array([[mu]]), np.array([[logvar]])
        z = reparameterize(np, mu, logvar, np.ones((1, 1)))
        return float(dz * z[0, 0] + kl_divergence(np, mu, logvar)[0])
    return F


def six_digits(numbers):
    """Numbers rounded to 6 significant digits, as the script prints them and the document writes them."""
    return [float(f"{n:.6g}") + 0.0 for n in numbers]


def mismatches(text, output):
    """Every disagreement between section 12's tables and the script's output, as messages."""
    printed = printed_values(output)
    rows = table_rows(text)
    documented = {name: evaluate(value, {}) for name, _, value in rows}
    problems = [f"{name}: the script prints {printed[name]}, which no table row of the section lists"
                for name in printed if name not in documented]
    functions = dict(FUNCTIONS, F=head_loss(printed["dz"][0]))
    for name, by_hand, value in rows:
        numbers = documented[name]
        if name in printed and numbers != printed[name]:  # both written with 6 significant digits
            problems.append(f"{name}: the document says {numbers}, the script prints {printed[name]}")
        if by_hand is not None:
            computed = six_digits(evaluate(by_hand, functions))
            if numbers != computed:
                problems.append(f"{name}: by hand {by_hand!r} gives {computed}, the document says {numbers}")
    return problems


# ------------------------------------------------------------------------------------------------
# The document and the script
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def worked_example():
    text = section(DERIVATION.read_text(encoding="utf-8"), 12)
    status, output = run_script(command_of(text))
    assert status == 0, output
    return text, output


def test_the_command_is_a_one_unit_network(worked_example):
    text, output = worked_example
    args = command_of(text)
    assert args[args.index("--dims") + 1:args.index("--dims") + 4] == ["1", "1", "1"]
    assert output.startswith("A 1-1-1-1-1 VAE")
    assert "all ok" in output and "identical" in output


def test_every_number_of_section_12_is_the_one_the_code_computes(worked_example):
    text, output = worked_example
    problems = mismatches(text, output)
    assert not problems, "\n".join(problems)
    # the check covers the whole pass: every parameter, every intermediate, both paths into mu
    names = {name for name, _, _ in table_rows(text)}
    assert {"W1", "b4", "a1", "z", "loss", "dz", "dmu via KL", "dlogvar", "dW1", "db1"} <= names
    assert len(printed_values(output)) >= 40


# ------------------------------------------------------------------------------------------------
# The check fails when it should
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("old, new", [
    ("| `dW3` | $dW_3 = z^{\\top} da_3$ | (12) | $1.5 \\cdot (-0.75)$ | $-1.125$ |",
     "| `dW3` | $dW_3 = z^{\\top} da_3$ | (12) | $1.5 \\cdot (-0.75)$ | $-1.25$ |"),      # a value
    ("| (12) | $1.5 \\cdot (-0.75)$ |", "| (12) | $1.5 \\cdot (-0.7)$ |"),               # a by-hand entry
    ("| $0.693147$ |", "| $0.693148$ |"),                                               # the 6th digit
    ("| $[-1, -0.75]$ | $[-1, -0.75]$ |\n| `dW2`", "| $[-0.75, -1]$ | $[-0.75, -1]$ |\n| `dW2`"),  # a swap
    ("| `dlogvar numeric` |", "| `dlogvar numeric, by eye` |"),                         # (harmless rename)
    ("$-0.749995$", "$-0.74999$"),                                                       # the h^2 check
    ("--set b3=-1 ", "--set b3=-0.5 "),                                                  # the command
])
def test_changing_a_number_of_the_section_fails(worked_example, old, new):
    text, output = worked_example
    assert text.count(old) == 1, old
    broken = text.replace(old, new)
    if "--set" in old:
        status, output = run_script(command_of(broken))
    if "by eye" in new:  # renaming a row that is not printed by the script changes nothing
        assert mismatches(broken, output) == []
    else:
        assert mismatches(broken, output), f"changing {old!r} went unnoticed"


def test_a_row_missing_from_the_tables_is_found(worked_example):
    text, output = worked_example
    broken = "\n".join(line for line in text.splitlines() if not line.startswith("| `dg` |"))
    assert any(problem.startswith("dg: the script prints") for problem in mismatches(broken, output))


@pytest.mark.parametrize("tex, value", [
    ("1.5 \\cdot (-0.75)", [-1.125]), ("[1 \\cdot 1 - 0.5, 1 \\cdot 0.5 - 0.5]", [0.5, 0.0]),
    ("0.01^2 / 6 \\cdot 0.3125", [0.01 ** 2 / 6 * 0.3125]), ("5.20833 \\cdot 10^{-6}", [5.20833e-6]),
    ("\\log(1 + \\exp(0)) - 1 \\cdot 0", [math.log(2)]), ("\\operatorname{relu}(-2)", [0.0]),
])
def test_evaluate_reads_tex_arithmetic(tex, value):
    assert evaluate(tex, FUNCTIONS) == pytest.approx(value)


@pytest.mark.parametrize("tex", ["__import__('os')", "\\mu + 1", "open(1)", "x"])
def test_evaluate_refuses_anything_but_arithmetic(tex):
    with pytest.raises((ValueError, SyntaxError)):
        evaluate(tex, FUNCTIONS)


@pytest.mark.parametrize("args, message", [
    (["--dims", "1", "1", "1", "--x", "1", "0"], "--x: expected D = 1 numbers, got 2"),
    (["--dims", "2", "1", "1", "--x", "1", "0", "--eps", "1", "2"], "--eps: expected J = 1 numbers, got 2"),
    (["--dims", "1", "1", "1", "--x", "1", "--eps", "1", "--set", "W2=1"], "--set W2: expected 2 numbers"),
    (["--set", "W9=1"], "NAME one of W1 b1 W2 b2 W3 b3 W4 b4"),
    (["--set", "W1=1,x"], "W1: expected comma-separated numbers"),
    (["--dims", "1", "0", "1"], "every size must be >= 1"),
])
def test_the_script_refuses_bad_sizes_and_values_with_a_clear_message(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_script(args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
