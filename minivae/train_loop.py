"""The training loop of ``python -m minivae.train`` (minivae/train.py): the data on the device, one
epoch of steps in a fresh random order, then the test losses; the same loop in one process and on each
rank of a data-parallel run (what differs is asked of minivae/train_ranks.py: the step, the test rows,
the sums over the ranks).
"""

import math
import os
import sys
import time

import numpy as np

from .checkpoint import CHECKPOINT_NAME
from .errors import NumericalError
from .interrupts import check_interrupt
from .objectives import kl_weight_at
from .train_ranks import summed, test_rows, training_step

EVAL_BATCH_SIZE = 1000
RETRY_HINT = "Start a new run (another --out) with a lower --lr, or with --dtype float64"


class Trainer:
    """The training loop of one run: the data on the device, one epoch at a time."""

    def __init__(self, model, optimizer, dataset, settings, out, args, log, comm=None):
        self.model, self.optimizer, self.dataset, self.settings = model, optimizer, dataset, settings
        self.out, self.log, self.comm = out, log, comm
        self.backend = model.backend
        for x in (dataset.train_x, dataset.test_x):  # the likelihood's range, once here rather than per batch
            model.likelihood.check_data(x)
        self.train_x = self.backend.to_device(dataset.train_x)  # moved once, sliced on the device
        self.test_x = self.backend.to_device(dataset.test_x)
        root = comm is None or comm.is_root
        self.show_progress = root and not (args.no_progress or args.quiet) and sys.stdout.isatty()
        # On the CPU reading a loss costs nothing, so every step is checked for NaN; on a device
        # the losses stay there and are read every --log-interval steps.
        self.check_every = 1 if self.backend.name == "numpy" else args.log_interval
        self.log_interval = args.log_interval
        fixed = np.random.default_rng(settings["seed"]).standard_normal((64, settings["latent_dim"]))
        self.fixed_z = self.backend.to_device(fixed)  # the same prior draws in every sample_<epoch>.png

    def run_epoch(self, epoch, history):
        """Train one epoch, evaluate on the test set, print one line; returns the epoch's metrics."""
        start = time.perf_counter()
        train_sums = self._train(epoch)
        self.backend.synchronize()
        seconds = time.perf_counter() - start
        n_train, n_test = self.train_x.shape[0], self.test_x.shape[0]
        test_sampled, test_mean = self._test_sums(epoch)
        record = {
            "epoch": epoch, "train_loss": (train_sums[0] + train_sums[1]) / n_train, "train_reconstruction": train_sums[0] / n_train,
            "train_kl": train_sums[1] / n_train, "test_loss": test_sampled[2] / n_test,
            "test_loss_mean": test_mean[2] / n_test, "test_reconstruction": test_sampled[0] / n_test,
            "test_kl": test_sampled[1] / n_test, "seconds": seconds,
            "samples_per_second": n_train / max(seconds, 1e-9), "train_objective": train_sums[2] / n_train,
            "kl_weight": self._kl_weight(epoch, 1.0 - 1.0 / -(-n_train // self.settings["batch_size"])),
        }
        record = {key: value if key == "epoch" else float(value) for key, value in record.items()}
        for key, term in (("test_loss", "test loss"), ("test_loss_mean", "test loss with z = mu")):
            if not math.isfinite(record[key]):
                raise NumericalError(
                    f"evaluation after epoch {epoch}: the {term} became "
                    f"{'NaN' if math.isnan(record[key]) else 'infinite'}; no checkpoint was written for this "
                    f"epoch, and {os.path.join(self.out, CHECKPOINT_NAME)} (if any) holds the last good one. "
                    f"{RETRY_HINT}")
        weighted = self.settings["objective"] == "iwae" or self._kl_weight(epoch, 0.0) != 1.0
        objective = f" (objective {record['train_objective']:.2f})" if weighted else ""
        self.log(f"epoch {epoch}/{self.settings['epochs']}  train loss {record['train_loss']:.2f}{objective}  "
                 f"test loss {record['test_loss']:.2f} (z = mu: {record['test_loss_mean']:.2f})  "
                 f"{seconds:.1f} s  {record['samples_per_second']:.0f} samples/s")
        return record

    def _train(self, epoch):
        """One pass over the training set in a fresh random order; returns the summed
        (reconstruction, KL, total) on the host. Stops with NumericalError at a NaN or inf."""
        backend, xp, model = self.backend, self.backend.xp, self.model
        n, batch_size = self.train_x.shape[0], self.settings["batch_size"]
        steps = -(-n // batch_size)
        order = backend.permutation(n)
        # per step: reconstruction, KL, total, and the sum of every gradient (non-finite iff one is)
        step_values = xp.zeros((steps, 4), dtype=backend.dtype)
        dynamic = self.settings["binarize"] == "dynamic"
        progress = _progress_bar(n, epoch, self.show_progress)
        checked = 0
        for step in range(steps):
            check_interrupt()  # a Ctrl-C that Python dropped in a callback stops the run here
            x = self.train_x[order[step * batch_size:(step + 1) * batch_size]]
            if dynamic:
                x = (backend.uniform(x.shape) < x).astype(backend.dtype)
            terms = training_step(model, x, self._kl_weight(epoch, step / steps), self.comm)
            step_values[step, :3] = xp.stack(terms)
            step_values[step, 3] = model.buffer.grad.sum()  # one pass over every gradient at once
            if (step + 1) % self.check_every == 0 or step + 1 == steps:
                self._stop_if_not_finite(step_values, checked, step + 1, epoch)
                checked = step + 1
            self.optimizer.step()
            if progress is not None and ((step + 1) % self.log_interval == 0 or step + 1 == steps):
                done = min((step + 1) * batch_size, n)
                running = float(step_values[max(0, step + 1 - self.log_interval):step + 1, 2].sum())
                progress.update(done - progress.n)
                progress.set_postfix(loss=f"{running / (min(self.log_interval, step + 1) * batch_size):.2f}")
        if progress is not None:
            progress.close()
        return backend.to_numpy(step_values[:, :3]).astype(np.float64).sum(axis=0)

    def _kl_weight(self, epoch, fraction):
        """Eq. (42): the KL weight at this point of training (1 unless --beta or --kl-warmup say otherwise;
        1 for the IWAE objective, which has no separate KL term and records no beta)."""
        settings = self.settings
        if settings["objective"] != "elbo":
            return 1.0
        return kl_weight_at(settings["beta"], settings["kl_warmup"], epoch, fraction)

    def _stop_if_not_finite(self, step_values, start, stop, epoch):
        values = self.backend.to_numpy(step_values[start:stop])
        bad_rows = np.flatnonzero(~np.isfinite(values).all(axis=1))
        if bad_rows.size == 0:
            return
        row = values[bad_rows[0]]
        term = ["reconstruction loss", "KL", "total loss", "gradient"][int(np.flatnonzero(~np.isfinite(row))[0])]
        raise NumericalError(
            f"training stopped at epoch {epoch}, step {start + bad_rows[0] + 1}: the {term} became "
            f"{'NaN' if np.isnan(row).any() else 'infinite'}; no checkpoint was written for this epoch, and "
            f"{os.path.join(self.out, CHECKPOINT_NAME)} (if any) holds the last good one. {RETRY_HINT}")

    def _test_sums(self, epoch):
        """Summed (reconstruction, KL, total) over the test set with z sampled (from a generator seeded
        by the run's seed and the epoch, so training's random stream is untouched) and with z = mu: the
        two from one encoder pass per chunk (eq. (4)). On N ranks each takes its rows of every chunk
        (the chunk's noise drawn whole on every rank, as one process draws it) and the sums are reduced."""
        backend, model = self.backend, self.model
        noise = backend.with_seed(self.settings["seed"] * 100_003 + epoch)
        sums = np.zeros((2, 3))  # (sampled, z = mu) x (reconstruction, KL, total)
        for start in range(0, self.test_x.shape[0], EVAL_BATCH_SIZE):
            check_interrupt()
            x = self.test_x[start:start + EVAL_BATCH_SIZE]
            eps = noise.standard_normal((model.n_samples, x.shape[0], model.latent_dim))
            rows = test_rows(self.comm, x.shape[0])
            x, eps = x[rows], eps[:, rows]
            if x.shape[0] == 0:  # more ranks than rows in this chunk
                continue
            posterior = model.encode(x)                                                 # eq. (4), once
            for row, use_mean in enumerate((False, True)):
                terms, _ = model.forward(x, eps, use_mean, for_backward=False, checked=True, posterior=posterior)
                sums[row, :2] += [float(terms.reconstruction.sum()), float(terms.kl.sum())]
        sums = summed(self.comm, sums)
        sums[:, 2] = sums[:, 0] + sums[:, 1]
        return sums[0], sums[1]


def _progress_bar(total, epoch, show):
    if not show:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=f"epoch {epoch}", unit="img", leave=False, file=sys.stdout)
