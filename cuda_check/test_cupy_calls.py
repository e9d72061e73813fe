"""Every CuPy function, generator method and array method minivae calls on the CuPy backend exists
in the installed CuPy and takes the arguments passed (see cupy_calls.py), with no device touched.
A call that CuPy lacks, or a keyword it does not take, fails these tests."""

import pathlib

import cupy
import pytest
from matplotlib.figure import Figure
from cupy_calls import Call, collect_source, collect_static, problems, recorded_calls, resolve, unchecked

import device_guard
import minivae
from minivae import evaluate, gradcheck, train
from minivae.kernels import cuda
from minivae.model import VAE
from minivae.optim import SGD, Adam
from tiny_data import write_dataset

PACKAGE = pathlib.Path(minivae.__file__).parent
# Uses the check of CuPy's classes cannot confirm, each with the reason.
NUMPY_ONLY = {
    ("rng", "bit_generator"): "an instance attribute of cupy.random.Generator (its __init__ sets it), not of the "
                              "class: Backend.rng_state reads the cuRAND state there",
}


def _skip_drawing(figure, handle, **kwargs):
    """Figure.savefig without drawing (host-side work, most of the run's time): an empty file."""
    handle.write(b"")


def _guard(name="device-guard", dtype="float32", seed=0, fused=True):
    return device_guard.GuardBackend(dtype=dtype, seed=seed, fused=fused)


def _plain_guard(name="device-guard", dtype="float32", seed=0):
    return _guard(name, dtype, seed, fused=False)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """The calls the device guard served while the device path ran: training (fused kernels and
    plain code, both likelihoods, L = 1 and 2, every activation, the MLP and the conv VAE, a resume), evaluation, both
    optimizers with momentum and weight decay, and every gradient check."""
    folder = tmp_path_factory.mktemp("device_path")
    data = write_dataset(folder / "data", train_count=48, test_count=16, rows=4, columns=4)
    device_guard.CALLS.clear()
    common = ["--data-dir", str(data), "--epochs", "2", "--batch-size", "16", "--latent-dim", "2",
              "--log-interval", "2", "--quiet"]
    runs = [(_guard, ["--hidden", "6", "--binarize", "dynamic", "--samples", "2", "--activation", "tanh"]),
            (_plain_guard, ["--hidden", "6", "--likelihood", "gaussian", "--activation", "sigmoid"]),
            (_plain_guard, ["--hidden", "6", "--samples", "2"]),
            (_guard, ["--architecture", "conv", "--channels", "2", "3"]),
            (_plain_guard, ["--architecture", "conv", "--channels", "2", "3"])]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Figure, "savefig", _skip_drawing)
        for number, (factory, flags) in enumerate(runs):
            patch.setattr(train, "get_backend", factory)
            patch.setattr(evaluate, "get_backend", factory)
            out = str(folder / f"run{number}")
            assert train.main(common + flags + ["--out", out]) == 0
            assert evaluate.main([out, "--iw-samples", "3", "--chunk", "2", "--quiet"]) == 0
        assert train.main(["--resume", out, "--epochs", "3", "--quiet"]) == 0
    for fused in (True, False):
        backend = _guard(fused=fused)
        model = VAE(input_dim=5, hidden=(4,), latent_dim=2, backend=backend)
        x = backend.uniform((3, 5))
        for optimizer in (Adam(model.parameters(), weight_decay=0.1),
                          SGD(model.parameters(), momentum=0.9, weight_decay=0.1)):
            for _ in range(2):
                model.loss_and_backward(x)
                optimizer.step()
        model.reconstruct(x, use_mean=False)
        model.sample(2)
    for kind in gradcheck.LAYER_KINDS:
        gradcheck.check_layer(kind, _guard(dtype="float64"), samples=2)
    return recorded_calls(device_guard.CALLS)


@pytest.fixture(scope="module")
def static():
    return collect_static(PACKAGE)


def test_no_gpu_is_reachable_from_these_checks():
    """conftest.py hides every device, so nothing below can have used one."""
    with pytest.raises(cupy.cuda.runtime.CUDARuntimeError):
        cupy.cuda.runtime.getDeviceCount()


def test_every_call_in_the_source_exists_in_cupy_with_the_arguments_passed(static):
    names = {(call.namespace, call.name) for call in static}
    assert {("xp", "matmul"), ("special", "expit"), ("rng", "standard_normal")} <= names  # the collector sees
    found = [message for call in static if (call.namespace, call.name) not in NUMPY_ONLY
             for message in problems(call)]
    assert found == []


def test_every_call_the_device_path_made_exists_in_cupy_with_the_arguments_passed(recorded):
    assert {"xp", "special", "rng", "array", "kernels"} <= {call.namespace for call in recorded}
    found = [message for call in recorded if call.namespace != "kernels" for message in problems(call)]
    assert found == []


def test_the_source_collector_saw_every_function_the_device_path_called(static, recorded):
    """A call reaching CuPy in a way the AST walk does not see (``getattr(xp, name)``, an alias)
    would be missing from the static list."""
    seen = {(call.namespace, call.name) for call in static}
    missed = {(call.namespace, call.name) for call in recorded
              if call.namespace in ("xp", "special", "rng") and (call.namespace, call.name) not in seen}
    assert missed == set()


def test_every_fused_kernel_is_called_with_the_arguments_it_declares(recorded):
    kernels = cuda.build(cupy)
    calls = [call for call in recorded if call.namespace == "kernels"]
    assert {call.name for call in calls} == set(cuda.SOURCES)
    for call in calls:
        kernel = getattr(kernels, call.name)
        assert call.n_positional in (kernel.nin, kernel.nargs), call


def test_the_numpy_only_uses_are_still_there_and_still_missing_from_cupy(static):
    """An entry of NUMPY_ONLY that the code no longer makes, or that CuPy now has, is stale."""
    names = {(call.namespace, call.name) for call in static}
    for namespace, name in NUMPY_ONLY:
        assert (namespace, name) in names
        with pytest.raises(AttributeError):
            resolve(Call(namespace, name, None, None, "NUMPY_ONLY"))


def test_cupy_exposes_a_signature_for_every_call_whose_arguments_are_known(static, recorded):
    """So that "the arguments bind" is checked everywhere, not only the name."""
    assert [call for call in static + recorded
            if call.namespace != "kernels" and (call.namespace, call.name) not in NUMPY_ONLY and unchecked(call)] == []


@pytest.mark.parametrize(("source", "expected"), [
    ("def f(backend, a):\n    return backend.xp.softmaxx(a)\n", "CuPy lacks it"),
    ("def f(self, a):\n    return self.xp.exp(a, where=a > 0)\n", "ufunc"),
    ("def f(xp, a):\n    return xp.tile(a, 2, 3)\n", "does not fit"),
    ("def f(xp, a):\n    return xp.zeros(3, dtipe=xp.float32)\n", "does not fit"),
    ("def f(backend):\n    return backend.rng.normal(size=3)\n", "CuPy lacks it"),
    ("def f(special, a):\n    return special.expitt(a)\n", "CuPy lacks it"),
    ("def f(xp, a):\n    return xp.exp(a).resize((2, 3))\n", "CuPy lacks it"),
])
def test_a_call_cupy_does_not_take_is_caught(source, expected):
    calls = collect_source(source, "mutant.py")
    assert calls
    assert any(expected in message for call in calls for message in problems(call))


def test_a_recorded_method_call_with_a_keyword_cupy_lacks_is_caught():
    assert problems(Call("array", "sum", 0, ("axis", "keepdimz"), "recorded"))
    assert problems(Call("array", "sum", 0, ("axis", "keepdims"), "recorded")) == []


def test_calling_a_missing_cupy_function_in_the_library_is_caught(tmp_path):
    """The library itself with one CuPy call renamed to a function CuPy lacks."""
    copy = tmp_path / "minivae"
    for path in PACKAGE.rglob("*.py"):
        target = copy / path.relative_to(PACKAGE)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(path.read_text())
    gaussian = copy / "gaussian.py"
    gaussian.write_text(gaussian.read_text().replace("xp.exp(logvar)", "xp.expp(logvar)", 1))
    found = [message for call in collect_static(copy) for message in problems(call)]
    assert any("xp.expp (minivae/gaussian.py:" in message for message in found)
