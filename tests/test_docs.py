"""Every formula of docs/*.md parses, and none falls into the traps of GitHub's math rendering.

The parser is math-core (``pip install math-core``, in the ``test`` extra): a maintained LaTeX-math to
MathML converter that is strict where a renderer would guess. It refuses an unknown command, an
unclosed brace or ``\\left`` without ``\\right``, a doubled superscript, and ``\\tag`` outside a
numbered environment. latex2mathml was the other candidate installable from PyPI: it passes unknown
commands through as text and closes an unclosed ``\\frac{1}{2`` silently, so a broken formula would
not fail. A display formula with ``\\tag{N}`` is wrapped in ``\\begin{equation}...\\end{equation}``
before parsing, which is how GitHub's MathJax reads a tagged display; ``aligned`` parses as usual.

The GitHub checks (``rendering_problems``), each a mistake this document once made:

- inline math touching ``*`` or ``**`` emphasis (``*through $z$*``): the emphasis or the math breaks;
- inline math right after a hyphen (``reshape-to-$(L, B, J)$``): not rendered as math;
- a space inside ``\\mathrm{...}`` (``\\mathrm{rel. error}``): math mode drops it ("rel.error");
  write ``\\text{...}``;
- a ``$$`` that is not alone on its line, or an unpaired ``$``;
- a display row wider than ``MAX_DISPLAY_WIDTH``: the row scrolls sideways on a narrow page and
  runs into its ``\\tag``. The width of a row (rows are split at ``\\\\``) is estimated from the
  parser's MathML in character widths: a token counts its characters, a fraction its wider part,
  sub- and superscripts 0.7 of theirs, an operator its character plus the space MathJax puts
  around it, a tag its text. At MathJax's display size 72 character widths are about 650 pixels:
  inside GitHub's text column (about 830 pixels) with a margin for narrower windows. Before this
  check the widest rows of derivation.md measured 80 to 110 and scrolled.

The scanning is done by plain functions, so the tests at the end can run them on text made to fail.
"""

import html
import pathlib
import re
import xml.etree.ElementTree as ElementTree

import pytest
from math_core import LatexError, LatexToMathML

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = sorted((ROOT / "docs").glob("*.md"))
MAX_DISPLAY_WIDTH = 72  # character widths per rendered row of a display formula
SCRIPT_SCALE = 0.7  # sub- and superscripts are drawn at about 70 % size
CONVERTER = LatexToMathML()

CODE_SPAN = re.compile(r"`+[^`]*`+")
INLINE_MATH = re.compile(r"\$([^$]+)\$")
XML_ENTITIES = {"lt", "gt", "amp", "quot", "apos"}
# the space around an operator, in character widths (a thick space on each side of a relation,
# a medium one around a binary operator; a character is about half an em)
OPERATOR_SPACE = dict.fromkeys("=←→≤≥≈<>∼", 1.1) | dict.fromkeys("+−⋅⊙", 0.9)


def formulas(markdown):
    """The math of a markdown text: [(line, "display" or "inline", tex), ...], plus a list of
    problems with the ``$`` delimiters themselves. Fenced code blocks and code spans are skipped."""
    found, problems = [], []
    in_fence, display_start, display_lines = False, None, []
    for number, line in enumerate(markdown.split("\n"), start=1):
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        if display_start is not None:
            if line.strip() == "$$":
                found.append((display_start, "display", "\n".join(display_lines)))
                display_start, display_lines = None, []
            elif "$$" in line:
                problems.append(f"line {number}: '$$' must be alone on its line")
            else:
                display_lines.append(line)
            continue
        if line.strip() == "$$":
            display_start = number
            continue
        text = CODE_SPAN.sub(lambda m: " " * len(m.group(0)), line)
        if "$$" in text:
            problems.append(f"line {number}: '$$' must be alone on its line")
            continue
        if text.count("$") % 2:
            problems.append(f"line {number}: an unpaired '$'")
            continue
        found += [(number, "inline", m.group(1)) for m in INLINE_MATH.finditer(text)]
    if display_start is not None:
        problems.append(f"line {display_start}: '$$' is never closed")
    return found, problems


def to_mathml(tex, display):
    """Parse one formula with math-core; raises LatexError when it does not parse."""
    if display and "\\tag" in tex:
        tex = "\\begin{equation}" + tex + "\\end{equation}"
    return CONVERTER.convert_with_local_state(tex, displaystyle=display)


def parse_problems(markdown, name="doc"):
    """Every formula that math-core refuses, as "name:line: first line of the error"."""
    found, problems = formulas(markdown)
    problems = [f"{name}:{p}" for p in problems]
    for line, kind, tex in found:
        try:
            to_mathml(tex, kind == "display")
        except LatexError as error:
            message = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip().splitlines()[0]
            problems.append(f"{name}:{line}: {kind} formula does not parse: {message}  [{tex.strip()[:60]}]")
    return problems


def rendered_width(node):
    """Estimated width, in character widths, of a MathML element (see the module docstring)."""
    children = list(node)
    tag = node.tag
    if tag in ("mi", "mn", "mtext", "ms"):
        return len((node.text or "").strip())
    if tag == "mo":  # an operator, with the space MathJax puts around relations and binary operators
        text = (node.text or "").strip()
        spaced = text in OPERATOR_SPACE and node.get("lspace") != "0"
        return len(text) + (OPERATOR_SPACE[text] if spaced else 0.0)
    if tag == "mspace":
        em = re.match(r"([\d.]+)em", node.get("width", ""))
        return 2 * float(em.group(1)) if em else 0.0  # a character is about half an em
    if tag == "mfrac":
        return max(rendered_width(children[0]), rendered_width(children[1]))
    if tag in ("msub", "msup", "msubsup"):
        return rendered_width(children[0]) + SCRIPT_SCALE * max(rendered_width(c) for c in children[1:])
    if tag in ("munder", "mover", "munderover"):
        return max([rendered_width(children[0])] + [SCRIPT_SCALE * rendered_width(c) for c in children[1:]])
    if tag == "mtable":
        return max((rendered_width(row) for row in children), default=0.0)
    return sum(rendered_width(c) for c in children)  # a row, a cell, a group: side by side


def display_width(tex):
    """The width of the widest rendered row of a display formula (tag included)."""
    mathml = to_mathml(tex, display=True)
    # MathML's named entities (&ApplyFunction; ...) are not XML: turn all but XML's own into characters
    mathml = re.sub(r"&([A-Za-z]+);",
                    lambda m: m.group(0) if m.group(1) in XML_ENTITIES else html.unescape(m.group(0)), mathml)
    return rendered_width(ElementTree.fromstring(mathml))


def rendering_problems(markdown, name="doc"):
    """The GitHub pitfalls of the module docstring, as "name:line: message" strings."""
    found, problems = formulas(markdown)
    problems = [f"{name}:{p}" for p in problems]
    lines = markdown.split("\n")
    for line, kind, tex in found:
        if re.search(r"\\mathrm\{[^}]*\s[^}]*\}", tex):
            problems.append(f"{name}:{line}: a space inside \\mathrm{{...}} is dropped; use \\text{{...}}: {tex[:60]}")
        if kind == "display":
            try:
                width = display_width(tex)
            except LatexError:
                continue  # parse_problems reports it
            if width > MAX_DISPLAY_WIDTH:
                problems.append(f"{name}:{line}: display formula about {width:.0f} characters wide "
                                f"(limit {MAX_DISPLAY_WIDTH}): break it into rows with aligned")
            continue
        text = CODE_SPAN.sub(lambda m: " " * len(m.group(0)), lines[line - 1])
        for match in INLINE_MATH.finditer(text):
            if match.group(1) != tex:
                continue  # another formula of the same line: checked in its own turn
            before, after = text[match.start() - 1:match.start()], text[match.end():match.end() + 1]
            if before == "*" or after == "*":
                problems.append(f"{name}:{line}: inline math touches '*' emphasis: {match.group(0)[:40]}")
            if before == "-":
                problems.append(f"{name}:{line}: inline math right after a hyphen: {match.group(0)[:40]}")
    return problems


# ------------------------------------------------------------------------------------------------
# The documents
# ------------------------------------------------------------------------------------------------

def test_there_are_docs_with_formulas():
    assert DOCS, "no docs/*.md found"
    derivation = (ROOT / "docs" / "derivation.md").read_text(encoding="utf-8")
    found, _ = formulas(derivation)
    assert sum(kind == "display" for _, kind, _ in found) > 50
    assert sum(kind == "inline" for _, kind, _ in found) > 300


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_every_formula_parses(path):
    problems = parse_problems(path.read_text(encoding="utf-8"), path.name)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_no_github_rendering_pitfalls(path):
    problems = rendering_problems(path.read_text(encoding="utf-8"), path.name)
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------------------------------------
# The checks fail when they should
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("broken", [
    r"\frac{1}{2",                      # an unclosed brace
    r"\left( x",                        # \left without \right
    r"x^2^3",                           # a doubled superscript
    r"\operatornme{relu}(x)",           # a misspelt command
    r"\mathbb{E}_{q} \left[ \log p(x) \right",   # \right without its delimiter
])
def test_a_broken_inline_formula_fails(broken):
    assert parse_problems(f"Some text ${broken}$ and more.\n")


def test_a_broken_display_formula_fails_and_names_its_line():
    good = "Text.\n\n$$\n\\mathrm{KL} = -\\frac{1}{2} \\sum_{j=1}^{J} x_j \\tag{7}\n$$\n"
    assert parse_problems(good) == []
    problems = parse_problems(good.replace("\\frac{1}{2}", "\\frac{1}{2"))
    assert len(problems) == 1 and problems[0].startswith("doc:3: display formula does not parse")


def test_a_tag_parses_only_in_a_display():
    assert parse_problems("$$\n\\begin{aligned}\na &= b \\\\\nc &= d\n\\end{aligned} \\tag{4}\n$$\n") == []
    assert parse_problems("inline $a = b \\tag{4}$\n")


def test_breaking_the_real_document_fails():
    """Break one formula of derivation.md on purpose: the parse test must fail on that line."""
    text = (ROOT / "docs" / "derivation.md").read_text(encoding="utf-8")
    old = "dx = dy \\odot [x \\gt 0] \\tag{13}"
    assert text.count(old) == 1
    line = text[:text.index(old)].count("\n")  # the '$$' line above the formula
    problems = parse_problems(text.replace(old, "dx = dy \\odot [x \\gt 0 \\tag{13}}"))
    assert [p.split(":")[1] for p in problems] == [str(line)]


@pytest.mark.parametrize("markdown, message", [
    ("the contributions *through $z$* only", "touches '*'"),
    ("- **$K = 1$ gives the ELBO**: and so on", "touches '*'"),
    ("the reshape-to-$(L, B, J)$ of section 1", "after a hyphen"),
    ("$$\n\\mathrm{rel. error} = 1\n$$", "space inside \\mathrm"),
    ("price: $5 only", "unpaired"),
    ("$$ x = 1 $$", "alone on its line"),
    ("$$\nx = 1\n", "never closed"),
    ("$$\n" + " + ".join(f"\\mathrm{{term}}_{{{k}}}" for k in range(16)) + "\n$$", "characters wide"),
])
def test_rendering_pitfalls_are_found(markdown, message):
    problems = rendering_problems(markdown)
    assert any(message in p for p in problems), problems


def test_clean_markdown_has_no_pitfalls():
    markdown = ("Math $z_j$, the *batch loss* and **bold**, `code with $dollars$`, $j$-th, and\n\n"
                "$$\n\\begin{aligned}\na &= \\frac{\\mathrm{lr} \\cdot \\hat{m}}{\\sqrt{\\hat{v}} + \\epsilon} \\\\\n"
                "b &= \\text{rel. error}\n\\end{aligned} \\tag{19}\n$$\n\n```python\nx = '$'\n```\n")
    assert rendering_problems(markdown) == []
    assert parse_problems(markdown) == []


def test_the_width_estimate_splits_rows_and_reads_fractions():
    one_row = " + ".join(f"x_{{{k}}}" for k in range(30))
    two_rows = ("\\begin{aligned} a &= " + " + ".join(f"x_{{{k}}}" for k in range(15)) + " \\\\ b &= "
                + " + ".join(f"x_{{{k}}}" for k in range(15, 30)) + " \\end{aligned}")
    assert 0.4 < display_width(two_rows) / display_width(one_row) < 0.6  # the wider of two halves
    assert display_width("\\frac{a + b + c + d}{e}") == pytest.approx(display_width("a + b + c + d"))
