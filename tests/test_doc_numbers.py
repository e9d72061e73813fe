"""Every result the docs quote comes from a command, and still does (issue 26, item 2).

Each entry of ``QUOTED`` names a document, the command it quotes (which must appear in it verbatim),
the first line of the output block it quotes (a fenced block of lines as the command prints them) and
the tolerance the document states beside it ("to within T"). The slow test reruns the command (on
the packaged fashion-mnist-small, or on made-up data, so CI can) into a temporary folder and compares
the block, line by line, with what the command prints now: a doc line matches the printed line of the
same words, and each of its numbers must equal the printed one to the digits the doc prints (half a
unit of its last digit) or to the stated tolerance, whichever is larger. Counts (numbers without a
decimal point) must be equal. So a quoted number that no longer reproduces fails CI.

The tolerances cover the two CPU paths: minivae's fused Numba kernels and the plain NumPy code
(``MINIVAE_KERNELS=plain``) round float32 differently, and training turns that into differences of a
few hundredths of a nat (measured: ``quoted_spread`` below prints both paths' numbers).
"""

import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")

# (document, command as quoted, first line of the quoted output block, tolerance stated in the document)
QUOTED = [
    ("examples/README.md", "python examples/manifold.py --dataset fashion-mnist-small",
     "test loss per epoch (nats per image):", 0.1),
    ("examples/README.md", "python examples/latent_size.py --dataset fashion-mnist-small",
     "  J   train ELBO   test ELBO", 0.2),
    ("examples/README.md", "python examples/frey_face.py --synthetic", "nats per test point", 0.01),
    ("examples/README.md", "python examples/iwae_vs_vae.py --dataset fashion-mnist-small --iw-samples 1000",
     "| model | K |", 4.0),
    ("examples/README.md", "python -m minivae.evaluate results/fms3 --limit 500", "nats per test point", 0.2),
]
SETUP = {  # what a quoted command needs run before it, as the document says
    "python -m minivae.evaluate results/fms3 --limit 500":
        "python -m minivae.train --dataset fashion-mnist-small --epochs 3 --out results/fms3",
}


def quoted_block(text, first_line, command):
    """The lines of the fenced block of ``text`` whose first line starts with ``first_line`` and that
    follows the last mention of ``command`` before it (the block's own lines, up to its closing
    fence), and the prose between the two (where the block's tolerance is stated)."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if i and lines[i - 1].startswith("```")
              and line.startswith(first_line) and command in "\n".join(lines[max(0, i - 12):i])]
    assert len(starts) == 1, f"one fenced block starting with {first_line!r} after `{command}` expected, " \
                             f"found {len(starts)}"
    prose = "\n".join(lines[max(0, starts[0] - 12):starts[0]])
    block = []
    for line in lines[starts[0]:]:
        if line.startswith("```"):
            break
        block.append(line)
    return block, prose


def words(line):
    return " ".join(NUMBER.sub("#", line).split())


def allowed_error(text, tolerance):
    """Half a unit of the last digit ``text`` prints, or ``tolerance``; 0 for a count (no decimal point)."""
    if "." not in text:
        return 0.0
    return max(tolerance, 0.5 * 10.0 ** -len(text.split(".")[1]))


def differences(doc_lines, printed_lines, tolerance):
    """The numbers of the doc's lines that the printed lines do not reproduce, as readable strings. Doc
    lines with the same words (the rows of a table) are matched in order with the printed ones."""
    problems, seen = [], {}
    for doc_line in doc_lines:
        if not NUMBER.search(doc_line):
            continue
        shape = words(doc_line)
        matches = [line for line in printed_lines if words(line) == shape]
        index = seen[shape] = seen.get(shape, -1) + 1  # the k-th doc line of a shape: the k-th printed one
        if index >= len(matches):
            problems.append(f"no printed line like {doc_line!r}")
            continue
        for quoted, printed in zip(NUMBER.findall(doc_line), NUMBER.findall(matches[index])):
            if abs(float(quoted) - float(printed)) > allowed_error(quoted, tolerance):
                problems.append(f"{doc_line.strip()!r}: quoted {quoted}, now {printed}")
    return problems


def rerun(command, folder):
    """Run the quoted command (and what it needs first) in ``folder`` with the repository's code; its stdout."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MINIVAE_NO_DOWNLOAD": "1"}
    output = []
    for line in (SETUP.get(command), command):
        if line is None:
            continue
        argv = shlex.split(line)
        argv[0] = sys.executable
        argv = [str(ROOT / arg) if arg.startswith("examples/") else arg for arg in argv]
        if "examples/" in line and "--out" not in argv:
            argv += ["--out", str(folder / "out")]
        done = subprocess.run(argv, cwd=folder, env=env, capture_output=True, text=True, timeout=1200)
        assert done.returncode == 0, f"{line} failed:\n{done.stderr[-3000:]}"
        output.append(done.stdout)
    return "\n".join(output).splitlines()


def checked_block(document, command, first_line, tolerance):
    """The quoted block, once the document is seen to quote the command and state the tolerance."""
    block, prose = quoted_block((ROOT / document).read_text(), first_line, command)
    stated = f"to within {tolerance:g}"
    assert stated in prose, f"{document} must state the tolerance of the block after `{command}` ({stated!r})"
    assert any(NUMBER.search(line) for line in block)
    return block


@pytest.mark.parametrize("document, command, first_line, tolerance", QUOTED, ids=[q[1] for q in QUOTED])
def test_each_quoted_block_names_its_command_and_tolerance(document, command, first_line, tolerance):
    checked_block(document, command, first_line, tolerance)


@pytest.mark.slow
@pytest.mark.parametrize("document, command, first_line, tolerance", QUOTED, ids=[q[1] for q in QUOTED])
def test_the_numbers_the_docs_quote_still_come_out(document, command, first_line, tolerance, tmp_path):
    block = checked_block(document, command, first_line, tolerance)
    assert differences(block, rerun(command, tmp_path), tolerance) == []


def test_a_changed_quoted_number_is_caught():
    """The comparison itself: a doc number off by more than its tolerance (or a count off by one) is
    reported; one within it is not."""
    doc = ["  J   train ELBO   test ELBO", "  2      -294.09     -295.97", "| VAE | 5 | 14 of 50 |"]
    printed = ["  J   train ELBO   test ELBO", "  2      -294.12     -295.97", "| VAE | 5 | 15 of 50 |"]
    assert differences(doc[:2], printed[:2], 0.1) == []
    assert len(differences(doc[:2], printed[:2], 0.01)) == 1
    assert len(differences(doc, printed, 0.1)) == 1
    assert differences(["no such line 1.00"], printed, 0.1) == ["no printed line like 'no such line 1.00'"]
    rows = ["  2      -294.09     -295.97", "  5      -292.54     -293.34"]
    assert differences(rows, ["header"] + rows, 0.1) == []
    assert len(differences(rows, ["header"] + rows[::-1], 0.1)) == 6
