"""Every equation the code cites exists in docs/derivation.md, and every backward cites one.

The code cites the derivation as ``eq. (N)`` (or ``Eq. (N)``), also in lists and ranges:
``eq. (4), (6)``, ``eq. (8)-(11)``, ``eq. (3), (7), (8)/(9)``. The scanning is done by plain
functions so that the tests at the end can run them on files made to fail.
"""

import ast
import collections
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DERIVATION = ROOT / "docs" / "derivation.md"
# the library, and the examples that label their output with equation numbers
CITING_FILES = sorted((ROOT / "minivae").rglob("*.py")) + sorted((ROOT / "examples").glob("*.py"))
LIBRARY_FILES = sorted((ROOT / "minivae").rglob("*.py"))

# "eq." then one or more "(N)" joined by "," "-" "/" "and" "or"
CITATION = re.compile(r"\beqs?\.\s*(\(\d+\)(?:\s*(?:,|-|–|/|and\b|or\b)\s*\(\d+\))*)", re.IGNORECASE)
# "eq." not followed by "(number)": a citation the pattern above would silently miss (e.g. "eq. 5");
# the placeholder "eq. (N)", used when writing about citations, is allowed
MALFORMED = re.compile(r"\beqs?\.(?!\s*\((?:\d+|N)\))", re.IGNORECASE)
TAG = re.compile(r"\\tag\{([^}]*)\}")


def cited_numbers(text):
    """The equation numbers cited in ``text``, with the line of each: [(number, line), ...].
    A range ``(8)-(11)`` cites 8, 9, 10 and 11."""
    cited = []
    for match in CITATION.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        for item in re.split(r"\s*(?:,|/|\band\b|\bor\b)\s*", match.group(1)):
            ends = [int(n) for n in re.findall(r"\((\d+)\)", item)]
            if len(ends) == 2:  # a range (a)-(b)
                if ends[0] >= ends[1]:
                    raise ValueError(f"line {line}: the range {item!r} does not increase")
                ends = list(range(ends[0], ends[1] + 1))
            cited.extend((n, line) for n in ends)
    return cited


def tag_problems(markdown):
    """What is wrong with the ``\\tag{N}`` numbering of a markdown text: the tags must be the
    integers 1..N, each exactly once. Returns a list of messages (empty when all is well)."""
    tags = TAG.findall(markdown)
    problems = [f"\\tag{{{t}}} is not a positive integer" for t in tags if not t.strip().isdigit()]
    numbers = [int(t) for t in tags if t.strip().isdigit()]
    counts = collections.Counter(numbers)
    problems += [f"\\tag{{{n}}} appears {c} times" for n, c in sorted(counts.items()) if c > 1]
    if numbers:
        missing = sorted(set(range(1, max(numbers) + 1)) - set(numbers))
        problems += [f"\\tag{{{n}}} is missing" for n in missing]
    else:
        problems.append("no \\tag{N} at all")
    return problems


def tags_of(markdown):
    return {int(t) for t in TAG.findall(markdown) if t.strip().isdigit()}


def unknown_citations(paths, tags):
    """Citations in ``paths`` of equations that are not among ``tags``, and "eq." written in a form
    the scanner cannot read, as "file:line: message" strings."""
    problems = []
    for path in paths:
        text = path.read_text(encoding="utf-8")
        problems += [f"{path.name}:{line}: cites eq. ({n}), which derivation.md does not define"
                     for n, line in cited_numbers(text) if n not in tags]
        problems += [f"{path.name}:{text.count(chr(10), 0, m.start()) + 1}: 'eq.' without a '(N)' after it"
                     for m in MALFORMED.finditer(text)]
    return problems


def is_backward(name, in_class):
    """A function that computes a gradient by hand: a backward, a likelihood's nll_and_grad, or an
    optimizer's step (a method named ``step``)."""
    return "backward" in name or name == "nll_and_grad" or (name == "step" and in_class)


def uncited_backwards(paths):
    """Backward functions and methods (``is_backward``) in ``paths`` whose docstring cites no
    equation, as "file:line qualified.name" strings."""
    found = []

    def visit(node, path, prefix, in_class):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                visit(child, path, f"{prefix}{child.name}.", True)
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if is_backward(child.name, in_class) and not cited_numbers(ast.get_docstring(child) or ""):
                    found.append(f"{path.name}:{child.lineno} {prefix}{child.name}")
                visit(child, path, f"{prefix}{child.name}.", False)

    for path in paths:
        visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)), path, "", False)
    return found


# ------------------------------------------------------------------------------------------------
# The repository
# ------------------------------------------------------------------------------------------------

def test_derivation_tags_are_one_to_n_each_once():
    markdown = DERIVATION.read_text(encoding="utf-8")
    problems = tag_problems(markdown)
    assert not problems, "\n".join(problems)
    assert len(tags_of(markdown)) >= 24


def test_every_cited_equation_exists_in_the_derivation():
    tags = tags_of(DERIVATION.read_text(encoding="utf-8"))
    assert CITING_FILES, "no source files found"
    assert sum(len(cited_numbers(p.read_text(encoding="utf-8"))) for p in CITING_FILES) > 20  # the scan sees them
    problems = unknown_citations(CITING_FILES + [DERIVATION], tags)
    assert not problems, "\n".join(problems)


def test_every_backward_cites_its_equation():
    missing = uncited_backwards(LIBRARY_FILES)
    assert not missing, "these backwards' docstrings cite no eq. (N) of docs/derivation.md: " + ", ".join(missing)


def test_the_backward_scan_sees_the_library_backwards():
    """Guards the scan itself: it must find the backwards we know exist (else it checks nothing)."""
    names = []
    for path in LIBRARY_FILES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef) and is_backward(node.name, True):
                names.append(node.name)
    for expected in ("backward", "reparameterize_backward", "kl_divergence_backward", "nll_and_grad", "step"):
        assert expected in names


# ------------------------------------------------------------------------------------------------
# The scanners fail when they should
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, numbers", [
    ("Eq. (12): dW = x^T dy", [12]),
    ("eq. (4), (6)); x: (B, in)", [4, 6]),
    ("walks back by hand (eq. (10)-(18)), leaving", list(range(10, 19))),
    ("eq. (3), (7), (8)/(9)", [3, 7, 8, 9]),
    ("eq. (16), summed over the L samples as in eq. (18):", [16, 18]),
    ("Adding eq.\n(16) over the samples and eq. (17) once", [16, 17]),
    ("eq. (8) and (10)", [8, 10]),
    ("eqs. (5) and (16)", [5, 16]),
    ("no citation (12) here; dataclass(eq=False); freq. (3)", []),
])
def test_cited_numbers_reads_every_form(text, numbers):
    assert [n for n, _ in cited_numbers(text)] == numbers


def test_a_decreasing_range_is_an_error():
    with pytest.raises(ValueError, match="does not increase"):
        cited_numbers("eq. (11)-(8)")


@pytest.mark.parametrize("markdown, problem", [
    (r"\tag{1} \tag{2} \tag{2} \tag{3}", "appears 2 times"),
    (r"\tag{1} \tag{3}", r"\tag{2} is missing"),
    (r"\tag{1} \tag{a}", "not a positive integer"),
    ("no tags", "no \\tag{N}"),
])
def test_tag_problems_are_found(markdown, problem):
    assert any(problem in p for p in tag_problems(markdown))


def test_unknown_and_malformed_citations_are_found(tmp_path):
    path = tmp_path / "module.py"
    path.write_text('"""Eq. (5) and eq. (99)."""\n# see eq. 7\nx = 1  # eq. (2)-(4)\n', encoding="utf-8")
    problems = unknown_citations([path], tags={1, 2, 3, 5})
    assert problems == ["module.py:1: cites eq. (99), which derivation.md does not define",
                        "module.py:3: cites eq. (4), which derivation.md does not define",
                        "module.py:2: 'eq.' without a '(N)' after it"]


def test_a_backward_without_a_citation_is_found(tmp_path):
    """Copy a library file, strip one backward's citation, and watch the scan name it."""
    source = (ROOT / "minivae" / "layers.py").read_text(encoding="utf-8")
    assert uncited_backwards([ROOT / "minivae" / "gaussian.py"]) == []
    broken = source.replace('"""Eq. (14): ``dx = dy * (1 - y^2)`` with the saved output y."""',
                            '"""``dx = dy * (1 - y^2)`` with the saved output y."""')
    assert broken != source
    path = tmp_path / "layers.py"
    path.write_text(broken, encoding="utf-8")
    assert any(found.endswith(" Tanh.backward") for found in uncited_backwards([path]))

    extra = tmp_path / "extra.py"
    extra.write_text(
        "def my_backward(x):\n    pass\n\n"                                   # no docstring at all
        "class Likelihood:\n    def nll_and_grad(self, y):\n        '''The NLL (8).'''\n\n"  # no 'eq.'
        "class Optimizer:\n    def step(self):\n        '''Eq. (19).'''\n\n"  # cited: fine
        "def step():\n    '''A training step, not an optimizer.'''\n",         # not a method: exempt
        encoding="utf-8")
    assert uncited_backwards([extra]) == ["extra.py:1 my_backward", "extra.py:5 Likelihood.nll_and_grad"]
