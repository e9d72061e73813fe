"""Importing a script as a module (a helper module, not a test file)."""

import importlib.util
import sys


def load_script(folder, name):
    """The script ``folder/name.py`` imported as a module, with ``folder`` on the path while it loads
    (scripts there import their helpers by bare name: examples/, tests/mpi_scripts/)."""
    sys.path.insert(0, str(folder))
    try:
        spec = importlib.util.spec_from_file_location(f"{folder.name}_{name}", folder / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(folder))
    return module
