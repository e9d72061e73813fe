"""The cuda-check tests: minivae's CUDA kernels compiled by NVRTC and its CuPy calls checked against
the installed CuPy, on a machine without a GPU (``pip install -e ".[test,cuda-check]"``, then
``python -m pytest -q cuda_check``).

CUDA_VISIBLE_DEVICES is emptied before CuPy is imported, so that these checks cannot touch a GPU even
on a machine that has one: whatever they need, they get without a device.
"""

import os
import pathlib
import sys

os.environ["CUDA_VISIBLE_DEVICES"] = ""
# The device guard of the main suite (tests/device_guard.py) records the calls of the device path.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests"))
