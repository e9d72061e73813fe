"""Data-parallel training: one model trained by N processes (ranks) started by an MPI launcher
(section 24 of docs/derivation.md).

Every rank holds the whole model and a random generator seeded alike, so every rank draws the same
permutation of the training set, the same global batch and the same noise eps for it, exactly as
one process would. Each rank then takes its contiguous shard of the global batch's rows
(``Communicator.shard``), runs the model's forward and backward on it, and ONE in-place allreduce
(sum) of the flat gradient buffer leaves on every rank the gradient of the whole batch: the loss is
a sum over datapoints, so the batch gradient is the sum of the shard gradients (eq. (48)). Every
rank then takes the same optimizer step, so the parameters stay the same on every rank
(``check_same_parameters`` proves it, bit for bit).

Engines: MPI through mpi4py on the CPU (``pip install "minivae[mpi]"`` brings mpi4py and MPICH,
whose ``mpiexec`` starts the ranks; a cluster's own MPI works as well); NCCL (``cupy.cuda.nccl``)
between GPUs, each rank on the GPU of its local rank, the gradients never leaving the device.
mpi4py is imported only by ``connect``, so nothing else in minivae needs it. CuPy is reached only
through ``backend.xp``, and every NCCL call is written out as ``xp.cuda.nccl.<name>`` so that the
cuda-check tests check it against the installed CuPy's signatures.

Faults: ``run_ranks`` ends every rank with MPI_Abort when one fails (an exception, or a non-zero
exit status), printing one line that names the rank; and MPICH's ``mpiexec`` ends all ranks when
one dies (killed, out of memory). So no rank waits forever in an allreduce for a peer that is gone.
"""

import hashlib
import importlib
import os
import sys
import time
import traceback

import numpy as np

from .errors import DistributedError
from .fileio import silence
from .model import LossTerms

INSTALL_HINT = 'install it with `pip install "minivae[mpi]"` (mpi4py and the MPICH library and launcher)'
LAUNCH_HINT = "start the ranks with an MPI launcher: `mpiexec -n N python -m minivae.train --distributed ...`"
NCCL_HINT = 'install NCCL with `pip install "nvidia-nccl-cu13>=2.27.7,<3"` (nvidia-nccl-cu12 for CUDA 12)'
# Set in each process by the launchers: MPICH's and Intel MPI's (PMI), Open MPI's, PMIx-based ones (Slurm).
LAUNCHER_VARIABLES = ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK")
ABORT_GRACE_S = 0.5  # how long a failing rank lets its last lines reach the launcher before MPI_Abort


def connect(environ=None):
    """The Communicator of this process, among the ranks the MPI launcher started.

    Raises DistributedError, with one line saying how to install or launch, when mpi4py (or its MPI
    library) is missing or when no MPI launcher started this process. Before CuPy is imported, it
    also makes this rank see only the GPU of its local rank (``CUDA_VISIBLE_DEVICES``), so that its
    CUDA context is created on that GPU alone (see ``Communicator.attach``).
    """
    environ = os.environ if environ is None else environ
    try:
        import mpi4py  # noqa: F401  (the package only: MPI itself starts with ``mpi4py.MPI`` below)
    except ImportError as error:
        raise DistributedError(f"--distributed needs mpi4py ({error}); {INSTALL_HINT}") from None
    if not any(name in environ for name in LAUNCHER_VARIABLES):
        raise DistributedError(f"--distributed: this process was not started by an MPI launcher; {LAUNCH_HINT}")
    try:
        from mpi4py import MPI
    except (ImportError, RuntimeError) as error:  # mpi4py found no MPI library to load
        raise DistributedError(f"--distributed: mpi4py cannot load an MPI library ({error}); {INSTALL_HINT}") from None
    comm = Communicator(MPI, MPI.COMM_WORLD)
    if "cupy" not in sys.modules:
        comm.gpu_pinned = _pin_gpu(environ, comm.local_rank)
    return comm


def _pin_gpu(environ, local_rank):
    """Let this process see only GPU number ``local_rank`` of those visible (all, when
    CUDA_VISIBLE_DEVICES is unset; none, when there are fewer): it becomes its device 0."""
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        environ["CUDA_VISIBLE_DEVICES"] = str(local_rank)
    else:
        ids = [entry.strip() for entry in visible.split(",") if entry.strip()]
        environ["CUDA_VISIBLE_DEVICES"] = ids[local_rank] if local_rank < len(ids) else ""
    return True


class Communicator:
    """This rank among ``size`` ranks: ``rank`` (0 .. size-1), ``local_rank`` (its number among the
    ranks on its machine), ``local_size``; the collectives the training step needs.

    Args:
        mpi: the ``mpi4py.MPI`` module (or a stand-in with the same names, in tests).
        world: the MPI communicator of all ranks (``MPI.COMM_WORLD``).
    """

    def __init__(self, mpi, world):
        self.mpi, self.world = mpi, world
        self.rank, self.size = world.Get_rank(), world.Get_size()
        node = world.Split_type(mpi.COMM_TYPE_SHARED, key=self.rank)  # the ranks sharing this machine
        self.local_rank, self.local_size = node.Get_rank(), node.Get_size()
        node.Free()
        self.gpu_pinned = False  # whether ``connect`` restricted CUDA_VISIBLE_DEVICES to one GPU
        self.backend = None
        self._nccl = None

    @property
    def is_root(self):
        """Rank 0: the one that writes metrics, pictures, checkpoints and the progress bar."""
        return self.rank == 0

    def __repr__(self):
        engine = "NCCL" if self._nccl is not None else "MPI"
        return f"Communicator(rank={self.rank}, size={self.size}, local_rank={self.local_rank}, {engine})"

    def attach(self, backend):
        """The backend this rank computes with; call it once, before the model is built.

        Every rank must have built the same kind of backend (name, dtype, seed), else DistributedError.
        On CuPy it returns a backend on this rank's GPU (device 0 when ``connect`` pinned one, else
        device ``local_rank``), with its generator made there, and joins the ranks' NCCL communicator,
        whose unique id rank 0 draws and broadcasts over MPI.
        """
        kinds = self.world.allgather((backend.name, backend.dtype.name, backend.seed))
        if len(set(kinds)) > 1:
            listed = ", ".join(f"rank {rank}: {kind[0]} {kind[1]} seed {kind[2]}" for rank, kind in enumerate(kinds))
            raise DistributedError(f"the ranks built different backends ({listed}); give every rank the same "
                                   f"--backend, --dtype and --seed, and each GPU rank a GPU")
        if backend.name == "cupy":
            backend = self._join_nccl(backend)
        self.backend = backend
        return backend

    def _join_nccl(self, backend):
        xp = backend.xp
        importlib.import_module(f"{xp.__name__}.cuda.nccl")  # CuPy loads its NCCL module only when asked
        if not xp.cuda.nccl.available:
            raise DistributedError(f"rank {self.rank}: CuPy cannot load NCCL, which the GPU ranks' allreduce needs; "
                                   f"{NCCL_HINT}")
        count = xp.cuda.runtime.getDeviceCount()
        device = 0 if self.gpu_pinned else self.local_rank
        if device >= count:
            raise DistributedError(f"rank {self.rank} is rank {self.local_rank} of {self.local_size} on its machine, "
                                   f"which shows it {count} GPU(s): start at most one rank per GPU")
        xp.cuda.Device(device).use()
        backend = backend.with_seed(backend.seed)  # the same stream, its state made on this GPU
        unique_id = xp.cuda.nccl.get_unique_id() if self.rank == 0 else None
        unique_id = self.world.bcast(unique_id, root=0)
        self._nccl = xp.cuda.nccl.NcclCommunicator(self.size, unique_id, self.rank)
        return backend

    def shard(self, batch_rows):
        """The contiguous rows of a global batch of ``batch_rows`` rows that this rank takes: rank r
        gets rows [r B / N, (r+1) B / N) (rounded down), so the shards differ by at most one row and,
        in rank order, are the batch. A rank may get none when B < N."""
        return slice(self.rank * batch_rows // self.size, (self.rank + 1) * batch_rows // self.size)

    def allreduce_gradients(self, buffer):
        """ONE in-place allreduce (sum) of the whole flat gradient array of a ParameterBuffer: after
        it every rank holds the sum over the ranks of their shards' gradients, eq. (48). About
        2 P (N-1)/N values leave each rank (a ring allreduce of P values, eq. (50))."""
        self._allreduce_in_place(buffer.grad)

    def allreduce_sums(self, values):
        """``values`` summed over the ranks (losses, test sums). A backend array (NumPy, or CuPy:
        summed by NCCL on the GPU, no host copy) gives one of the same kind and dtype; a host
        sequence of numbers gives a float64 NumPy array. ``values`` itself is left as it is."""
        if isinstance(values, (list, tuple)) or not hasattr(values, "dtype"):
            values = np.asarray(values, dtype=np.float64)
        summed = values.copy()
        self._allreduce_in_place(summed)
        return summed

    def _allreduce_in_place(self, array):
        """Sum ``array`` over the ranks in place: MPI for a NumPy array, NCCL for a CuPy one.
        The NCCL calls go through the class (``NcclCommunicator.allReduce(communicator, ...)``) so
        that cuda_check's call checker can bind them to CuPy's signature."""
        if isinstance(array, np.ndarray):
            self.world.Allreduce(self.mpi.IN_PLACE, array, op=self.mpi.SUM)
            return
        if self._nccl is None:
            raise DistributedError(f"rank {self.rank}: a {type(array).__name__} cannot be allreduced by MPI; "
                                   f"call Communicator.attach(backend) first so that GPU arrays go through NCCL")
        xp = self.backend.xp
        codes = {"float32": xp.cuda.nccl.NCCL_FLOAT32, "float64": xp.cuda.nccl.NCCL_FLOAT64}
        if array.dtype.name not in codes or not array.flags.c_contiguous:
            raise DistributedError(f"NCCL allreduce takes a contiguous float32 or float64 array, got "
                                   f"{array.dtype.name} of shape {tuple(array.shape)}")
        stream = xp.cuda.get_current_stream()  # after the backward's kernels, before the optimizer's
        xp.cuda.nccl.NcclCommunicator.allReduce(self._nccl, array.data.ptr, array.data.ptr, array.size,
                                                codes[array.dtype.name], xp.cuda.nccl.NCCL_SUM, stream.ptr)

    def check_same_parameters(self, buffer, when):
        """Raise DistributedError, the same one line on every rank, unless every rank's parameters
        are bit for bit rank 0's. ``when`` says where in the run ("after epoch 3"). One explicit
        device-to-host copy of the parameters (once per epoch is the intended use)."""
        values = buffer.backend.to_numpy(buffer.data)
        digest = hashlib.blake2b(np.ascontiguousarray(values).tobytes(), digest_size=16).hexdigest()
        digests = self.world.allgather(digest)
        differing = [rank for rank, other in enumerate(digests) if other != digests[0]]
        if differing:
            raise DistributedError(f"{when}: the parameters of rank(s) {differing} differ from rank 0's, so the "
                                   f"{self.size} ranks no longer train one model; the last checkpoint holds "
                                   f"rank 0's last complete epoch (resume from it with the same command)")

    def abort(self, code):
        """End every rank now, with exit status ``code`` (MPI_Abort: the launcher stops them all).

        The launcher forwards each rank's output through a pipe, and an abort right after a print can
        end the job before the last lines are forwarded (seen with MPICH: the tail of a traceback
        lost in 2 runs of 12), so this waits ``ABORT_GRACE_S`` first. MPI_Abort may also return
        while the launcher is already ending the ranks (seen when two ranks abort at once): this
        process then ends at once, running no more Python. The caller has said what happened, so the
        line MPICH prints for every MPI_Abort ("application called MPI_Abort ...") is not shown."""
        sys.stdout.flush()
        sys.stderr.flush()
        time.sleep(ABORT_GRACE_S)
        silence(sys.__stderr__)
        self.world.Abort(code)
        os._exit(code)


def distributed_step(model, x, eps, comm, kl_weight=1.0, checked=False):
    """One data-parallel training step before the optimizer's: the forward and backward of this
    rank's shard, then the allreduce of the gradients and of the loss sums.

    x: the global batch (B, D) and eps its noise (L, B, J) or (B, J), the same on every rank (drawn
    from the same generator, in the order one process draws them: ``model.draw_eps(B)``). Runs
    ``model.loss_and_backward(x[shard], eps=eps[..., shard, :], kl_weight=kl_weight, checked=checked)``, then
    leaves in ``model.buffer.grad`` the gradient of the whole batch (eq. (48)) on every rank.
    Returns the LossTerms of the whole batch (sums over its rows; 0-d arrays of the backend).
    """
    xp = model.backend.xp
    rows = comm.shard(x.shape[0])
    if rows.stop > rows.start:
        shard_eps = eps[:, rows] if eps.ndim == 3 else eps[rows]
        terms = model.loss_and_backward(x[rows], eps=shard_eps, kl_weight=kl_weight, checked=checked)
        local = xp.stack(list(terms))
    else:  # fewer rows than ranks: this rank adds nothing
        model.buffer.grad[...] = 0
        local = xp.zeros(3, dtype=model.backend.dtype)
    comm.allreduce_gradients(model.buffer)
    summed = comm.allreduce_sums(local)
    return LossTerms(summed[0], summed[1], summed[2])


def run_ranks(comm, function, *args):
    """``function(*args)`` on this rank; if it raises, or returns a non-zero exit status (an int),
    print one line naming the rank and end every rank with MPI_Abort (the launcher's exit status is
    then non-zero), so that no rank is left waiting in a collective. Returns what it returned."""
    try:
        result = function(*args)
    except SystemExit as stop:
        if stop.code in (0, None):
            raise
        result = stop.code if isinstance(stop.code, int) else 1
    except BaseException as error:  # also KeyboardInterrupt: the other ranks must not wait for this one
        traceback.print_exc()
        print(f"minivae: rank {comm.rank} of {comm.size} failed ({type(error).__name__}: "
              f"{' '.join(str(error).split())}); ending all {comm.size} ranks", file=sys.stderr)
        comm.abort(1)
    if isinstance(result, int) and not isinstance(result, bool) and result != 0:
        print(f"minivae: rank {comm.rank} of {comm.size} ended with exit status {result}; ending all "
              f"{comm.size} ranks", file=sys.stderr)
        comm.abort(result)
    return result
