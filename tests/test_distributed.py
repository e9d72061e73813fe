"""Data-parallel training (minivae/distributed.py) is the same as one process.

The slow tests start real ranks, ``mpiexec -n 2 python tests/mpi_scripts/<script>.py`` (mpi4py and
MPICH from ``pip install -e ".[mpi]"``), and compare with one process: one step's float64 gradient
to 1e-12 relative (a step that allreduces only half the buffer must fail the same comparison), a
2-epoch training run to float32 rounding, and a rank that dies or fails ending the whole job
non-zero within 30 s. The fast tests check, in this process and with stand-ins for MPI and CuPy,
the shards, the one-line messages, and that the GPU path hands NCCL the gradient buffer itself.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import time
import types

import numpy as np
import pytest

from scripts import load_script

from minivae import distributed
from minivae.distributed import Communicator, connect
from minivae.errors import DistributedError

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "tests" / "mpi_scripts"
RANKS = 2


def _mpiexec(script, *args, timeout=120):
    """Run ``mpiexec -n 2 python script args`` from the repository root; (exit status, stderr, seconds)."""
    launcher = shutil.which("mpiexec")
    if launcher is None:
        pytest.fail('mpiexec is not on PATH: install the mpi extra, `pip install -e ".[mpi]"`')
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    start = time.monotonic()
    done = subprocess.run([launcher, "-n", str(RANKS), sys.executable, str(SCRIPTS / script), *map(str, args)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    return done.returncode, done.stderr, time.monotonic() - start


@pytest.mark.slow
def test_one_step_on_two_ranks_gives_the_gradient_of_the_whole_batch(tmp_path):
    out = tmp_path / "step.json"
    code, stderr, _ = _mpiexec("gradient_step.py", out)
    assert code == 0, stderr
    result = json.loads(out.read_text())
    assert result["size"] == RANKS
    assert set(result["cases"]) == {"mlp", "mlp-2-samples", "iwae", "one-row"}
    for name, (gradient_error, loss_error, broken_error) in result["cases"].items():
        assert gradient_error <= 1e-12, name
        assert loss_error <= 1e-12, name
        assert broken_error > 1e-3, name  # the same comparison catches a step that allreduces half the buffer
    assert result["mismatch"].startswith("after one changed value: the parameters of rank(s) [1] differ")


@pytest.mark.slow
def test_two_epochs_on_two_ranks_equal_two_epochs_in_one_process(tmp_path):
    """float32: the parameters to float32 rounding, the losses to 1e-4; float64: both to 1e-12."""
    out = tmp_path / "run.npz"
    code, stderr, _ = _mpiexec("train_loop.py", out)
    assert code == 0, stderr
    ranks = np.load(out)
    assert int(ranks["size"]) == RANKS
    loop = load_script(SCRIPTS, "train_loop")
    for dtype, parameter_tolerance, loss_tolerance in (("float32", 16 * np.finfo(np.float32).eps, 1e-4),
                                                      ("float64", 1e-12, 1e-12)):
        alone = loop.train(None, dtype)
        scale = np.max(np.abs(alone["parameters"]))
        assert np.max(np.abs(ranks[f"parameters_{dtype}"] - alone["parameters"])) <= parameter_tolerance * scale
        initial = loop.tiny_model(dtype, seed=loop.SEED, hidden=(12,), latent_dim=3, n_samples=2)
        moved = np.max(np.abs(alone["parameters"] - initial.buffer.data))
        assert moved > 1000 * parameter_tolerance * scale  # training moved them far more than the tolerance
        np.testing.assert_allclose(ranks[f"train_{dtype}"], alone["train"], rtol=loss_tolerance)
        np.testing.assert_allclose(ranks[f"test_{dtype}"], alone["test"], rtol=loss_tolerance)
        assert alone["train"].shape == (loop.EPOCHS, 3) and alone["test"].shape == (loop.EPOCHS, 2)


@pytest.mark.slow
def test_a_killed_rank_ends_the_whole_job_within_30_seconds(tmp_path):
    code, stderr, seconds = _mpiexec("train_loop.py", tmp_path / "run.npz", "kill-rank-1", timeout=60)
    assert code != 0 and seconds < 30, (code, seconds, stderr)
    assert not (tmp_path / "run.npz").exists()  # rank 0 never finished


@pytest.mark.slow
def test_a_failing_rank_ends_every_rank_with_one_line_naming_it(tmp_path):
    code, stderr, seconds = _mpiexec("train_loop.py", tmp_path / "run.npz", "raise-rank-1", timeout=60)
    assert code != 0 and seconds < 30, (code, seconds, stderr)
    assert "minivae: rank 1 of 2 failed (RuntimeError: rank 1 fails on purpose); ending all 2 ranks" in stderr


def test_without_mpi4py_one_line_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # `import mpi4py` raises ImportError
    with pytest.raises(DistributedError) as caught:
        connect({"PMI_RANK": "0"})
    message = str(caught.value)
    assert "\n" not in message and 'pip install "minivae[mpi]"' in message


def test_without_a_launcher_one_line_says_how_to_launch(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", types.ModuleType("mpi4py"))  # found; MPI never started
    with pytest.raises(DistributedError) as caught:
        connect({})
    message = str(caught.value)
    assert "\n" not in message and "mpiexec -n N python -m minivae.train --distributed" in message


class FakeWorld:
    """What Communicator uses of an MPI communicator, for one rank of ``size`` on one machine."""

    def __init__(self, rank, size, unique_id_from_rank_0=b"id"):
        self.rank, self.size, self.unique_id_from_rank_0 = rank, size, unique_id_from_rank_0

    def Get_rank(self):
        return self.rank

    def Get_size(self):
        return self.size

    def Split_type(self, kind, key):
        return self  # every rank on one machine: local rank = rank

    def Free(self):
        pass

    def allgather(self, value):
        return [value] * self.size

    def bcast(self, value, root):
        return value if self.rank == root else self.unique_id_from_rank_0


FAKE_MPI = types.SimpleNamespace(COMM_TYPE_SHARED=0, IN_PLACE=object(), SUM=object())


@pytest.mark.parametrize("size", [1, 2, 3, 5])
def test_the_shards_cut_each_batch_into_contiguous_pieces_in_rank_order(size):
    for rows in range(0, 12):
        shards = [Communicator(FAKE_MPI, FakeWorld(rank, size)).shard(rows) for rank in range(size)]
        covered = [row for shard in shards for row in range(rows)[shard]]
        assert covered == list(range(rows))
        sizes = [len(range(rows)[shard]) for shard in shards]
        assert max(sizes) - min(sizes) <= 1


def test_a_rank_sees_only_the_gpu_of_its_local_rank():
    environ = {}
    distributed._pin_gpu(environ, 1)
    assert environ["CUDA_VISIBLE_DEVICES"] == "1"
    environ = {"CUDA_VISIBLE_DEVICES": "4,6"}
    distributed._pin_gpu(environ, 1)
    assert environ["CUDA_VISIBLE_DEVICES"] == "6"
    environ = {"CUDA_VISIBLE_DEVICES": "4"}
    distributed._pin_gpu(environ, 1)
    assert environ["CUDA_VISIBLE_DEVICES"] == ""  # more ranks than GPUs: this one gets none


class FakeDeviceArray:
    """A CuPy-like float array (``.data.ptr``, ``.size``, ``.dtype``, ``.flags``) over NumPy memory,
    counting copies to the host (``get``)."""

    host_copies = 0

    def __init__(self, values):
        self.values = values
        self.data = types.SimpleNamespace(ptr=values.ctypes.data)

    size = property(lambda self: self.values.size)
    dtype = property(lambda self: self.values.dtype)
    flags = property(lambda self: self.values.flags)

    def get(self):
        FakeDeviceArray.host_copies += 1
        return self.values.copy()


def _fake_cupy(calls, peer_gradient):
    """A package ``fakecupy`` with ``cuda.nccl``: NcclCommunicator.allReduce adds ``peer_gradient``
    (the other rank's) into the memory it is given, as NCCL's sum over two ranks would."""
    def all_reduce(communicator, sendbuf, recvbuf, count, datatype, op, stream):
        calls.append(("allReduce", sendbuf, recvbuf, count, datatype, op, stream))
        memory = np.ctypeslib.as_array((np.ctypeslib.ctypes.c_float * count).from_address(recvbuf))
        memory += peer_gradient

    nccl = types.ModuleType("fakecupy.cuda.nccl")
    nccl.available, nccl.NCCL_FLOAT32, nccl.NCCL_FLOAT64, nccl.NCCL_SUM = True, 7, 8, 0
    nccl.get_unique_id = lambda: calls.append(("get_unique_id",)) or b"drawn here"
    nccl.NcclCommunicator = type("NcclCommunicator", (), {
        "__init__": lambda self, ndev, commId, rank: calls.append(("NcclCommunicator", ndev, commId, rank)),
        "allReduce": all_reduce})
    cuda = types.ModuleType("fakecupy.cuda")
    cuda.nccl = nccl
    cuda.runtime = types.SimpleNamespace(getDeviceCount=lambda: 1)
    cuda.Device = lambda device: types.SimpleNamespace(use=lambda: calls.append(("use device", device)))
    cuda.get_current_stream = lambda: types.SimpleNamespace(ptr=1234)
    xp = types.ModuleType("fakecupy")
    xp.cuda = cuda
    return {"fakecupy": xp, "fakecupy.cuda": cuda, "fakecupy.cuda.nccl": nccl}


def test_on_gpus_the_gradient_buffer_itself_goes_to_nccl_allreduce(monkeypatch):
    calls, peer = [], np.arange(6, dtype=np.float32)
    for name, module in _fake_cupy(calls, peer).items():
        monkeypatch.setitem(sys.modules, name, module)
    seeds = []
    backend = types.SimpleNamespace(name="cupy", xp=sys.modules["fakecupy"], dtype=np.dtype("float32"), seed=9,
                                    with_seed=lambda seed: seeds.append(seed) or backend)
    comm = Communicator(FAKE_MPI, FakeWorld(rank=1, size=2, unique_id_from_rank_0=b"from rank 0"))
    comm.gpu_pinned = True
    assert comm.attach(backend) is backend and seeds == [9]  # its generator made again, on its GPU
    assert calls == [("use device", 0), ("NcclCommunicator", 2, b"from rank 0", 1)]
    own = np.full(6, 0.5, dtype=np.float32)
    buffer = types.SimpleNamespace(grad=FakeDeviceArray(own))
    comm.allreduce_gradients(buffer)
    assert calls[2] == ("allReduce", own.ctypes.data, own.ctypes.data, 6, 7, 0, 1234)  # in place, on its stream
    np.testing.assert_array_equal(own, 0.5 + peer)  # the sum landed in the buffer itself
    assert FakeDeviceArray.host_copies == 0 and len(calls) == 3  # ONE allreduce, no copy to the host


def test_ranks_that_built_different_backends_are_refused():
    class Disagreeing(FakeWorld):
        def allgather(self, value):
            return [value, ("numpy", value[1], value[2])]

    backend = types.SimpleNamespace(name="cupy", dtype=np.dtype("float32"), seed=0)
    with pytest.raises(DistributedError, match="rank 0: cupy float32 seed 0, rank 1: numpy float32 seed 0"):
        Communicator(FAKE_MPI, Disagreeing(0, 2)).attach(backend)
