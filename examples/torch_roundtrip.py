"""A minivae run in PyTorch and back: export, load into the PyTorch example's VAE, compare, return.

    python -m minivae.train --dataset fashion-mnist-small --epochs 1 --out results/run
    python examples/torch_roundtrip.py results/run

Needs PyTorch, which minivae does not depend on (``pip install torch`` separately; the CPU build is
enough). Trains nothing:

1. exports the run with ``python -m minivae.export`` (safetensors, the example's names and layouts);
2. loads the file into ``VAE`` below, the classic PyTorch example's model (fc1 784->400, fc21 and fc22
   400->20, fc3 20->400, fc4 400->784, relu, sigmoid), with ``load_state_dict(..., strict=True)``;
3. compares mu, logvar and the decoded means of both on the same inputs (float32: expect agreement
   to rounding, about 1e-6);
4. saves PyTorch's state dict with ``safetensors.torch.save_file`` (no metadata: minivae reads the
   config from the shapes), reads it back with ``minivae.load_model`` and compares again.

Inputs: the run's own decoder means for 256 draws z ~ N(0, I) (images like its data, without
reading a dataset), and 256 further draws of z for the decoders. Exit status 1 when a difference
exceeds --tolerance.
"""

import argparse
import os
import sys
import tempfile

import numpy as np

import minivae
from minivae.export import export

try:
    import safetensors.torch
    import torch
    from torch import nn
    from torch.nn import functional
except ImportError as error:
    sys.exit(f"torch_roundtrip.py: needs PyTorch ({error}); install it separately: pip install torch")


class VAE(nn.Module):
    """The classic PyTorch example's VAE (its layer names, sizes and activations), sizes as arguments."""

    def __init__(self, input_dim=784, hidden=400, latent_dim=20):
        super().__init__()
        self.input_dim = input_dim
        self.fc1 = nn.Linear(input_dim, hidden)
        self.fc21 = nn.Linear(hidden, latent_dim)
        self.fc22 = nn.Linear(hidden, latent_dim)
        self.fc3 = nn.Linear(latent_dim, hidden)
        self.fc4 = nn.Linear(hidden, input_dim)

    def encode(self, x):
        h1 = functional.relu(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)

    def reparameterize(self, mu, logvar):
        return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)

    def decode(self, z):
        return torch.sigmoid(self.fc4(functional.relu(self.fc3(z))))

    def forward(self, x):
        mu, logvar = self.encode(x.view(-1, self.input_dim))
        return self.decode(self.reparameterize(mu, logvar)), mu, logvar


def outputs_minivae(model, x, z):
    """mu, logvar, the decoded means at z = mu and at the given z, as float64 host arrays."""
    mu, logvar = model.encode(x)
    return [np.asarray(a, dtype=np.float64) for a in (mu, logvar, model.decode(mu), model.decode(z))]


def outputs_torch(vae, x, z):
    with torch.no_grad():
        mu, logvar = vae.encode(torch.from_numpy(x))
        return [a.double().numpy() for a in (mu, logvar, vae.decode(mu), vae.decode(torch.from_numpy(z)))]


def compare(title, ours, theirs, tolerance):
    """Print the max |difference| of each output; True when all are within ``tolerance``."""
    print(title)
    worst = 0.0
    for name, a, b in zip(("mu", "logvar", "decoded means at z = mu", "decoded means at z ~ N(0, I)"), ours, theirs):
        difference = float(np.max(np.abs(a - b)))
        worst = max(worst, difference)
        print(f"  max |difference| {name:<30} {difference:.3g}")
    return worst <= tolerance


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a run folder of python -m minivae.train (a one-hidden-layer MLP, Bernoulli)")
    parser.add_argument("--out", help="folder for the two .safetensors files (default: a temporary folder)")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="largest difference accepted (default: 1e-4)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    model = minivae.load_model(args.run)
    config = model.config
    if not (len(config["hidden"]) == len(config["decoder_hidden"]) == 1 and config["hidden"] == config["decoder_hidden"]
            and config["activation"] == "relu" and config["likelihood"] == "bernoulli"
            and config.get("architecture", "mlp") == "mlp"):
        sys.exit(f"torch_roundtrip.py: {args.run} is not the example's model (one hidden layer each side, relu, "
                 f"Bernoulli): export it with python -m minivae.export and use the nn.Sequential module of README.md")
    folder = args.out or tempfile.mkdtemp(prefix="torch_roundtrip.")
    os.makedirs(folder, exist_ok=True)
    exported, size = export(args.run, os.path.join(folder, "minivae.safetensors"))
    print(f"exported {exported} ({size} bytes)")

    x = np.asarray(model.sample(256))
    z = model.backend.standard_normal((256, config["latent_dim"]))
    vae = VAE(config["input_dim"], config["hidden"][0], config["latent_dim"]).float()
    vae.load_state_dict(safetensors.torch.load_file(exported), strict=True)
    ours = outputs_minivae(model, x, z)
    ok = compare("minivae against PyTorch's VAE loaded from the export (strict=True):", ours,
                 outputs_torch(vae, x, z), args.tolerance)

    saved = os.path.join(folder, "pytorch.safetensors")
    safetensors.torch.save_file(vae.state_dict(), saved)
    back = minivae.load_model(saved)
    ok &= compare(f"minivae.load_model of PyTorch's state dict ({saved}) against PyTorch's VAE:",
                  outputs_minivae(back, x, z), outputs_torch(vae, x, z), args.tolerance)
    same = all(np.array_equal(p.data, q.data) for p, q in zip(model.parameters(), back.parameters()))
    print(f"weights after the round trip identical to the run's, bit for bit: {same}")
    if not (ok and same):
        sys.exit(f"torch_roundtrip.py: a difference exceeds {args.tolerance:g}, or the weights changed")


if __name__ == "__main__":
    main()
