"""Start-up (issue 25, item 4): ``import minivae`` and ``python -m minivae.train --help`` import none of
the heavy modules that only training or drawing needs (Numba and its LLVM, scipy.special,
matplotlib); they are imported where first used. Checked through ``sys.modules`` in a new Python,
not by timing (the times are in benchmarks/README.md)."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
HEAVY = ("numba", "scipy.special", "matplotlib")
REPORT = f"import json, sys; print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"


def heavy_modules_after(code):
    done = subprocess.run([sys.executable, "-c", code + "\n" + REPORT], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_import_minivae_imports_no_heavy_module():
    assert heavy_modules_after("import minivae") == []


def test_train_help_imports_no_heavy_module():
    code = ("import runpy, sys\nsys.argv = ['minivae.train', '--help']\n"
            "try:\n    runpy.run_module('minivae.train', run_name='__main__', alter_sys=True)\n"
            "except SystemExit:\n    pass")
    assert heavy_modules_after(code) == []


@pytest.mark.parametrize("use, module", [
    ("from minivae import get_backend, VAE\nVAE(input_dim=4, hidden=[3], latent_dim=2, "
     "backend=get_backend('numpy', seed=0)).decode(get_backend('numpy').xp.zeros((1, 2), 'float32'))",
     "scipy.special"),
    ("from minivae.plots import save_samples\nimport numpy, tempfile, os\n"
     "save_samples(os.path.join(tempfile.mkdtemp(), 's.png'), numpy.zeros((4, 4), 'float32'), (2, 2))",
     "matplotlib"),
])
def test_the_heavy_modules_come_when_first_used(use, module):
    """The other half: the stand-ins do import them (here the decoder's sigmoid, a picture)."""
    assert module in heavy_modules_after(use)
