"""Checkpoints: bit-exact round trips, resuming exactly where training stopped, refusing mismatched
models, truncated / corrupted / pickled files, and atomic writes."""

import dataclasses
import io
import json
import os
import re
import warnings
import zipfile

import numpy as np
import pytest
import scipy.special
from hypothesis import given
from hypothesis import strategies as st

import minivae
from minivae import checkpoint as ckpt
from minivae.backend import Backend, numpy_backend
from minivae.checkpoint import (FORMAT_VERSION, Checkpoint, load_checkpoint, model_from_checkpoint, restore,
                                save_checkpoint)
from minivae.errors import CheckpointError
from minivae.model import VAE
from minivae.optim import SGD, Adam

OPTIMIZERS = {"adam": lambda params: Adam(params, lr=1e-2, betas=(0.8, 0.99)),
              "sgd": lambda params: SGD(params, lr=1e-2, momentum=0.9)}


def small_model(backend, **overrides):
    kwargs = dict(input_dim=12, hidden=(8,), latent_dim=3)
    kwargs.update(overrides)
    return VAE(backend=backend, **kwargs)


def batch(backend, n=16, d=12):
    """A fixed binary batch, drawn from its own generator (never the backend's)."""
    return backend.to_device((np.random.default_rng(123).random((n, d)) < 0.5).astype(np.float64))


def train(model, optimizer, x, steps):
    """``steps`` Adam/SGD steps; eps is drawn from the backend's generator, so its state matters."""
    for _ in range(steps):
        model.loss_and_backward(x)
        optimizer.step()


def host_params(model):
    return {p.name: model.backend.to_numpy(p.data).copy() for p in model.parameters()}


def snapshot(model, optimizer):
    """Everything restore could modify, copied to the host."""
    state = optimizer.state_dict()
    moments = {kind: {k: model.backend.to_numpy(v).copy() for k, v in state[kind].items()}
               for kind in optimizer.moment_names}
    rng = model.backend.rng_state()  # NumPy: a dict of ints; CuPy: the cuRAND device state on the host
    return host_params(model), moments, state["step"], state["hyperparameters"], rng


def assert_snapshots_equal(a, b):
    params_a, moments_a, step_a, hyper_a, rng_a = a
    params_b, moments_b, step_b, hyper_b, rng_b = b
    assert params_a.keys() == params_b.keys()
    for name in params_a:
        np.testing.assert_array_equal(params_a[name], params_b[name], err_msg=name)
    for kind in moments_a:
        for name in moments_a[kind]:
            np.testing.assert_array_equal(moments_a[kind][name], moments_b[kind][name], err_msg=f"{kind} {name}")
    assert (step_a, hyper_a) == (step_b, hyper_b)
    np.testing.assert_equal(rng_a, rng_b)  # dicts compared key by key, arrays element by element


def rewrite(src, dst, edit_meta=None, drop=(), add=None):
    """Copy a checkpoint archive, editing its metadata dict / dropping or adding members."""
    with np.load(src, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files if k not in drop}
    if edit_meta is not None and "meta" in arrays:
        meta = json.loads(str(arrays["meta"][()]))
        edit_meta(meta)
        arrays["meta"] = np.array(json.dumps(meta))
    arrays.update(add or {})
    np.savez(dst, **arrays)
    return dst


@pytest.fixture
def trained(tmp_path):
    """A float32 model and Adam after 2 steps, saved at epoch 4 to tmp_path/checkpoint.npz."""
    backend = numpy_backend("float32", seed=0)
    model = small_model(backend)
    optimizer = OPTIMIZERS["adam"](model.parameters())
    train(model, optimizer, batch(backend), 2)
    path = tmp_path / "checkpoint.npz"
    save_checkpoint(path, model, optimizer, epoch=4, extra={"history": [1.5, 1.25]})
    return path, model, optimizer


# -- round trip ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("optimizer_kind", sorted(OPTIMIZERS))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_round_trip_is_bit_exact(make_backend, tmp_path, optimizer_kind, dtype):
    backend = make_backend(dtype, seed=7)
    model = small_model(backend)
    optimizer = OPTIMIZERS[optimizer_kind](model.parameters())
    train(model, optimizer, batch(backend), 3)
    extra = {"history": [{"epoch": 1, "loss": 0.1 + 0.2}], "run": {"lr": 1e-2, "note": "é"}, "nan": None}
    path = tmp_path / "checkpoint.npz"
    save_checkpoint(path, model, optimizer, epoch=5, extra=extra)
    loaded = load_checkpoint(path)

    assert list(loaded.params) == [p.name for p in model.parameters()]
    for p in model.parameters():
        saved = loaded.params[p.name]
        assert saved.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(saved, backend.to_numpy(p.data), err_msg=p.name)
    state = optimizer.state_dict()
    assert loaded.optimizer_state["step"] == state["step"] == 3
    assert loaded.optimizer_state["hyperparameters"] == state["hyperparameters"]
    for kind in optimizer.moment_names:
        assert loaded.optimizer_state[kind].keys() == state[kind].keys()
        for name, array in state[kind].items():
            np.testing.assert_array_equal(loaded.optimizer_state[kind][name], backend.to_numpy(array))
    np.testing.assert_equal(loaded.rng_state, backend.rng_state())  # CuPy's too: its device state
    assert loaded.epoch == 5
    assert loaded.extra == extra
    assert loaded.config == model.config
    assert loaded.dtype == dtype
    assert loaded.version == minivae.__version__
    assert loaded.format_version == FORMAT_VERSION
    assert loaded.optimizer_name == type(optimizer).__name__
    assert loaded.path == os.fspath(path)


def test_extra_defaults_to_empty_and_numpy_scalars_are_accepted(trained):
    path, model, optimizer = trained
    save_checkpoint(path, model, optimizer, epoch=1)
    assert load_checkpoint(path).extra == {}
    save_checkpoint(path, model, optimizer, epoch=1, extra={"loss": np.float32(0.5), "n": np.int64(3)})
    assert load_checkpoint(path).extra == {"loss": 0.5, "n": 3}


@pytest.mark.parametrize("extra", [{"f": object()}, ["not", "a", "dict"]])
def test_save_refuses_extra_that_is_not_json_and_writes_nothing(tmp_path, extra):
    model = small_model(numpy_backend())
    path = tmp_path / "checkpoint.npz"
    with pytest.raises(CheckpointError, match="extra"):
        save_checkpoint(path, model, Adam(model.parameters()), epoch=0, extra=extra)
    assert os.listdir(tmp_path) == []


def test_save_into_a_missing_folder_is_a_checkpoint_error(tmp_path):
    model = small_model(numpy_backend())
    with pytest.raises(CheckpointError, match="no-such-folder"):
        save_checkpoint(tmp_path / "no-such-folder" / "c.npz", model, Adam(model.parameters()), epoch=0)


def test_save_refuses_an_optimizer_over_other_parameters(tmp_path):
    model = small_model(numpy_backend())
    other = small_model(numpy_backend(), hidden=(5,))
    with pytest.raises(CheckpointError, match="model.parameters"):
        save_checkpoint(tmp_path / "c.npz", model, Adam(other.parameters()[:2]), epoch=0)


# -- resuming -----------------------------------------------------------------------------------------


def resume_run(tmp_path, optimizer_kind, dtype, drop_rng=False, make_backend=numpy_backend):
    """Train 3 steps, save, 3 more; and separately load into a fresh model + optimizer (another seed,
    default hyperparameters) and do the same 3 steps. Returns both parameter sets and restore's result."""
    backend = make_backend(dtype, seed=0)
    model = small_model(backend)
    optimizer = OPTIMIZERS[optimizer_kind](model.parameters())
    x = batch(backend)
    train(model, optimizer, x, 3)
    path = tmp_path / "checkpoint.npz"
    save_checkpoint(path, model, optimizer, epoch=3)
    train(model, optimizer, x, 3)

    fresh_backend = make_backend(dtype, seed=12345)
    fresh = small_model(fresh_backend)
    fresh_optimizer = type(optimizer)(fresh.parameters())
    loaded = load_checkpoint(path)
    if drop_rng:
        loaded = dataclasses.replace(loaded, rng_state=None)
    rng_restored = restore(loaded, fresh, fresh_optimizer)
    train(fresh, fresh_optimizer, batch(fresh_backend), 3)
    assert fresh_optimizer.step_count == optimizer.step_count == 6
    return host_params(model), host_params(fresh), rng_restored


@pytest.mark.parametrize("optimizer_kind", sorted(OPTIMIZERS))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_resuming_is_bit_identical_to_never_stopping(make_backend, tmp_path, optimizer_kind, dtype):
    """On every backend: on CuPy the noise comes from the cuRAND device state the checkpoint holds."""
    never_stopped, resumed, rng_restored = resume_run(tmp_path, optimizer_kind, dtype, make_backend=make_backend)
    assert rng_restored is True
    for name in never_stopped:
        np.testing.assert_array_equal(resumed[name], never_stopped[name], err_msg=name)


def test_resuming_without_the_random_state_diverges(tmp_path):
    """The check above is sensitive: without the RNG state, eps differ and so do the parameters."""
    never_stopped, resumed, rng_restored = resume_run(tmp_path, "adam", "float64", drop_rng=True)
    assert rng_restored is False
    assert any(not np.array_equal(resumed[n], never_stopped[n]) for n in never_stopped)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_an_older_checkpoint_with_adam_sums_resumes_the_same_run(tmp_path, dtype):
    """Before Adam kept m and v, checkpoints held m_sum = m / (1-b1) and v_sum = v / (1-b2)
    (docs/derivation.md, 14.1): loading one gives m and v back, to one rounding, and resuming from it
    continues the run as resuming from today's checkpoint does."""
    b1, b2 = 0.8, 0.99  # OPTIMIZERS["adam"]
    backend = numpy_backend(dtype, seed=0)
    model = small_model(backend)
    optimizer = OPTIMIZERS["adam"](model.parameters())
    train(model, optimizer, batch(backend), 3)
    today = tmp_path / "today.npz"
    save_checkpoint(today, model, optimizer, epoch=1)
    state = optimizer.state_dict()
    sums = {f"optim/{old}/{name}": (array.astype(np.float64) / (1 - beta)).astype(dtype)
            for old, new, beta in (("m_sum", "m", b1), ("v_sum", "v", b2)) for name, array in state[new].items()}
    older = rewrite(today, tmp_path / "older.npz",
                    edit_meta=lambda meta: meta["optimizer"].update(moments=["m_sum", "v_sum"]),
                    drop=[f"optim/{kind}/{p.name}" for kind in ("m", "v") for p in model.parameters()], add=sums)
    rtol = 2 * np.finfo(dtype).eps  # m -> m_sum (rounded, above) -> m (rounded once, in load_checkpoint)
    loaded = load_checkpoint(older)
    assert set(loaded.optimizer_state) == {"step", "hyperparameters", "m", "v"}
    for kind in ("m", "v"):
        for name, array in state[kind].items():
            assert loaded.optimizer_state[kind][name].dtype == np.dtype(dtype)
            np.testing.assert_allclose(loaded.optimizer_state[kind][name], array, rtol=rtol, atol=0)
    resumed = []
    for path in (today, older):
        fresh_model = small_model(numpy_backend(dtype, seed=5))
        fresh_optimizer = OPTIMIZERS["adam"](fresh_model.parameters())
        restore(load_checkpoint(path), fresh_model, fresh_optimizer)
        train(fresh_model, fresh_optimizer, batch(fresh_model.backend), 2)
        resumed.append(host_params(fresh_model))
    for name in resumed[0]:
        np.testing.assert_allclose(resumed[1][name], resumed[0][name], rtol=100 * rtol, atol=1e-3 * rtol)


def test_restore_copies_into_the_existing_arrays(trained):
    path, _, _ = trained
    model = small_model(numpy_backend("float32", seed=3))
    optimizer = Adam(model.parameters())
    arrays = [p.data for p in model.parameters()]
    moments = [a for kind in optimizer.moment_names for a in optimizer.moments[kind].values()]
    loaded = load_checkpoint(path)
    restore(loaded, model, optimizer)
    assert all(p.data is a for p, a in zip(model.parameters(), arrays))
    assert all(p.data is q.data for p, q in zip(model.parameters(), optimizer.parameters))
    assert [a for kind in optimizer.moment_names for a in optimizer.moments[kind].values()] == moments
    for p in model.parameters():
        np.testing.assert_array_equal(p.data, loaded.params[p.name])
    assert optimizer.lr == 1e-2 and (optimizer.beta1, optimizer.beta2) == (0.8, 0.99)
    # the loaded checkpoint does not alias the model: training on does not change it
    before = {k: v.copy() for k, v in loaded.params.items()}
    train(model, optimizer, batch(model.backend), 1)
    for name, array in before.items():
        np.testing.assert_array_equal(loaded.params[name], array)


def test_a_backend_without_an_exportable_random_state_saves_none(tmp_path):
    """A backend whose generator exports no state raises BackendUnavailable from rng_state: the
    checkpoint records that there is none, and restore says it did not restore one."""
    backend = Backend("fake-device", np, scipy.special, dtype="float32", seed=0)
    backend.rng = _WithBitGenerator(backend.rng, object())
    model = small_model(backend)
    optimizer = Adam(model.parameters())
    train(model, optimizer, batch(backend), 1)
    path = tmp_path / "checkpoint.npz"
    save_checkpoint(path, model, optimizer, epoch=1)
    loaded = load_checkpoint(path)
    assert loaded.rng_state is None
    with np.load(path, allow_pickle=False) as npz:
        assert "fake-device" in json.loads(str(npz["meta"][()]))["rng_state_note"]
    fresh = small_model(numpy_backend("float32", seed=1))
    state = fresh.backend.rng_state()
    assert restore(loaded, fresh, Adam(fresh.parameters())) is False
    assert fresh.backend.rng_state() == state
    # and a NumPy checkpoint restored onto such a backend skips the random state
    numpy_saved = tmp_path / "numpy.npz"
    other = small_model(numpy_backend("float32", seed=2))
    save_checkpoint(numpy_saved, other, Adam(other.parameters()), epoch=0)
    assert restore(load_checkpoint(numpy_saved), model, optimizer) is False
    np.testing.assert_array_equal(model.parameters()[0].data, other.parameters()[0].data)


def test_model_from_checkpoint_rebuilds_the_model(trained):
    path, model, _ = trained
    loaded = load_checkpoint(path)
    x = batch(model.backend)
    for dtype in ["float32", "float64"]:
        rebuilt = model_from_checkpoint(loaded, numpy_backend(dtype, seed=99))
        assert rebuilt.config == model.config
        assert rebuilt.backend.dtype == np.dtype(dtype)
        for p, q in zip(rebuilt.parameters(), model.parameters()):
            assert p.name == q.name and p.data.dtype == np.dtype(dtype)
            np.testing.assert_array_equal(p.data, q.data.astype(dtype))
        if dtype == "float32":
            np.testing.assert_array_equal(rebuilt.reconstruct(x), model.reconstruct(x))


def test_model_from_checkpoint_refuses_a_config_it_cannot_build(trained):
    loaded = load_checkpoint(trained[0])
    bad = dataclasses.replace(loaded, config={**loaded.config, "residual": True})
    with pytest.raises(CheckpointError, match="config"):
        model_from_checkpoint(bad, numpy_backend())


# -- mismatches ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides, field, saved, ours", [
    ({"input_dim": 10}, "input_dim", "12", "10"),
    ({"hidden": (16,)}, "hidden", "8", "16"),
    ({"hidden": (8, 8), "decoder_hidden": (8,)}, "hidden", "8", "8,8"),
    ({"decoder_hidden": (5,)}, "decoder_hidden", "8", "5"),
    ({"latent_dim": 2}, "latent_dim", "3", "2"),
    ({"activation": "tanh"}, "activation", "relu", "tanh"),
    ({"likelihood": "gaussian"}, "likelihood", "bernoulli", "gaussian"),
    # (a Bernoulli model with variance=0.5 is refused when built, issue 26: tests/test_model.py)
    ({"n_samples": 4}, "n_samples", "1", "4"),
])
def test_restore_refuses_another_architecture_and_leaves_the_model_untouched(trained, overrides, field, saved,
                                                                             ours):
    path, _, _ = trained
    model = small_model(numpy_backend("float32", seed=5), **overrides)
    optimizer = Adam(model.parameters())
    before = snapshot(model, optimizer)
    with pytest.raises(CheckpointError) as info:
        restore(load_checkpoint(path), model, optimizer)
    message = str(info.value)
    assert f"with {field}={saved}, this model has {field}={ours}" in message
    assert os.fspath(path) in message and "--out" in message
    assert_snapshots_equal(snapshot(model, optimizer), before)


def test_a_config_mismatch_gives_advice_that_can_be_followed(trained):
    """issue 13, item 3: "pass --latent-dim 3" could not be followed (a resumed run refuses a changed
    flag); the advice is the checkpoint's own config, or a new --out."""
    path, _, _ = trained
    model = small_model(numpy_backend("float32"), latent_dim=2)
    with pytest.raises(CheckpointError, match="latent_dim=3, this model has latent_dim=2: build the model from "
                                              "the checkpoint's own config .* or start a new --out folder") as info:
        restore(load_checkpoint(path), model, Adam(model.parameters()))
    assert "pass --" not in str(info.value)


def test_restore_refuses_another_dtype(trained):
    path, _, _ = trained
    model = small_model(numpy_backend("float64", seed=5))
    optimizer = Adam(model.parameters())
    before = snapshot(model, optimizer)
    with pytest.raises(CheckpointError, match="holds float32 arrays, this model computes in float64: build the "
                                              "model from the checkpoint's own config") as info:
        restore(load_checkpoint(path), model, optimizer)
    assert "pass --" not in str(info.value)  # issue 13, item 3: --dtype cannot change on --resume
    assert_snapshots_equal(snapshot(model, optimizer), before)


def test_restore_refuses_another_optimizer(trained):
    path, _, _ = trained
    model = small_model(numpy_backend("float32", seed=5))
    optimizer = SGD(model.parameters(), momentum=0.5)
    before = snapshot(model, optimizer)
    with pytest.raises(CheckpointError, match="state of an Adam optimizer, this one is SGD: restore it into an "
                                              "Adam optimizer") as info:
        restore(load_checkpoint(path), model, optimizer)
    assert "--optimizer" not in str(info.value)  # issue 13, item 3: not a flag of minivae.train
    assert_snapshots_equal(snapshot(model, optimizer), before)


def _wrong_param_shape(c):
    c.params["decoder.0.b"] = np.zeros(3, np.float32)


def _missing_param(c):
    del c.params["decoder.0.b"]


def _wrong_moment_shape(c):
    c.optimizer_state["v"]["decoder.2.b"] = np.zeros(3, np.float32)


def _missing_moment(c):
    del c.optimizer_state["m"]


def _bad_rng_state(c):
    c.rng_state = {"bit_generator": "NoSuchGenerator", "state": {}}


def _hyperparameters(c):
    c.optimizer_state["hyperparameters"]["amsgrad"] = True


@pytest.mark.parametrize("corrupt, words", [
    (_wrong_param_shape, "'decoder.0.b' of shape (3,)"), (_missing_param, "holds parameters"),
    (_wrong_moment_shape, "optimizer state 'v' 'decoder.2.b' of shape (3,)"), (_missing_moment, "'m'"),
    (_bad_rng_state, "random state"), (_hyperparameters, "amsgrad"),
])
def test_restore_validates_everything_before_modifying_anything(trained, corrupt, words):
    """A problem found late (optimizer state, random state) must still leave the parameters untouched."""
    path, _, _ = trained
    loaded = load_checkpoint(path)
    corrupt(loaded)
    model = small_model(numpy_backend("float32", seed=5))
    optimizer = Adam(model.parameters())
    train(model, optimizer, batch(model.backend), 1)
    before = snapshot(model, optimizer)
    with pytest.raises(CheckpointError, match=re.escape(os.fspath(path)) + ".*" + re.escape(words)):
        restore(loaded, model, optimizer)
    assert_snapshots_equal(snapshot(model, optimizer), before)


# -- files that must be refused -----------------------------------------------------------------------


def test_a_newer_format_is_refused_with_upgrade_advice(trained, tmp_path):
    path, _, _ = trained

    def newer(meta):
        meta["format_version"] = FORMAT_VERSION + 2
        del meta["epoch"]  # a newer layout may lack what this reader needs: the version check comes first

    newer_path = rewrite(path, tmp_path / "newer.npz", edit_meta=newer)
    with pytest.raises(CheckpointError, match=f"newer minivae \\(format {FORMAT_VERSION + 2}, this one reads up "
                                              f"to {FORMAT_VERSION}\\); upgrade minivae"):
        load_checkpoint(newer_path)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nothing.npz")
    with pytest.raises(CheckpointError, match="is a folder"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("content", [b"", b"hello, I am text\n", b"PK", b"PK\x03\x04garbage", b"\x80\x04N."])
def test_not_an_archive(tmp_path, content):
    path = tmp_path / "checkpoint.npz"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="checkpoint.npz is truncated or corrupted"):
        load_checkpoint(path)


def test_a_single_npy_array_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "checkpoint.npz"
    with open(path, "wb") as handle:
        np.save(handle, np.zeros(3))
    with pytest.raises(CheckpointError, match="single .npy array"):
        load_checkpoint(path)


def test_missing_or_malformed_metadata(trained, tmp_path):
    path, _, _ = trained
    with pytest.raises(CheckpointError, match="no minivae metadata"):
        load_checkpoint(rewrite(path, tmp_path / "a.npz", drop=("meta",)))
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(rewrite(path, tmp_path / "b.npz", add={"meta": np.array("{not json")}))
    with pytest.raises(CheckpointError, match="not a JSON string"):
        load_checkpoint(rewrite(path, tmp_path / "c.npz", add={"meta": np.zeros(2)}))
    with pytest.raises(CheckpointError, match="lacks or mangles"):
        load_checkpoint(rewrite(path, tmp_path / "d.npz", edit_meta=lambda m: m.pop("optimizer")))
    with pytest.raises(CheckpointError, match="missing \\['param/decoder.0.W'\\]"):
        load_checkpoint(rewrite(path, tmp_path / "e.npz", drop=("param/decoder.0.W",)))
    with pytest.raises(CheckpointError, match="unexpected \\['param/stowaway'\\]"):
        load_checkpoint(rewrite(path, tmp_path / "f.npz", add={"param/stowaway": np.zeros(1)}))


def test_a_member_that_is_not_an_npy_array_is_refused(trained, tmp_path):
    path, _, _ = trained
    copy = tmp_path / "copy.npz"
    copy.write_bytes(path.read_bytes())
    with zipfile.ZipFile(copy, "a") as archive:
        archive.writestr("raw.npy", b"just bytes")
    with pytest.raises(CheckpointError, match="'raw' is not a NumPy array"):
        load_checkpoint(copy)


@pytest.mark.parametrize("fraction", [0.0, 0.001, 0.01, 0.25, 0.5, 0.75, 0.99, 0.999])
def test_a_truncated_file_is_refused(trained, tmp_path, fraction):
    data = trained[0].read_bytes()
    cut = tmp_path / "cut.npz"
    cut.write_bytes(data[:int(len(data) * fraction)])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load_checkpoint(cut)


def test_a_flipped_byte_in_array_data_is_refused(trained, tmp_path):
    """A flipped byte inside a parameter's data (numpy parses it fine) is caught by the CRC check."""
    data = bytearray(trained[0].read_bytes())
    with zipfile.ZipFile(trained[0]) as archive:
        members = [archive.getinfo(name) for name in ("param/encoder.0.W.npy", "optim/v/decoder.2.W.npy")]
    middles = [info.header_offset + 30 + len(info.filename) + len(info.extra) + info.file_size // 2
               for info in members]
    for position in middles:
        flipped = bytearray(data)
        flipped[position] ^= 0x10
        bad = tmp_path / "flipped.npz"
        bad.write_bytes(bytes(flipped))
        with pytest.raises(CheckpointError, match="truncated or corrupted"):
            load_checkpoint(bad)


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corrupt")
    backend = numpy_backend("float32", seed=0)
    model = small_model(backend)
    optimizer = Adam(model.parameters())
    train(model, optimizer, batch(backend), 1)
    path = folder / "checkpoint.npz"
    save_checkpoint(path, model, optimizer, epoch=1, extra={"k": [1, 2]})
    return folder, path.read_bytes(), load_checkpoint(path)


def assert_same_checkpoint(a, b):
    for field in dataclasses.fields(Checkpoint):
        if field.name in ("params", "optimizer_state", "path"):
            continue
        assert getattr(a, field.name) == getattr(b, field.name), field.name
    assert a.params.keys() == b.params.keys()
    for name in a.params:
        np.testing.assert_array_equal(a.params[name], b.params[name])
        for kind in ("m", "v"):
            np.testing.assert_array_equal(a.optimizer_state[kind][name], b.optimizer_state[kind][name])
    assert a.optimizer_state["step"] == b.optimizer_state["step"]


@given(data=st.data())
def test_random_truncation_is_always_a_checkpoint_error(original, data):
    folder, content, _ = original
    length = data.draw(st.integers(0, len(content) - 1))
    path = folder / "truncated.npz"
    path.write_bytes(content[:length])
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


@given(data=st.data())
def test_a_random_flipped_byte_is_refused_or_harmless(original, data):
    """Anywhere in the file: either CheckpointError (never another exception), or a byte zip ignores
    (a timestamp) and the checkpoint loads unchanged — never silently different values."""
    folder, content, expected = original
    position = data.draw(st.integers(0, len(content) - 1))
    mask = data.draw(st.integers(1, 255))
    damaged = bytearray(content)
    damaged[position] ^= mask
    path = folder / "flipped.npz"
    path.write_bytes(bytes(damaged))
    try:
        loaded = load_checkpoint(path)
    except CheckpointError:
        return
    assert_same_checkpoint(loaded, expected)


# -- pickles ------------------------------------------------------------------------------------------


def make_marker(path):
    with open(path, "w") as handle:
        handle.write("pickle payload ran")


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return make_marker, (self.marker,)


def test_a_pickled_member_is_refused_and_never_executed(trained, tmp_path):
    path, _, _ = trained
    marker = tmp_path / "payload-ran"
    evil = rewrite(path, tmp_path / "evil.npz",
                   add={"param/encoder.0.W": np.array([Payload(os.fspath(marker))], dtype=object)})
    with pytest.raises(CheckpointError, match="'param/encoder.0.W' holds a pickled object, refused for safety"):
        load_checkpoint(evil)
    assert not marker.exists()
    # the payload is live: a loader that allowed pickles would have run it
    with np.load(evil, allow_pickle=True) as npz:
        npz["param/encoder.0.W"]
    assert marker.exists()


def test_a_whole_file_pickle_is_refused_and_never_executed(tmp_path):
    import pickle

    marker = tmp_path / "payload-ran"
    path = tmp_path / "checkpoint.npz"
    path.write_bytes(pickle.dumps(Payload(os.fspath(marker))))
    with pytest.raises(CheckpointError, match="refused for safety"):
        load_checkpoint(path)
    assert not marker.exists()


# -- atomic writes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("failure, expected", [(OSError(28, "No space left on device"), CheckpointError),
                                               (KeyboardInterrupt(), KeyboardInterrupt)])
def test_a_failed_save_keeps_the_previous_checkpoint_and_leaves_no_temp_file(trained, monkeypatch, failure,
                                                                             expected):
    path, model, optimizer = trained
    previous = load_checkpoint(path)
    train(model, optimizer, batch(model.backend), 1)  # the model has moved on since

    def savez_then_fail(file, *args, **kwargs):
        file.write(b"PK\x03\x04" + b"half a checkpoint" * 100)
        raise failure

    monkeypatch.setattr(ckpt.np, "savez", savez_then_fail)
    with pytest.raises(expected):
        save_checkpoint(path, model, optimizer, epoch=9)
    monkeypatch.undo()
    assert os.listdir(path.parent) == [path.name]
    assert_same_checkpoint(load_checkpoint(path), previous)


def test_the_archive_is_plain_npz_with_no_pickles(trained):
    """Readable by plain NumPy with allow_pickle=False; the metadata is one 0-d unicode JSON string."""
    path, model, _ = trained
    with np.load(path, allow_pickle=False) as npz:
        names = set(npz.files)
        meta = npz["meta"]
        arrays = {k: npz[k] for k in npz.files}
    assert meta.ndim == 0 and meta.dtype.kind == "U"
    assert {f"param/{p.name}" for p in model.parameters()} <= names
    assert {f"optim/v/{p.name}" for p in model.parameters()} <= names
    assert all(not a.dtype.hasobject for a in arrays.values())
    with zipfile.ZipFile(path) as archive:
        assert all(info.filename.endswith(".npy") for info in archive.infolist())
        np.lib.format.read_array(io.BytesIO(archive.read("meta.npy")), allow_pickle=False)


# -- values no model can take (issue 13, items 5 and 7) -------------------------------------------------

def _set(section, key, value):
    def edit(meta):
        (meta if section is None else meta[section] if section != "hyper" else meta["optimizer"]["hyperparameters"]
         )[key] = value
    return edit


W = "param/encoder.0.W"
BAD_VALUES = [
    ({"add": {W: np.zeros((12, 8), dtype="<U3")}}, f"array '{W}' has dtype <U3, not the checkpoint's float32"),
    ({"add": {W: np.zeros((12, 8), dtype=np.complex64)}}, f"array '{W}' has dtype complex64"),
    ({"add": {W: np.zeros((12, 8), dtype=np.float64)}}, f"array '{W}' has dtype float64"),
    ({"add": {W: np.full((12, 8), np.nan, dtype=np.float32)}}, f"array '{W}' holds NaN"),
    ({"add": {"optim/v/decoder.0.b": np.full(8, np.inf, dtype=np.float32)}},
     "array 'optim/v/decoder.0.b' holds inf"),
    ({"add": {"optim/v/decoder.0.b": np.full(8, -1, dtype=np.float32)}}, "holds negative values"),
    ({"edit_meta": _set("optimizer", "step", -1)}, "optimizer: step=-1 must be an integer >= 0"),
    ({"edit_meta": _set("optimizer", "step", 2.5)}, "optimizer: step=2.5 must be an integer >= 0"),
    ({"edit_meta": _set("hyper", "lr", "0.001")}, "optimizer hyperparameter lr='0.001' must be a finite number > 0"),
    ({"edit_meta": _set("hyper", "lr", float("nan"))}, "lr=nan must be a finite number > 0"),
    ({"edit_meta": _set("hyper", "beta2", 1.0)}, "beta2=1.0 must be a number in [0, 1)"),
    ({"edit_meta": _set("hyper", "eps", True)}, "eps=True must be a finite number > 0"),
    ({"edit_meta": _set(None, "epoch", "4")}, "epoch='4' must be an integer >= 0"),
    ({"edit_meta": _set(None, "epoch", -4)}, "epoch=-4 must be an integer >= 0"),
    ({"edit_meta": _set(None, "dtype", "float16")}, "dtype='float16' must be one of float32, float64"),
    ({"edit_meta": _set("config", "hidden", [8.5])}, "config: hidden=[8.5] holds 8.5"),
    ({"edit_meta": _set("config", "variance", float("inf"))}, "config: variance=inf must be 'learned' or a finite number > 0"),
    ({"edit_meta": _set("config", "activation", "gelu")}, "config: activation='gelu' must be one of"),
    ({"edit_meta": lambda m: m["config"].pop("latent_dim")}, "config: latent_dim is missing"),
    ({"edit_meta": _set(None, "rng_state", [1, 2])}, "rng_state=[1, 2] must be an object"),
]


@pytest.mark.parametrize("change, words", BAD_VALUES, ids=[words for _, words in BAD_VALUES])
def test_a_checkpoint_holding_values_no_model_can_take_is_refused_on_load(trained, tmp_path, change, words):
    """Refused by load_checkpoint itself, naming the file and the array or field, before any model,
    optimizer or backend is touched (a complex parameter used to lose its imaginary part with a
    warning, v = inf froze a parameter silently, a string dtype or lr gave a traceback)."""
    path, _, _ = trained
    broken = rewrite(path, tmp_path / "broken.npz", **change)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(broken)
    message = str(info.value)
    assert words in message and os.fspath(broken) in message, message
    assert "\n" not in message


# -- CuPy's random state (issue 13, item 9) ---------------------------------------------------------------

class _CurandLike:
    """What Backend.rng_state sees of CuPy's XORWOW: the cuRAND state in a device int8 array ``_state``
    (``state()`` is a method returning a pointer there, not a dict)."""

    def __init__(self, xp, seed):
        self._state = xp.asarray(np.random.default_rng(seed).integers(-128, 128, 480).astype(np.int8))

    def state(self):
        return 0


class _WithBitGenerator:
    """A generator drawing as ``generator`` does, showing ``bit_generator`` instead of its own."""

    def __init__(self, generator, bit_generator):
        self._generator, self.bit_generator = generator, bit_generator

    def __getattr__(self, name):
        return getattr(self._generator, name)


def _cupy_like(seed):
    from device_guard import GuardBackend

    backend = GuardBackend("float32", seed=0)
    backend.rng = _WithBitGenerator(backend.rng, _CurandLike(backend.xp, seed))
    return backend


def test_a_cupy_random_state_round_trips_through_a_checkpoint(tmp_path):
    """The device state is saved as the member rng/device_state and restored into the generator's
    own device array, so a CuPy run resumes exactly (it used to be left out: "not supported")."""
    saving = _cupy_like(seed=1)
    model = small_model(saving)
    optimizer = Adam(model.parameters())
    path = tmp_path / "checkpoint.npz"
    save_checkpoint(path, model, optimizer, epoch=1)
    saved = saving.rng.bit_generator._state.get()
    checkpoint = load_checkpoint(path)
    assert checkpoint.rng_state["bit_generator"] == "_CurandLike"
    np.testing.assert_array_equal(checkpoint.rng_state["device_state"], saved)

    resuming = _cupy_like(seed=2)
    target = small_model(resuming)
    device_array = resuming.rng.bit_generator._state
    assert (device_array.get() != saved).any()
    assert restore(checkpoint, target, Adam(target.parameters())) is True
    assert resuming.rng.bit_generator._state is device_array  # written into, not replaced
    np.testing.assert_array_equal(device_array.get(), saved)


def test_a_random_state_of_the_other_kind_is_not_restored(tmp_path, trained):
    """A NumPy state on a CuPy-like generator (and back): restore reports False, the run goes on."""
    path, _, _ = trained
    cupy_like = _cupy_like(seed=3)
    model = small_model(cupy_like)
    before = cupy_like.rng.bit_generator._state.get()
    assert restore(load_checkpoint(path), model, Adam(model.parameters())) is False
    np.testing.assert_array_equal(cupy_like.rng.bit_generator._state.get(), before)
    save_checkpoint(tmp_path / "cupy.npz", model, Adam(model.parameters()), epoch=1)
    numpy_model = small_model(numpy_backend("float32"))
    assert restore(load_checkpoint(tmp_path / "cupy.npz"), numpy_model, Adam(numpy_model.parameters())) is False


def test_get_backend_takes_numpy_dtypes():
    """issue 13, item 10: get_backend(dtype=np.float32) was refused."""
    for dtype in (np.float32, np.dtype("float32"), "float32"):
        assert numpy_backend(dtype).dtype == np.float32
    for bad in (np.float16, "float16", None, "bogus"):
        with pytest.raises(ValueError, match="dtype must be one of"):
            numpy_backend(bad)


def test_load_model_gives_the_saved_model(tmp_path):
    """``minivae.load_model`` of a run folder and of its checkpoint file: the same parameters and the
    same decoder outputs as the model that was saved; a config.json of another run is refused."""
    backend = numpy_backend(dtype="float32", seed=3)
    model = small_model(backend)
    optimizer = Adam(model.parameters(), lr=1e-2)
    train(model, optimizer, batch(backend).astype(np.float32), steps=2)
    save_checkpoint(str(tmp_path / "checkpoint.npz"), model, optimizer, epoch=1)
    z = np.random.default_rng(5).standard_normal((4, 3)).astype(np.float32)
    for path in (tmp_path, tmp_path / "checkpoint.npz"):
        loaded = minivae.load_model(str(path))
        assert host_params(loaded).keys() == host_params(model).keys()
        for name, array in host_params(model).items():
            np.testing.assert_array_equal(host_params(loaded)[name], array)
        np.testing.assert_array_equal(loaded.decode(z), model.decode(z))
    with pytest.raises(CheckpointError, match="no such run folder"):
        minivae.load_model(str(tmp_path / "missing"))


# config.json as minivae.train writes it for small_model (settings.py's names: n_samples, not samples)
SMALL_RUN = {"dataset": "mnist", "data_dir": None, "backend": "numpy", "dtype": "float32", "epochs": 1,
             "batch_size": 16, "lr": 1e-2, "latent_dim": 3, "n_samples": 1, "hidden": [8], "decoder_hidden": None,
             "architecture": "mlp", "activation": "relu", "likelihood": "bernoulli", "objective": "elbo",
             "beta": 1.0, "kl_warmup": 0, "binarize": "none", "seed": 3, "version": "0.1.0"}
DROP = object()


@pytest.mark.parametrize("edit, field", [
    ({"latent_dim": 4}, "latent_dim"), ({"hidden": [16]}, "hidden"), ({"decoder_hidden": [5]}, "decoder_hidden"),
    ({"activation": "tanh"}, "activation"), ({"likelihood": "gaussian", "variance": 1.0}, "likelihood"),
    ({"n_samples": 2}, "n_samples"), ({"samples": 2, "n_samples": DROP}, "n_samples"),
    ({"objective": "iwae"}, "objective"),
])
def test_load_model_compares_every_model_setting_of_config_json(tmp_path, edit, field):
    """The folder's config.json and the checkpoint use the same names (minivae/settings.py), so every
    model setting config.json records is compared with the checkpoint's, not only three shared ones
    (n_samples and the objective went unchecked); an old name (samples) is read as today's."""
    backend = numpy_backend(dtype="float32", seed=3)
    model = small_model(backend)
    save_checkpoint(str(tmp_path / "checkpoint.npz"), model, Adam(model.parameters()), epoch=1)
    (tmp_path / "config.json").write_text(json.dumps(SMALL_RUN))
    assert minivae.load_model(str(tmp_path)).config == model.config  # decoder_hidden null: hidden reversed
    settings = {key: value for key, value in {**SMALL_RUN, **edit}.items() if value is not DROP}
    (tmp_path / "config.json").write_text(json.dumps(settings))
    with pytest.raises(CheckpointError, match=rf"was trained with {field}=.*config\.json must say the same"):
        minivae.load_model(str(tmp_path))
    (tmp_path / "alone").mkdir()
    os.replace(tmp_path / "checkpoint.npz", tmp_path / "alone" / "checkpoint.npz")  # the advice: the file alone
    assert minivae.load_model(str(tmp_path / "alone")).config == model.config
