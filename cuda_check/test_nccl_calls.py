"""The NCCL calls of the GPU ranks (minivae/distributed.py) exist in the installed CuPy and bind to
its signatures, with no device touched. They are written out as ``xp.cuda.nccl.<name>(...)``, the
communicator's methods through its class (``NcclCommunicator.allReduce(communicator, ...)``), so
that the source collector of cupy_calls.py sees each one with its arguments."""

import pathlib

import cupy.cuda.nccl
import pytest
from cupy_calls import collect_source, problems, unchecked

import minivae

SOURCE = pathlib.Path(minivae.__file__).parent / "distributed.py"
CALLED = {"cuda.nccl.NcclCommunicator": 3, "cuda.nccl.NcclCommunicator.allReduce": 7,
          "cuda.nccl.get_unique_id": 0}  # name: positional arguments passed


def test_nccl_is_loaded_so_its_names_can_be_checked():
    assert cupy.cuda.nccl.available, 'CuPy cannot load NCCL: pip install -e ".[cuda-check]" (nvidia-nccl-cu13)'


def test_every_nccl_call_of_the_gpu_ranks_binds_to_cupys_signature():
    calls = [call for call in collect_source(SOURCE.read_text(), "minivae/distributed.py")
             if call.namespace == "xp" and call.name.startswith("cuda.")]
    assert {call.name: call.n_positional for call in calls if call.name in CALLED} == CALLED
    assert {"cuda.nccl.NCCL_SUM", "cuda.nccl.NCCL_FLOAT32", "cuda.nccl.NCCL_FLOAT64", "cuda.Device",
            "cuda.get_current_stream"} <= {call.name for call in calls}
    assert [message for call in calls for message in problems(call)] == []
    assert [call for call in calls if unchecked(call)] == []  # arguments bound, not only names found


@pytest.mark.parametrize(("source", "expected"), [
    ("def f(xp, c, a):\n    xp.cuda.nccl.NcclCommunicator.allReduce(c, a, a, 3, 7, 0)\n", "does not fit"),
    ("def f(xp, uid):\n    return xp.cuda.nccl.NcclCommunicator(2, uid)\n", "does not fit"),
    ("def f(xp, c, a):\n    xp.cuda.nccl.NcclCommunicator.allreduce(c, a, a, 3, 7, 0, 0)\n", "CuPy lacks it"),
    ("def f(xp):\n    return xp.cuda.nccl.NCCL_FLOAT128\n", "CuPy lacks it"),
])
def test_an_nccl_call_cupy_does_not_take_is_caught(source, expected):
    assert any(expected in message for call in collect_source(source, "mutant.py") for message in problems(call))
