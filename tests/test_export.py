"""Safetensors export and import (minivae/export.py, minivae/safetensors_io.py): the PyTorch example's
names and layouts, nn.Sequential names otherwise, round trips through safetensors.numpy, files that do
not fit refused naming the tensor, files written by PyTorch (no metadata) read from their shapes."""

import json

import numpy as np
import pytest
import safetensors.numpy
from safetensors import safe_open

import minivae
from minivae import safetensors_io
from minivae import settings as run_settings
from minivae.backend import numpy_backend
from minivae.checkpoint import save_checkpoint
from minivae.errors import CheckpointError
from minivae.export import main as export_main
from minivae.optim import Adam
from minivae.safetensors_io import init_from, load_safetensors, save_safetensors

EXAMPLE = ["fc1.weight", "fc1.bias", "fc21.weight", "fc21.bias", "fc22.weight", "fc22.bias", "fc3.weight",
           "fc3.bias", "fc4.weight", "fc4.bias"]


def model_of(seed=0, dtype="float32", **config):
    """A small VAE (all sizes different, so a transposed or swapped tensor cannot pass) with random weights."""
    config = {"input_dim": 12, "hidden": (5,), "latent_dim": 3, **config}
    return minivae.VAE(**config, backend=numpy_backend(dtype, seed=seed))


def params(model):
    return {p.name: np.array(p.data) for p in model.parameters()}


def read(path):
    with safe_open(str(path), framework="np") as handle:
        return {name: handle.get_tensor(name) for name in handle.keys()}, handle.metadata()


def relu(a):
    return np.maximum(a, 0)


def example_forward(tensors, x, z):
    """The PyTorch example's encode and decode, written from its definition on the file's tensors
    (``nn.Linear``: ``x weight^T + bias``): mu, logvar, sigmoid of the decoder's logits."""
    def linear(name, a):
        return a @ tensors[f"{name}.weight"].T + tensors[f"{name}.bias"]
    h = relu(linear("fc1", x))
    return linear("fc21", h), linear("fc22", h), 1 / (1 + np.exp(-linear("fc4", relu(linear("fc3", z)))))


def test_example_names_and_layouts(tmp_path):
    """One hidden layer each side: fc1 ... fc4, each weight (out, in) = W^T; fc21 and fc22 are the two
    halves of the encoder head [mu | logvar]; the config, dtype and scheme are in the metadata."""
    model = model_of(decoder_hidden=(7,))
    save_safetensors(model, tmp_path / "m.safetensors")
    tensors, metadata = read(tmp_path / "m.safetensors")
    ours = params(model)
    assert sorted(tensors) == sorted(EXAMPLE)
    expected = {"fc1.weight": ours["encoder.0.W"].T, "fc1.bias": ours["encoder.0.b"],
                "fc21.weight": ours["encoder.2.W"][:, :3].T, "fc21.bias": ours["encoder.2.b"][:3],
                "fc22.weight": ours["encoder.2.W"][:, 3:].T, "fc22.bias": ours["encoder.2.b"][3:],
                "fc3.weight": ours["decoder.0.W"].T, "fc3.bias": ours["decoder.0.b"],
                "fc4.weight": ours["decoder.2.W"].T, "fc4.bias": ours["decoder.2.b"]}
    for name, array in expected.items():
        assert tensors[name].dtype == np.float32
        np.testing.assert_array_equal(tensors[name], array, err_msg=name)
    assert tensors["fc1.weight"].shape == (5, 12) and tensors["fc21.weight"].shape == (3, 5)
    assert tensors["fc3.weight"].shape == (7, 3) and tensors["fc4.weight"].shape == (12, 7)
    assert json.loads(metadata["minivae.config"]) == model.config
    assert (metadata["minivae.dtype"], metadata["minivae.names"]) == ("float32", "pytorch-example")
    assert metadata["minivae.version"] == minivae.__version__


def test_example_forward_on_the_file_matches_the_model(tmp_path):
    """The example's forward computed from the exported tensors (an independent truth) gives the
    model's mu, logvar and decoded means."""
    model = model_of(seed=4)
    save_safetensors(model, tmp_path / "m.safetensors")
    tensors, _ = read(tmp_path / "m.safetensors")
    rng = np.random.default_rng(1)
    x, z = rng.random((6, 12), dtype=np.float32), rng.standard_normal((6, 3)).astype(np.float32)
    mu, logvar, means = example_forward(tensors, x, z)
    ours = model.encode(x)
    np.testing.assert_allclose(ours[0], mu, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours[1], logvar, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.decode(z), means, rtol=1e-5, atol=1e-6)


def test_sequential_names_for_other_mlps(tmp_path):
    """Two hidden layers (and a learned variance: 2D outputs): nn.Sequential indices, the head one
    Linear of 2J outputs, every Linear weight W^T."""
    model = model_of(hidden=(6, 5), decoder_hidden=(4,), likelihood="gaussian", variance="learned")
    save_safetensors(model, tmp_path / "m.safetensors")
    tensors, metadata = read(tmp_path / "m.safetensors")
    shapes = {"encoder.0.weight": (6, 12), "encoder.0.bias": (6,), "encoder.2.weight": (5, 6), "encoder.2.bias": (5,),
              "encoder.4.weight": (6, 5), "encoder.4.bias": (6,), "decoder.0.weight": (4, 3), "decoder.0.bias": (4,),
              "decoder.2.weight": (24, 4), "decoder.2.bias": (24,)}
    assert {name: array.shape for name, array in tensors.items()} == shapes
    for name, array in params(model).items():
        layer, kind = name.rsplit(".", 1)
        np.testing.assert_array_equal(tensors[f"{layer}.weight"].T if kind == "W" else tensors[f"{layer}.bias"], array)
    assert metadata["minivae.names"] == "sequential"


def test_conv_names_and_pytorch_shapes(tmp_path):
    """The conv VAE: Conv2d (out, in, kh, kw) and ConvTranspose2d (in, out, kh, kw) as they are, the
    Linear layers transposed, at the nn.Sequential indices of minivae/conv.py."""
    model = model_of(input_dim=64, latent_dim=2, architecture="conv", image_shape=(8, 8), channels=(2, 3))
    save_safetensors(model, tmp_path / "m.safetensors")
    tensors, _ = read(tmp_path / "m.safetensors")
    shapes = {"encoder.1.weight": (2, 1, 4, 4), "encoder.1.bias": (2,), "encoder.3.weight": (3, 2, 4, 4),
              "encoder.3.bias": (3,), "encoder.6.weight": (4, 12), "encoder.6.bias": (4,),
              "decoder.0.weight": (12, 2), "decoder.0.bias": (12,), "decoder.3.weight": (3, 2, 4, 4),
              "decoder.3.bias": (2,), "decoder.5.weight": (2, 1, 4, 4), "decoder.5.bias": (1,)}
    assert {name: array.shape for name, array in tensors.items()} == shapes
    ours = params(model)
    np.testing.assert_array_equal(tensors["encoder.3.weight"], ours["encoder.3.W"])
    np.testing.assert_array_equal(tensors["decoder.5.weight"], ours["decoder.5.W"])
    np.testing.assert_array_equal(tensors["encoder.6.weight"], ours["encoder.6.W"].T)


@pytest.mark.parametrize("config", [
    {}, {"hidden": (6, 5), "activation": "tanh"}, {"dtype": "float64", "decoder_hidden": (4, 4)},
    {"input_dim": 64, "architecture": "conv", "image_shape": (8, 8), "channels": (2, 3)},
], ids=["example", "deep-tanh", "float64", "conv"])
def test_load_model_of_an_export_gives_the_same_model(tmp_path, config):
    """minivae.load_model(FILE.safetensors): the same config, dtype and weights bit for bit, so the
    same mu, logvar and decoded means."""
    config = dict(config)
    dtype = config.pop("dtype", "float32")
    model = model_of(seed=2, dtype=dtype, **config)
    path = tmp_path / "m.safetensors"
    save_safetensors(model, path)
    loaded = minivae.load_model(str(path))
    assert loaded.config == model.config and loaded.backend.dtype == np.dtype(dtype)
    for name, array in params(model).items():
        np.testing.assert_array_equal(params(loaded)[name], array, err_msg=name)
    rng = np.random.default_rng(3)
    x = rng.random((4, model.config["input_dim"])).astype(dtype)
    z = rng.standard_normal((4, model.latent_dim)).astype(dtype)
    for ours, theirs in zip(model.encode(x), loaded.encode(x)):
        np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(model.decode(z), loaded.decode(z))


def pytorch_style_tensors(rng, dims=(12, 5, 3, 7)):
    """What ``safetensors.torch.save_file(VAE().state_dict())`` writes for the example (D, H, J, H'),
    made with NumPy: its names, (out, in) weights, float32."""
    D, H, J, H2 = dims
    shapes = {"fc1": (H, D), "fc21": (J, H), "fc22": (J, H), "fc3": (H2, J), "fc4": (D, H2)}
    tensors = {}
    for name, shape in shapes.items():
        tensors[f"{name}.weight"] = rng.uniform(-0.5, 0.5, shape).astype(np.float32)
        tensors[f"{name}.bias"] = rng.uniform(-0.5, 0.5, shape[:1]).astype(np.float32)
    return tensors


def test_a_pytorch_file_without_metadata_is_read_from_its_shapes(tmp_path):
    """No metadata: the config comes from the shapes (relu, Bernoulli), and the model computes the
    example's forward on those tensors."""
    tensors = pytorch_style_tensors(np.random.default_rng(0))
    path = tmp_path / "torch.safetensors"
    safetensors.numpy.save_file(tensors, str(path))
    model = minivae.load_model(str(path))
    assert model.config == {"input_dim": 12, "hidden": [5], "latent_dim": 3, "decoder_hidden": [7],
                            "activation": "relu", "likelihood": "bernoulli", "variance": 1.0, "n_samples": 1}
    rng = np.random.default_rng(1)
    x, z = rng.random((5, 12), dtype=np.float32), rng.standard_normal((5, 3)).astype(np.float32)
    mu, logvar, means = example_forward(tensors, x, z)
    np.testing.assert_allclose(model.encode(x)[0], mu, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.encode(x)[1], logvar, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.decode(z), means, rtol=1e-5, atol=1e-6)


def _missing(t):
    del t["fc22.bias"]


def _extra(t):
    t["fc5.weight"] = np.zeros((2, 2), np.float32)


def _transposed(t):
    t["fc3.weight"] = np.ascontiguousarray(t["fc3.weight"].T)


def _half(t):
    t["fc1.bias"] = t["fc1.bias"].astype(np.float16)


def _nan(t):
    t["fc4.weight"][3, 2] = np.nan


def _inf(t):
    t["fc21.bias"][1] = -np.inf


@pytest.mark.parametrize("spoil, tensor, words", [
    (_missing, "fc22.bias", "is missing"), (_extra, "fc5.weight", "is not a tensor of this model"),
    (_transposed, "fc3.weight", "has shape (3, 7), this model"), (_half, "fc1.bias", "has dtype F16"),
    (_nan, "fc4.weight", "NaN or infinite"), (_inf, "fc21.bias", "NaN or infinite"),
], ids=["missing", "extra", "shape", "dtype", "nan", "inf"])
@pytest.mark.parametrize("with_metadata", [False, True], ids=["pytorch", "minivae"])
def test_a_file_that_does_not_fit_is_refused_naming_the_tensor(tmp_path, monkeypatch, spoil, tensor, words,
                                                                with_metadata):
    """Each problem: one line naming the file and the tensor, before any model is built."""
    if with_metadata:
        save_safetensors(model_of(decoder_hidden=(7,)), tmp_path / "good.safetensors")
        tensors, metadata = read(tmp_path / "good.safetensors")
    else:
        tensors, metadata = pytorch_style_tensors(np.random.default_rng(0)), None
    spoil(tensors)
    path = tmp_path / "bad.safetensors"
    safetensors.numpy.save_file(tensors, str(path), metadata=metadata)

    def no_build(**_):
        raise AssertionError("a model was built from a file that does not fit")
    monkeypatch.setattr(safetensors_io, "VAE", no_build)
    with pytest.raises(CheckpointError) as error:
        minivae.load_model(str(path))
    message = str(error.value)
    assert f"{path}: tensor {tensor!r}" in message and words in message and "\n" not in message
    if spoil is _transposed:  # a minivae file's sizes come from its config, a PyTorch file's from its shapes
        assert ("needs (7, 3)" if with_metadata else "sizes read from fc1.weight, fc21.weight, fc3.weight") in message


@pytest.mark.parametrize("content, words", [
    (b"not a safetensors file at all", "not a readable safetensors file"),
    (None, "no such safetensors file"),
])
def test_an_unreadable_file_is_one_line(tmp_path, content, words):
    path = tmp_path / "x.safetensors"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=words) as error:
        load_safetensors(str(path))
    assert "\n" not in str(error.value)


def test_metadata_that_cannot_be_used_is_refused(tmp_path):
    """A config in the metadata that is not JSON, or breaks a rule, names the metadata field; a
    file with neither metadata nor the example's names says what it would need."""
    tensors, metadata = pytorch_style_tensors(np.random.default_rng(0)), {"minivae.config": "{oops"}
    cases = [(metadata, "minivae.config is not JSON"),
             ({"minivae.config": json.dumps(dict(model_of().config, latent_dim=0))}, "latent_dim=0 must be an integer"),
             ({"minivae.config": json.dumps(dict(model_of().config, architecture="conv", image_shape=[6, 2],
                                                 channels=[2, 3]))}, "multiples of 4")]
    for metadata, words in cases:
        path = tmp_path / "bad.safetensors"
        safetensors.numpy.save_file(tensors, str(path), metadata=metadata)
        with pytest.raises(CheckpointError, match=words):
            load_safetensors(str(path))
    renamed = {name.replace("fc1.", "encoder.0."): array for name, array in tensors.items()}
    safetensors.numpy.save_file(renamed, str(tmp_path / "seq.safetensors"))
    with pytest.raises(CheckpointError, match="'fc1.weight' is missing, and the file holds no minivae.config"):
        load_safetensors(str(tmp_path / "seq.safetensors"))


def test_init_from_copies_the_weights_into_a_model(tmp_path):
    """init_from: a fresh model (float64 here) takes a float32 file's weights; a file of another
    model is refused naming the tensor, and the model is left as it was."""
    source = model_of(seed=5)
    path = tmp_path / "m.safetensors"
    save_safetensors(source, path)
    target = model_of(seed=6, dtype="float64")
    init_from(target, str(path))
    for name, array in params(source).items():
        np.testing.assert_array_equal(params(target)[name], array.astype(np.float64))
    other = model_of(seed=7, latent_dim=4)
    before = params(other)
    with pytest.raises(CheckpointError, match=r"tensor 'fc21.weight' has shape \(3, 5\), this model needs \(4, 5\); "
                                              r"build the model the file holds"):
        init_from(other, str(path))
    for name, array in before.items():
        np.testing.assert_array_equal(params(other)[name], array)


def test_save_into_a_missing_folder_is_one_line(tmp_path):
    with pytest.raises(CheckpointError, match="cannot write .*no_such_folder"):
        save_safetensors(model_of(), tmp_path / "no_such_folder" / "m.safetensors")


def run_folder(tmp_path):
    """A run folder as minivae.train leaves it: checkpoint.npz and config.json."""
    model = model_of(seed=8)
    save_checkpoint(str(tmp_path / "checkpoint.npz"), model, Adam(model.parameters()), epoch=1)
    settings = json.loads(json.dumps(run_settings.used(run_settings.defaults(
        run_settings.RUN_SETTINGS, latent_dim=3, hidden=[5], likelihood="bernoulli", epochs=1,
        dataset="fashion-mnist-small"))))
    (tmp_path / "config.json").write_text(json.dumps(settings))
    return model, settings


def test_export_command_writes_the_run_with_its_config(tmp_path, capsys):
    """python -m minivae.export RUN: model.safetensors in the folder by default, the run's
    config.json in its metadata; --out must end in .safetensors (one line, status 1)."""
    model, settings = run_folder(tmp_path)
    assert export_main([str(tmp_path), "--format", "safetensors"]) == 0
    assert "wrote" in capsys.readouterr().out
    tensors, metadata = read(tmp_path / "model.safetensors")
    assert json.loads(metadata["minivae.run"]) == settings
    assert json.loads(metadata["minivae.config"]) == model.config
    np.testing.assert_array_equal(tensors["fc1.weight"], params(model)["encoder.0.W"].T)
    out = tmp_path / "elsewhere.safetensors"
    assert export_main([str(tmp_path / "checkpoint.npz"), "--out", str(out), "--quiet"]) == 0
    assert capsys.readouterr().out == "" and out.is_file()
    assert export_main([str(tmp_path), "--out", str(tmp_path / "m.npz")]) == 1
    err = capsys.readouterr().err
    assert "must end in .safetensors" in err and err.count("\n") == 1
