"""Every CUDA kernel of minivae compiles: the exact source CuPy would compile for it (see
kernel_source.py), for float32 and float64, contiguous and strided arguments, by NVRTC for the
data-centre GPUs of ``ARCHS``, with no GPU. A kernel broken on purpose does not."""

import cupy
import pytest
from kernel_source import ARCHS, DTYPES, LAYOUTS, KernelCompileError, compile_for, kernel_source, supported_archs

from minivae.kernels import cuda

KERNELS = cuda.build(cupy)
CTYPES = {"float32": "float", "float64": "double"}


def _compiled(kernel, source, dtype="float32", layout="contiguous", arch=ARCHS[1]):
    code = kernel_source(kernel, source.scalars, dtype, layout)
    return code, compile_for(code, arch, kernel.kwargs.get("options", ()))


def test_the_installed_nvrtc_compiles_for_every_architecture_checked():
    assert set(ARCHS) <= set(supported_archs())


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("key", sorted(cuda.SOURCES))
def test_every_kernel_compiles(key, dtype, layout, arch):
    kernel, source = getattr(KERNELS, key), cuda.SOURCES[key]
    code, cubin = _compiled(kernel, source, dtype, layout, arch)
    assert f"typedef {CTYPES[dtype]} T;" in code
    assert f"void {cuda.kernel_name(key)}(" in code and source.operation in code
    assert cubin[:4] == b"\x7fELF"  # a CUBIN is an ELF object


# Mutations of a kernel's body that must not compile. CuPy ends the body with a ";" of its own, so a
# missing semicolon is an error only between two statements: that mutation applies to the kernels
# with more than one (test_a_single_statement_needs_no_semicolon shows why).
MUTATIONS = {
    "missing semicolon": lambda operation: operation.replace(";", "", 1),
    "wrong type": lambda operation: operation.replace("(T)", "(T*)", 1),
}
MUTANTS = [(key, mutation) for key, source in sorted(cuda.SOURCES.items()) for mutation in sorted(MUTATIONS)
           if mutation != "missing semicolon" or source.operation.count(";") > 1]


@pytest.mark.parametrize(("key", "mutation"), MUTANTS)
def test_a_kernel_broken_on_purpose_does_not_compile(key, mutation):
    source = cuda.SOURCES[key]
    broken = source._replace(operation=MUTATIONS[mutation](source.operation))
    assert broken.operation != source.operation
    kernel = getattr(cuda.build(cupy, {key: broken}), key)
    with pytest.raises(KernelCompileError, match="error"):
        _compiled(kernel, broken)


def test_a_single_statement_needs_no_semicolon_because_cupy_adds_one():
    source = cuda.SOURCES["reparameterize"]
    assert source.operation.count(";") == 1
    bare = source._replace(operation=source.operation.rstrip().rstrip(";"))
    _compiled(getattr(cuda.build(cupy, {"reparameterize": bare}), "reparameterize"), bare)


def test_scalar_parameters_are_passed_by_value_in_the_kernel_type():
    """The slot for kernels taking Python numbers (an Adam update's step size): such a parameter is a
    plain ``T`` argument, the arrays CArrays, and the source compiles."""
    source = cuda.ElementwiseSource("T g, T lr", "T theta", "theta -= lr * g;", scalars=("lr",))
    kernel = getattr(cuda.build(cupy, {"sgd_step": source}), "sgd_step")
    for dtype in DTYPES:
        code, cubin = _compiled(kernel, source, dtype)
        ctype = CTYPES[dtype]
        assert f"const {ctype} lr," in code and f"const CArray<{ctype}, 1, 1, 1> _raw_g" in code
        assert cubin[:4] == b"\x7fELF"


def test_the_kernels_are_those_the_cupy_backend_builds():
    assert sorted(vars(KERNELS)) == sorted(cuda.SOURCES)
    for key, kernel in vars(KERNELS).items():
        assert isinstance(kernel, cupy.ElementwiseKernel) and kernel.name == cuda.kernel_name(key)
