"""The exact CUDA source CuPy compiles for a kernel of ``minivae.kernels.cuda``, and NVRTC compiling
it, on a machine without a GPU (a helper module of the cuda-check tests, not a test file).

CuPy compiles an ``ElementwiseKernel`` at its first call, for the dtypes and memory layouts of the
arguments. Without a GPU no CuPy array can exist, so no call can happen; but the source is written by
a generator of CuPy's own, ``cupy._core._kernel._get_elementwise_kernel_code``, from a description of
each argument (``_ArgInfo``: kind, dtype, number of dimensions, C-contiguity, 32- or 64-bit indexing).
``kernel_source`` describes the arguments as CuPy's ``ElementwiseKernel.__call__`` would, lets that
generator write the source, and puts CuPy's header lines before it, as ``cupy._core.core.
compile_with_cache`` does. ``compile_for`` compiles it with NVRTC with the options CuPy passes
(``assemble_cupy_compiler_options``, ``-ftz=true``, ``--device-as-default-execution-space``) and
``-arch=sm_XX``, as CuPy does for every GPU its NVRTC knows: NVRTC writes the PTX and assembles it to
SASS, so both steps are checked.

These are CuPy internals (checked against CuPy 14); the ``cuda-check`` extra pins CuPy's major version.
"""

import cupy
import numpy
from cupy._core import _carray, _kernel, _scalar, core
from cupy_backends.cuda.libs import nvrtc

# The kinds of argument of CuPy's _ArgInfo (the _ArgKind enum of cupy/_core/_kernel.pxd).
ARG_KIND_NDARRAY, ARG_KIND_INDEXER, ARG_KIND_SCALAR = 1, 2, 3

# How the arrays of a call lie in memory, as CuPy sees them after merging dimensions: all
# C-contiguous (CuPy then runs over one flat dimension with 32-bit indices), or strided in three
# dimensions with 64-bit indices (slices of the encoder head, mu broadcast over the L samples).
LAYOUTS = {
    "contiguous": {"ndim": 1, "c_contiguous": True, "index_32_bits": True},
    "strided": {"ndim": 3, "c_contiguous": False, "index_32_bits": False},
}
DTYPES = ("float32", "float64")
# Data-centre GPUs: A100 (8.0), H100/H200 (9.0), B200 (10.0).
ARCHS = ("80", "90", "100")


class KernelCompileError(Exception):
    """NVRTC refused a kernel's source; the message holds NVRTC's log."""


def kernel_source(kernel, scalars, dtype, layout):
    """The CUDA source CuPy compiles for ``kernel`` called with arrays of ``dtype`` laid out as
    ``LAYOUTS[layout]``, and Python numbers for the input parameters named in ``scalars``."""
    dtype = numpy.dtype(dtype)
    shape = LAYOUTS[layout]
    in_dtypes = tuple(None if p.name in scalars else dtype for p in kernel.in_params)
    in_types, out_types, type_map = kernel._decide_params_type(in_dtypes, ())

    def array(param_dtype):
        return _kernel._ArgInfo(ARG_KIND_NDARRAY, cupy.ndarray, numpy.dtype(param_dtype), shape["ndim"],
                                shape["c_contiguous"], shape["index_32_bits"])

    arginfos = [_kernel._ArgInfo(ARG_KIND_SCALAR, _scalar.CScalar, numpy.dtype(t), 0, True, True)
                if p.name in scalars else array(t) for p, t in zip(kernel.in_params, in_types)]
    arginfos += [array(t) for t in out_types]
    arginfos.append(_kernel._ArgInfo(ARG_KIND_INDEXER, _carray.Indexer, None, shape["ndim"], True,
                                     shape["index_32_bits"]))
    code = _kernel._get_elementwise_kernel_code(tuple(arginfos), type_map, kernel.params, kernel.operation,
                                                kernel.name, kernel.preamble, **kernel.kwargs)
    return "".join(f"#include <{header}>\n" for header in core._cupy_header_list) + code


def compile_for(code, arch, options=()):
    """Compile ``code`` with NVRTC for ``sm_<arch>`` as CuPy would; returns the CUBIN (bytes).
    Raises KernelCompileError with NVRTC's log when the source does not compile."""
    options = core.assemble_cupy_compiler_options(tuple(options)) + (
        "-ftz=true", f"-arch=sm_{arch}", "--device-as-default-execution-space")
    program = nvrtc.createProgram(code, "minivae_kernel.cu", (), ())
    try:
        nvrtc.compileProgram(program, options)
        return nvrtc.getCUBIN(program)
    except nvrtc.NVRTCError as error:
        raise KernelCompileError(f"{error}\n{nvrtc.getProgramLog(program)}") from None
    finally:
        nvrtc.destroyProgram(program)


def nvrtc_version():
    """NVRTC's (major, minor) version."""
    return nvrtc.getVersion()


def supported_archs():
    """The ``sm_XX`` numbers the installed NVRTC compiles for, as strings."""
    return tuple(str(arch) for arch in nvrtc.getSupportedArchs())


def _smallest_call(kernel, scalars, dtype):
    """Arguments for one call of ``kernel`` on 8 elements: 1 for each scalar (an int for an integer
    parameter: a size, a stride), ones for each array, and the output arrays too when every input is
    raw or a scalar (the outputs then set the size). With every size 1 the gather col2im_gather reads no
    element (its only window lies outside the 8 pixels), which is enough to compile it and compare its
    source."""
    args = [(1 if p.dtype is not None and numpy.dtype(p.dtype).kind == "i" else 1.0) if p.name in scalars
            else cupy.ones(8, dtype=dtype) for p in kernel.in_params]
    if all(p.raw or p.name in scalars for p in kernel.in_params):
        args += [cupy.ones(8, dtype=dtype) for _ in kernel.out_params]
    return args


def compare_with_cupy_on_a_gpu():
    """On a machine with a GPU (benchmarks/gpu_check.sh): call every kernel on contiguous arrays of
    each dtype and compare the source CuPy compiled for the call (``cached_codes``) with
    ``kernel_source``'s, to show that the NVRTC checks compile what CuPy compiles. Returns the
    number of differences (printed)."""
    from minivae.kernels import cuda

    differences = 0
    for key, kernel in vars(cuda.build(cupy)).items():
        scalars = cuda.SOURCES[key].scalars
        for dtype in DTYPES:
            kernel._cached_codes.clear()
            kernel(*_smallest_call(kernel, scalars, dtype))
            (compiled,) = kernel.cached_codes.values()
            same = kernel_source(kernel, scalars, dtype, "contiguous").endswith(compiled)
            differences += not same
            print(f"{kernel.name} {dtype}: {'the same source' if same else 'SOURCES DIFFER'}")
    return differences


if __name__ == "__main__":
    raise SystemExit(1 if compare_with_cupy_on_a_gpu() else 0)
