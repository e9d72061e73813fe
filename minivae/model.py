"""The Variational Autoencoder of Kingma & Welling, as in the classic PyTorch example.

    x -> encoder MLP -> [mu, logvar]            eq. (4)
      -> z = mu + eps * exp(0.5 * logvar)       eq. (5)
      -> decoder MLP -> logits (or the mean y)  eq. (6)
    loss = sum over the batch of NLL(x|z) + KL  eq. (3), (7), (8)/(9)

``loss_and_backward`` walks the same path back by hand (eq. (10)-(18)), leaving every parameter's
``grad`` set. Losses are **sums** over the batch (report them per sample by dividing by B).
"""

from collections import namedtuple

from . import settings
from .backend import numpy_backend
from . import objectives
from .conv import check_image_shape, conv_decoder, conv_decoder_values_per_row, conv_encoder
from .gaussian import as_samples, head_gradient, kl_divergence, reparameterize, reparameterize_backward
from .layers import ParameterBuffer, mlp
from .likelihoods import LEARNED, make_likelihood

LossTerms = namedtuple("LossTerms", ["reconstruction", "kl", "total"])
LossTerms.__doc__ = """The terms of eq. (3): reconstruction NLL, KL, and their sum, each summed over
the batch (0-d arrays of the backend; ``float()`` brings one to the host)."""


class VAE:
    """A VAE with MLP (or convolutional) encoder and decoder.

    Args:
        input_dim: D, the number of values per datapoint (784 for 28x28 images).
        hidden: the encoder's hidden widths, e.g. (400,) or (512, 256).
        latent_dim: J, the size of z.
        decoder_hidden: the decoder's hidden widths; defaults to ``hidden`` reversed.
        activation: "relu", "tanh" or "sigmoid" between the Linear layers.
        likelihood: "bernoulli" (decoder outputs logits, x in [0, 1]), "continuous-bernoulli" (logits
            of a normalised density on [0, 1], eq. (35)) or "gaussian" (decoder outputs the mean of
            N(x; y, variance)).
        variance: the fixed variance s2 of the Gaussian likelihood, or "learned": the decoder then
            outputs a mean and a log-variance per value (eq. (39)-(41)).
        n_samples: L, the number of z samples per datapoint in the reconstruction term (eq. (3)), or
            K, the number of importance samples of the IWAE objective.
        objective: "elbo" (eq. (3), with an optional KL weight, eq. (42)) or "iwae" (the
            importance-weighted bound of eq. (43) with K = n_samples).
        backend: a Backend (default: NumPy, float32, seed 0).
        architecture: "mlp" (the Linear layers above) or "conv" (minivae/conv.py: two stride-2 4x4
            convolutions to ``channels`` and a Linear head; the decoder mirrors it with transpose
            convolutions; ``hidden`` and ``decoder_hidden`` are not used).
        image_shape: (H, W) of the images, H*W = input_dim, both multiples of 4 (conv only).
        channels: (c1, c2), the channels of the two convolutions (conv only).
    """

    def __init__(self, input_dim=784, hidden=(400,), latent_dim=20, decoder_hidden=None, activation="relu",
                 likelihood="bernoulli", variance=1.0, n_samples=1, objective="elbo", backend=None,
                 architecture="mlp", image_shape=None, channels=(32, 64)):
        self.backend = backend if backend is not None else numpy_backend()
        problem = settings.model_problem(
            {"input_dim": input_dim, "hidden": hidden, "latent_dim": latent_dim, "decoder_hidden": decoder_hidden,
             "activation": activation, "likelihood": likelihood, "variance": variance, "n_samples": n_samples,
             "objective": objective, "architecture": architecture, "channels": channels})
        if problem is not None:
            raise ValueError(f"VAE: {problem}")
        hidden = tuple(int(h) for h in hidden)
        decoder_hidden = tuple(reversed(hidden)) if decoder_hidden is None else tuple(int(h) for h in decoder_hidden)
        self.config = {
            "input_dim": int(input_dim), "hidden": list(hidden), "latent_dim": int(latent_dim),
            "decoder_hidden": list(decoder_hidden), "activation": activation, "likelihood": likelihood,
            "variance": variance if variance == LEARNED else float(variance), "n_samples": int(n_samples),
        }
        if objective != "elbo":  # absent means elbo, as in the configs written before there was a choice
            self.config["objective"] = objective
        self.objective = objective
        self.latent_dim = int(latent_dim)
        self.n_samples = int(n_samples)
        self.likelihood = make_likelihood(likelihood, self.backend, variance)
        # The encoder's last Linear is the fused head: 2J outputs, [mu | logvar] (eq. (4)).
        if architecture == "conv":
            self._build_conv(image_shape, channels)
        else:
            self.encoder = mlp((input_dim,) + hidden + (2 * latent_dim,), activation, self.backend, "encoder")
            decoder_out = input_dim * self.likelihood.outputs_per_value  # [y | logvar] when the variance is learned
            self.decoder = mlp((latent_dim,) + decoder_hidden + (decoder_out,), activation, self.backend, "decoder")
            self.encoder.layers[0].needs_input_grad = False  # nobody needs dLoss/dx
            self.decoder_values_per_row = sum(decoder_hidden)
        self.buffer = ParameterBuffer(self.parameters(), self.backend)  # all data and grads in two flat arrays

    def _build_conv(self, image_shape, channels):
        """The conv encoder and decoder (minivae/conv.py, section 18 of docs/derivation.md) for images
        of ``image_shape`` (H, W), H*W = input_dim, with ``channels`` (c1, c2); recorded in the config
        (an MLP's config stays as it was, so its checkpoints load as before)."""
        if image_shape is None:
            raise ValueError("the conv architecture needs image_shape (H, W)")
        height, width = check_image_shape(image_shape)
        channels = tuple(int(c) for c in channels)
        if height * width != self.config["input_dim"] or len(channels) != 2 or min(channels) < 1:
            raise ValueError(f"image_shape {height}x{width} must hold input_dim={self.config['input_dim']} "
                             f"values and channels two sizes >= 1, got {channels}")
        self.config.update(architecture="conv", image_shape=[height, width], channels=list(channels),
                           hidden=[], decoder_hidden=[])
        args = ((height, width), channels, self.latent_dim, self.config["activation"], self.backend)
        self.encoder = conv_encoder(*args)
        self.decoder = conv_decoder(*args, out_channels=self.likelihood.outputs_per_value)
        self.decoder_values_per_row = conv_decoder_values_per_row(height, width, channels)

    def parameters(self):
        """Every trainable Parameter, encoder first, in a fixed order."""
        return self.encoder.parameters() + self.decoder.parameters()

    def encode(self, x):
        """Eq. (4): x (B, D) -> (mu, logvar), each (B, J)."""
        self._check_input(x)
        head = self.encoder.forward(x)
        return head[:, :self.latent_dim], head[:, self.latent_dim:]

    def decode(self, z):
        """Eq. (6) and the likelihood's mean: z (N, J) -> the mean of p(x|z), (N, D)."""
        return self.likelihood.mean(self.decoder.forward(z))

    def reconstruct(self, x, use_mean=True):
        """Decode the posterior mean (``use_mean``) or one sample of z: x (B, D) -> (B, D)."""
        mu, logvar = self.encode(x)
        if use_mean:
            return self.decode(mu)
        return self.decode(reparameterize(self.backend.xp, mu, logvar, self.backend.standard_normal(mu.shape)))

    def sample(self, n):
        """Means of p(x|z) for n draws z ~ N(0, I): (n, D)."""
        return self.decode(self.backend.standard_normal((n, self.latent_dim)))

    def draw_eps(self, batch_size):
        """Fresh noise eps ~ N(0, I) of shape (L, B, J)."""
        return self.backend.standard_normal((self.n_samples, batch_size, self.latent_dim))

    def elbo_terms(self, x, eps=None, use_mean=False):
        """The per-datapoint terms of the negative ELBO, forward only.

        x: (B, D); eps: (L, B, J) or (B, J), drawn when None; ``use_mean`` decodes z = mu instead
        (the deterministic test loss). Returns (reconstruction (B,), kl (B,)): the reconstruction
        NLL averaged over the L samples (eq. (3)) and the KL (eq. (7)).
        """
        xp, kernels = self.backend.xp, self.backend.kernels
        self._check_values(x)
        mu, logvar = self.encode(x)
        if use_mean:
            z, n_samples = mu, 1
        else:
            eps = self.draw_eps(x.shape[0]) if eps is None else eps
            z = reparameterize(xp, mu, logvar, eps, kernels)
            n_samples = z.shape[0] // x.shape[0]
        nll = self.likelihood.nll(self.decoder.forward(z), self._repeat(x, n_samples))
        reconstruction = nll.reshape(n_samples, -1).mean(axis=0)
        return reconstruction, kl_divergence(xp, mu, logvar, kernels)

    def loss_and_backward(self, x, eps=None, kl_weight=1.0):
        """One forward and hand-written backward pass over a batch: the loss of eq. (3) and its
        gradient by eq. (10)-(18), in the order of section 13 of docs/derivation.md; with
        ``objective="iwae"`` the loss of eq. (43) and its gradient by eq. (45), (46).

        x: (B, D); eps: (L, B, J) or (B, J), drawn when None (pass it to hold the noise fixed);
        kl_weight: beta of eq. (42), the weight of the KL in the ELBO objective (1: eq. (3)).
        Returns LossTerms summed over the batch: the reconstruction NLL (averaged over the samples),
        the closed-form KL (eq. (7)), and ``total``, the objective optimised (the negative ELBO only when
        the objective is the ELBO and kl_weight is 1). Overwrites every parameter's ``grad`` with
        d(total)/d(parameter).
        """
        xp, kernels = self.backend.xp, self.backend.kernels
        self._check_values(x)
        batch_size = x.shape[0]
        eps = self.draw_eps(batch_size) if eps is None else eps
        mu, logvar = self.encode(x)                                    # eq. (4)
        z = reparameterize(xp, mu, logvar, eps, kernels)               # eq. (5)
        n_samples = z.shape[0] // batch_size
        out = self.decoder.forward(z)                                  # eq. (6)
        nll, dout = self.likelihood.nll_and_grad(out, self._repeat(x, n_samples))  # eq. (8)-(11)
        kl = kl_divergence(xp, mu, logvar, kernels)                    # eq. (7)
        terms, log_weights = self._terms(nll, kl, z, eps, mu, logvar, kl_weight)
        if log_weights is not None:
            self._iwae_backward(dout, z, eps, logvar, log_weights)
            return terms
        if n_samples > 1:
            dout *= 1.0 / n_samples                                    # the 1/L of eq. (3)
        dz = self.decoder.backward(dout)                               # eq. (12)-(15)
        dhead = head_gradient(xp, dz, mu, logvar, eps, kernels, kl_weight)  # eq. (16)-(18), (42)
        self.encoder.backward(dhead)
        return terms

    def objective_terms(self, x, eps, kl_weight=1.0):
        """Forward only: the LossTerms ``loss_and_backward(x, eps, kl_weight)`` returns, without
        touching any gradient (what finite differences of the objective call)."""
        xp, kernels = self.backend.xp, self.backend.kernels
        mu, logvar = self.encode(x)
        z = reparameterize(xp, mu, logvar, eps, kernels)
        nll = self.likelihood.nll(self.decoder.forward(z), self._repeat(x, z.shape[0] // x.shape[0]))
        return self._terms(nll, kl_divergence(xp, mu, logvar, kernels), z, eps, mu, logvar, kl_weight)[0]

    def _terms(self, nll, kl, z, eps, mu, logvar, kl_weight):
        """The summed LossTerms of a batch from its per-sample NLL (L*B,) and KL (B,), and the IWAE
        log-weights of eq. (43) (K, B) (None for the ELBO)."""
        xp = self.backend.xp
        n_samples = nll.shape[0] // kl.shape[0]
        reconstruction, kl_sum = nll.sum() / n_samples, kl.sum()
        if self.objective == "elbo":
            total = reconstruction + kl_sum if kl_weight == 1.0 else reconstruction + kl_weight * kl_sum
            return LossTerms(reconstruction, kl_sum, total), None
        eps = as_samples(eps, mu)
        log_weights = objectives.iwae_log_weights(xp, nll.reshape(n_samples, -1), z.reshape(eps.shape), eps, logvar)
        return LossTerms(reconstruction, kl_sum, objectives.iwae_loss(xp, log_weights).sum()), log_weights

    def _iwae_backward(self, dout, z, eps, logvar, log_weights):
        """Eq. (45), (46): each sample's likelihood gradient ``dout`` (K*B, D) times its normalised weight,
        back through the decoder; plus w~ z through log p(z); into mu and logvar through z (eq. (16));
        plus -0.5 into logvar directly through log q(z|x) (eq. (44))."""
        xp = self.backend.xp
        eps = as_samples(eps, logvar)
        dnll, dz_prior = objectives.iwae_backward(xp, log_weights, z.reshape(eps.shape))
        dout *= dnll.reshape(-1, 1)
        dz = self.decoder.backward(dout) + dz_prior.reshape(z.shape)
        dmu, dlogvar = reparameterize_backward(xp, dz, logvar, eps)
        self.encoder.backward(xp.concatenate([dmu, dlogvar + objectives.IWAE_DLOGVAR], axis=1))

    def _check_input(self, x):
        """x must be a (B, D) array with B >= 1 in the backend's dtype (no silent promotion)."""
        shape, width = tuple(getattr(x, "shape", ())), self.config["input_dim"]
        if len(shape) != 2 or shape[0] < 1 or shape[1] != width:
            raise ValueError(f"x must be a batch of shape (B >= 1, {width}), got shape {shape}")
        if getattr(x, "dtype", None) != self.backend.dtype:
            raise TypeError(f"x has dtype {getattr(x, 'dtype', type(x).__name__)}, the model computes in "
                            f"{self.backend.dtype}; pass backend.to_device(x)")

    def _check_values(self, x):
        """The Bernoulli likelihood needs x in [0, 1] (pixels 0..255 would give a loss of ~1e12).
        Checked on the CPU only: on a GPU it would cost a device-to-host copy per step (the datasets
        of minivae.data are checked when loaded)."""
        self._check_input(x)
        if self.likelihood.name == "bernoulli" and self.backend.name == "numpy" and x.size:
            low, high = float(x.min()), float(x.max())
            if not (0 <= low and high <= 1):
                raise ValueError(f"x holds values in [{low:g}, {high:g}]; the Bernoulli likelihood needs them "
                                 f"in [0, 1] (divide pixels of 0..255 by 255)")

    def _repeat(self, x, n_samples):
        """x stacked n_samples times along the rows, to line up with z's sample-major rows."""
        return x if n_samples == 1 else self.backend.xp.tile(x, (n_samples, 1))
