"""Start-up: ``import minivae`` and ``python -m minivae.train --help`` leave the slow imports (Numba
and its LLVM, scipy.special, matplotlib) to where they are first needed. Checked by the modules a fresh
interpreter holds afterwards (``sys.modules``), not by timing, so a loaded machine cannot fail it.
"""

import json
import subprocess
import sys

import pytest

SLOW_IMPORTS = ("numba", "llvmlite", "scipy.special", "matplotlib")

_REPORT = "import json, sys; print(json.dumps(sorted(name for name in {names} if name in sys.modules)))"


def _slow_modules_after(code):
    """Run ``code`` in a fresh interpreter, then list which of SLOW_IMPORTS it imported."""
    script = code + "\n" + _REPORT.format(names=SLOW_IMPORTS)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_import_minivae_imports_none_of_the_slow_modules():
    assert _slow_modules_after("import minivae") == []


@pytest.mark.parametrize("command", ["minivae.train", "minivae.evaluate"])
def test_help_imports_none_of_the_slow_modules(command):
    run_help = (f"import runpy, sys\nsys.argv = [{command!r}, '--help']\ntry:\n"
                f"    runpy.run_module({command!r}, run_name='__main__')\nexcept SystemExit:\n    pass\n"
                "sys.stdout.flush()\nprint()")
    assert _slow_modules_after(run_help) == []


def test_the_report_sees_an_import():
    """The check above can fail: a module imported by the code is listed."""
    assert _slow_modules_after("import scipy.special") == ["scipy.special"]
