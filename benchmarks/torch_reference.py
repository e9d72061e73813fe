"""The classic PyTorch VAE example (pytorch/examples, vae/main.py) on Fashion-MNIST, as a reference.

Same model, loss, optimizer and loop as the example: 784-400-(20, 20)-400-784 with ReLU and a
sigmoid output, loss = binary_cross_entropy(reduction='sum') + KL, Adam lr 1e-3, batch 128, a
shuffled train loader, ``torch.manual_seed(seed)`` before the model is built, and the 64 prior draws
the example makes after each epoch (so the random stream matches it). The test loss is the sum over
the 10,000 test images of BCE + KL with z sampled, divided by 10,000 -- as the example prints it --
and, in addition, the same with z = mu.

Only the data pipeline differs: the IDX files are read here with gzip + NumPy (torchvision is not
needed), pixels / 255 as float32 like ``transforms.ToTensor()``, and the loader yields whole batches
by indexing (same shuffled order as ``DataLoader(shuffle=True)``, without its per-sample collate).

PyTorch is an optional dependency of the benchmarks only, never of minivae:
    pip install torch==2.13.0

    python benchmarks/torch_reference.py                       # 3 epochs, seed 1, 2 threads
    python benchmarks/torch_reference.py --seeds 1 2 3 --json results/torch_reference.json
"""

import argparse
import gzip
import json
import os
import statistics
import sys
import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

DEFAULT_DATA_DIR = "/usr/share/datasets/fashion-mnist"  # Debian: apt-get install dataset-fashion-mnist
IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
SPLITS = {"train": "train-images-idx3-ubyte", "test": "t10k-images-idx3-ubyte"}


# ----------------------------------------------------------------------------------------- data

def read_idx(path):
    """Read one IDX file (raw or .gz) into a NumPy array of the shape its header gives.

    Header: two zero bytes, a type code (0x08 = uint8, ...), the number of dimensions, then each
    dimension as a big-endian uint32; the values follow, big-endian.
    """
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (header {raw[:4]!r})")
    ndim = raw[3]
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(IDX_DTYPES[raw[2]])
    data = np.frombuffer(raw, dtype=dtype, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape}, found {data.size} values")
    return data.reshape(shape)


def find_idx(data_dir, stem):
    """The path of ``stem`` or ``stem.gz`` in data_dir; raises FileNotFoundError naming both."""
    for name in (stem, stem + ".gz"):
        path = os.path.join(data_dir, name)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(f"neither {stem} nor {stem}.gz in {data_dir} "
                            "(on Debian: apt-get install dataset-fashion-mnist, or pass --data-dir)")


def load_images(data_dir, split):
    """The images of a split as float32 (N, 784) in [0, 1]: pixels / 255, like ToTensor()."""
    images = read_idx(find_idx(data_dir, SPLITS[split]))
    return torch.from_numpy(images.reshape(images.shape[0], -1).astype(np.float32) / 255.0)


def train_loader(images, batch_size):
    """Shuffled batches, in the order ``DataLoader(dataset, batch_size, shuffle=True)`` gives: the
    same RandomSampler draws from the global generator, but each batch is one indexing operation."""
    dataset = torch.utils.data.TensorDataset(images)
    sampler = torch.utils.data.BatchSampler(torch.utils.data.RandomSampler(dataset), batch_size, drop_last=False)
    return torch.utils.data.DataLoader(dataset, sampler=sampler, batch_size=None)


def test_batches(images, batch_size):
    """The test set in order (shuffle=False), batch by batch."""
    return torch.split(images, batch_size)


# ---------------------------------------------------------------------------------- model, loss

class VAE(nn.Module):
    """The example's model: fc1 784->400, fc21 / fc22 400->20 (mu, logvar), fc3 20->400, fc4 400->784."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(784, 400)
        self.fc21 = nn.Linear(400, 20)
        self.fc22 = nn.Linear(400, 20)
        self.fc3 = nn.Linear(20, 400)
        self.fc4 = nn.Linear(400, 784)

    def encode(self, x):
        h1 = F.relu(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)

    def reparameterize(self, mu, logvar):
        std = torch.exp(0.5 * logvar)
        eps = torch.randn_like(std)
        return mu + eps * std

    def decode(self, z):
        h3 = F.relu(self.fc3(z))
        return torch.sigmoid(self.fc4(h3))

    def forward(self, x):
        mu, logvar = self.encode(x.view(-1, 784))
        z = self.reparameterize(mu, logvar)
        return self.decode(z), mu, logvar


def loss_function(recon_x, x, mu, logvar):
    """Reconstruction + KL divergence, summed over the batch (the example's loss)."""
    bce = F.binary_cross_entropy(recon_x, x.view(-1, 784), reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return bce + kld


# ------------------------------------------------------------------------------ train, evaluate

def train_epoch(model, optimizer, loader):
    """One pass over the loader; returns the summed training loss (as the example accumulates it)."""
    model.train()
    train_loss = 0.0
    for data in loader:
        data = data[0]
        optimizer.zero_grad()
        recon_batch, mu, logvar = model(data)
        loss = loss_function(recon_batch, data, mu, logvar)
        loss.backward()
        train_loss += loss.item()
        optimizer.step()
    return train_loss


@torch.no_grad()
def test_loss(model, batches, n_images, use_mean):
    """Sum over the test set of BCE + KL, divided by the number of images; z is sampled (the
    example's test loss) or, with ``use_mean``, z = mu (no random draws)."""
    model.eval()
    total = 0.0
    for data in batches:
        if use_mean:
            mu, logvar = model.encode(data)
            recon = model.decode(mu)
        else:
            recon, mu, logvar = model(data)
        total += loss_function(recon, data, mu, logvar).item()
    return total / n_images


def run_seed(seed, train_images, test_images, epochs, batch_size, lr):
    """Train the example from ``torch.manual_seed(seed)``; one dict of numbers per epoch."""
    torch.manual_seed(seed)
    loader = train_loader(train_images, batch_size)
    tests = test_batches(test_images, batch_size)
    model = VAE()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    history = []
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        train_total = train_epoch(model, optimizer, loader)
        train_seconds = time.perf_counter() - start
        sampled = test_loss(model, tests, len(test_images), use_mean=False)
        at_mean = test_loss(model, tests, len(test_images), use_mean=True)
        with torch.no_grad():  # the example decodes 64 prior samples here; keep its random stream
            model.decode(torch.randn(64, 20))
        row = {"seed": seed, "epoch": epoch, "train_loss": train_total / len(train_images),
               "test_loss_sampled": sampled, "test_loss_mean": at_mean, "train_seconds": train_seconds}
        history.append(row)
        print(f"seed {seed}  epoch {epoch}  train {row['train_loss']:8.3f}  test (z sampled) {sampled:8.3f}  "
              f"test (z = mu) {at_mean:8.3f}  {train_seconds:6.2f} s/epoch", flush=True)
    return history


def summarize(last_epochs):
    """Seed-to-seed spread of the final epoch's numbers: mean, sample std, min, max, (max-min)/mean."""
    summary = {}
    for key in ("train_loss", "test_loss_sampled", "test_loss_mean", "train_seconds"):
        values = [row[key] for row in last_epochs]
        mean = statistics.fmean(values)
        summary[key] = {"mean": mean, "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                        "min": min(values), "max": max(values),
                        "range_over_mean": (max(values) - min(values)) / mean}
    return summary


def print_summary(summary, n_seeds, epochs):
    print(f"\nafter epoch {epochs}, over {n_seeds} seeds:")
    for key, s in summary.items():
        print(f"  {key:18s} mean {s['mean']:9.3f}  std {s['std']:7.3f}  min {s['min']:9.3f}  "
              f"max {s['max']:9.3f}  (max-min)/mean {100 * s['range_over_mean']:.2f}%")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="folder with the Fashion-MNIST IDX files")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1], help="one run per seed (the example: 1)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--json", metavar="PATH", help="write every epoch's numbers and the summary here")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    train_images = load_images(args.data_dir, "train")
    test_images = load_images(args.data_dir, "test")
    print(f"torch {torch.__version__}, {args.threads} threads; train {tuple(train_images.shape)}, "
          f"test {tuple(test_images.shape)}", flush=True)
    history = []
    for seed in args.seeds:
        history += run_seed(seed, train_images, test_images, args.epochs, args.batch_size, args.lr)
    summary = summarize([row for row in history if row["epoch"] == args.epochs])
    print_summary(summary, len(args.seeds), args.epochs)
    if args.json:
        result = {"torch": torch.__version__, "threads": args.threads, "epochs": args.epochs,
                  "batch_size": args.batch_size, "lr": args.lr, "seeds": args.seeds,
                  "history": history, "summary": summary}
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
