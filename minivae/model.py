"""The Variational Autoencoder of Kingma & Welling, as in the classic PyTorch example.

    x -> encoder -> [mu, logvar]                   eq. (4)
      -> z = mu + eps * exp(0.5 * logvar)          eq. (5)
      -> decoder -> logits (or the mean y)         eq. (6)
      -> NLL of each sample, KL of each datapoint  eq. (8), (9), (35) or (40); eq. (7)
      -> log w of each sample                      eq. (44)
      -> the objective's loss                      eq. (3), (42) or (43)

``VAE.forward`` is the one pass from x to these per-datapoint terms (the only code that takes z
through the decoder to a likelihood); ``VAE.backward`` walks the same path back by hand (eq. (10)-(18),
(45), (46)), in the order of section 13 of docs/derivation.md, leaving every parameter's ``grad`` set.
The training step, the test loss, finite differences, the importance-weighted evaluation
(minivae/estimators.py) and gradcheck all call them. Losses are **sums** over the batch (report them
per sample by dividing by B).

Input is checked once, at the public entry points (``forward``, ``loss_and_backward``, ``elbo_terms``,
``objective_terms``, ``encode``): shape and dtype, and on the CPU the likelihood's data range.
``checked=True`` says the caller has checked x already (the trainer's data were checked at load).
"""

from collections import namedtuple

from . import settings
from .backend import numpy_backend
from .conv import check_image_shape, conv_decoder, conv_decoder_values_per_row, conv_encoder
from .gaussian import as_samples, head_gradient, kl_divergence, reparameterize
from .layers import ParameterBuffer, mlp
from .likelihoods import LEARNED, likelihood_class, make_likelihood
from .objectives import importance_log_weights, make_objective

LossTerms = namedtuple("LossTerms", ["reconstruction", "kl", "total"])
LossTerms.__doc__ = """The terms of eq. (3): reconstruction NLL, KL, and the objective optimised, each
summed over the batch (0-d arrays of the backend; ``float()`` brings one to the host)."""

Terms = namedtuple("Terms", ["reconstruction", "kl", "loss", "log_weights"])
Terms.__doc__ = """The per-datapoint terms of ``VAE.forward``: ``reconstruction`` (B,), the NLL averaged
over the S samples of z (eq. (3)); ``kl`` (B,), the closed-form KL (eq. (7)); ``loss`` (B,), the
objective's (eq. (3), (42) or (43)); ``log_weights`` (S, B), log w of each sample (eq. (44)). With
``use_mean`` (z = mu) ``loss`` and ``log_weights`` are None: no sample, no bound."""

Cache = namedtuple("Cache", ["mu", "logvar", "eps", "z", "dout", "terms", "kl_weight"])
Cache.__doc__ = """What ``VAE.backward`` needs of ``VAE.forward`` beyond the layers' own caches: mu,
logvar (B, J); eps (S, B, J); z (S*B, J); dout, dNLL/d(decoder output) (S*B, D or 2D); the terms; the
KL weight. eps and dout are None after a forward that cannot be walked back (z = mu, or no gradient)."""


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
            outputs a mean and a log-variance per value (eq. (39)-(41)). The other likelihoods have
            none: anything but the default 1.0 is refused (ValueError).
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
        self.likelihood = self._likelihood(likelihood, variance)
        hidden = tuple(int(h) for h in hidden)
        decoder_hidden = tuple(reversed(hidden)) if decoder_hidden is None else tuple(int(h) for h in decoder_hidden)
        self.config = {
            "input_dim": int(input_dim), "hidden": list(hidden), "latent_dim": int(latent_dim),
            "decoder_hidden": list(decoder_hidden), "activation": activation, "likelihood": likelihood,
            "variance": variance if variance == LEARNED else float(variance), "n_samples": int(n_samples),
        }
        if objective != "elbo":  # absent means elbo, as in the configs written before there was a choice
            self.config["objective"] = objective
        self.objective = make_objective(objective, n_samples, self.backend.xp)
        self.latent_dim = int(latent_dim)
        self.n_samples = int(n_samples)
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

    def _likelihood(self, name, variance):
        """The likelihood of the registry (minivae/likelihoods.py) for these settings; ValueError in one
        line for a variance it does not take (variance="learned" with a Bernoulli, say)."""
        try:
            likelihood_class(name, variance)
        except ValueError as error:
            raise ValueError(f"VAE: {error}") from None
        return make_likelihood(name, self.backend, variance)

    def _build_conv(self, image_shape, channels):
        """The conv encoder and decoder (minivae/conv.py, section 18 of docs/derivation.md) for images
        of ``image_shape`` (H, W), H*W = input_dim, with ``channels`` (c1, c2); recorded in the config
        (an MLP's config stays as it was, so its checkpoints load as before)."""
        if image_shape is None:
            raise ValueError("the conv architecture needs image_shape (H, W)")
        height, width = check_image_shape(image_shape)
        channels = tuple(int(c) for c in channels)
        if height * width != self.config["input_dim"] or len(channels) != 2:
            raise ValueError(f"image_shape {height}x{width} must hold input_dim={self.config['input_dim']} "
                             f"values and channels two sizes, got {channels}")
        self.config.update(architecture="conv", image_shape=[height, width], channels=list(channels),
                           hidden=[], decoder_hidden=[])
        args = ((height, width), channels, self.latent_dim, self.config["activation"], self.backend)
        self.encoder = conv_encoder(*args)
        self.decoder = conv_decoder(*args, out_channels=self.likelihood.outputs_per_value)
        self.decoder_values_per_row = conv_decoder_values_per_row(height, width, channels)

    def parameters(self):
        """Every trainable Parameter, encoder first, in a fixed order."""
        return self.encoder.parameters() + self.decoder.parameters()

    # ------------------------------------------------------------------------------------------
    # The one forward and the one backward

    def forward(self, x, eps=None, use_mean=False, kl_weight=1.0, for_backward=True, checked=False,
                posterior=None):
        """The pass of eq. (4)-(8) and (44) from a batch to its per-datapoint terms.

        x: (B, D); eps: (S, B, J) or (B, J), drawn (S = n_samples) when None; ``use_mean`` decodes
        z = mu instead (the deterministic test loss). kl_weight: beta of eq. (42), which the objective
        must take (ValueError otherwise: the IWAE takes none). ``for_backward=False`` skips the
        likelihood's gradient (a forward only: test losses, evaluation). ``checked``: x is known to be
        a valid batch. ``posterior``: the (mu, logvar) of x already computed by ``encode`` (the chunks
        of the importance-weighted evaluation share one encoder pass; no backward then).
        Returns (Terms, Cache) for ``backward``.
        """
        xp, kernels = self.backend.xp, self.backend.kernels
        self.objective.check(kl_weight)
        if not checked:
            self._check_batch(x)
        if posterior is not None and for_backward:
            raise ValueError("a forward from a given posterior has no encoder pass to walk back: "
                             "pass for_backward=False")
        mu, logvar = self._encode(x) if posterior is None else posterior                # eq. (4)
        if use_mean:
            eps, z = None, mu                                                           # z = mu: no noise
        else:
            eps = as_samples(self.draw_eps(x.shape[0]) if eps is None else eps, mu)     # (S, B, J)
            z = reparameterize(xp, mu, logvar, eps, kernels)                            # eq. (5): (S*B, J)
        n_samples = z.shape[0] // x.shape[0]
        out = self.decoder.forward(z)                                                   # eq. (6)
        x_rows = self._repeat(x, n_samples)
        if for_backward and not use_mean:
            nll, dout = self.likelihood.nll_and_grad(out, x_rows)   # eq. (8)-(11), (35)-(41): NLL and dNLL/dout
        else:
            nll, dout = self.likelihood.nll(out, x_rows), None      # eq. (8), (9), (35) or (40)
        nll = nll.reshape(n_samples, -1)                                                # (S, B)
        reconstruction = nll.mean(axis=0)                                               # eq. (3): mean over S
        kl = kl_divergence(xp, mu, logvar, kernels)                                     # eq. (7)
        if use_mean:                                                                    # no sample, no bound
            return Terms(reconstruction, kl, None, None), Cache(mu, logvar, None, z, None, None, kl_weight)
        log_weights = importance_log_weights(xp, nll, z.reshape(eps.shape), eps, logvar)  # eq. (44): (S, B)
        loss = self.objective.loss(reconstruction, kl, log_weights, kl_weight)          # eq. (3), (42) or (43)
        terms = Terms(reconstruction, kl, loss, log_weights)
        return terms, Cache(mu, logvar, eps, z, dout, terms, kl_weight)

    def backward(self, cache):
        """The gradient of the summed loss of ``forward`` by hand, steps 1-9 of section 13 of
        docs/derivation.md: eq. (10)-(18) for the ELBO (with a KL weight, eq. (42)), eq. (45), (46) for
        the IWAE. Overwrites every parameter's ``grad`` with d(sum of terms.loss)/d(parameter).
        cache: the second result of ``forward`` (which sampled z, with ``for_backward=True``); it is
        not changed, so a second backward gives the same gradients."""
        xp, kernels = self.backend.xp, self.backend.kernels
        if cache.dout is None:
            raise ValueError("backward needs a forward that sampled z (not use_mean) with for_backward=True")
        eps = cache.eps
        grad = self.objective.backward(cache.terms.log_weights, cache.z.reshape(eps.shape), cache.kl_weight)  # (45)
        dout = cache.dout                                          # step 1: dNLL/dout, eq. (10), (11), (37), (41)
        if isinstance(grad.nll, float):
            dout = dout if grad.nll == 1.0 else dout * grad.nll    # step 1: times the 1/L of eq. (3)
        else:
            dout = dout * grad.nll.reshape(-1, 1)                  # step 1: times w~_k of eq. (46)
        dz = self.decoder.backward(dout)                           # steps 2-4: eq. (12)-(15)
        if grad.z is not None:
            dz = dz + grad.z.reshape(dz.shape)                     # eq. (46): + w~_k z_k through log p(z)
        dhead = head_gradient(xp, dz, cache.mu, cache.logvar, eps, kernels, grad.kl, grad.logvar)  # steps 5-6: eq. (16)-(18), (42), (46)
        self.encoder.backward(dhead)                               # steps 7-9: eq. (12), (13)

    # ------------------------------------------------------------------------------------------
    # What callers use: the training step, the test losses, finite differences, pictures

    def loss_and_backward(self, x, eps=None, kl_weight=1.0, checked=False):
        """One ``forward`` and ``backward`` over a batch: the loss of eq. (3) (with a KL weight, eq.
        (42); or with ``objective="iwae"`` the loss of eq. (43)) and its gradient.

        x: (B, D); eps: (L, B, J) or (B, J), drawn when None (pass it to hold the noise fixed);
        kl_weight: beta of eq. (42), a finite number >= 0, 1 for the IWAE (ValueError otherwise).
        Returns LossTerms summed over the batch: the reconstruction NLL (averaged over the samples),
        the closed-form KL (eq. (7)), and ``total``, the objective optimised (the negative ELBO only when
        the objective is the ELBO and kl_weight is 1). Overwrites every parameter's ``grad`` with
        d(total)/d(parameter).
        """
        terms, cache = self.forward(x, eps, kl_weight=kl_weight, checked=checked)
        self.backward(cache)
        return LossTerms(terms.reconstruction.sum(), terms.kl.sum(), terms.loss.sum())

    def objective_terms(self, x, eps, kl_weight=1.0):
        """Forward only: the LossTerms ``loss_and_backward(x, eps, kl_weight)`` returns, without
        touching any gradient (what finite differences of the objective call)."""
        terms, _ = self.forward(x, eps, kl_weight=kl_weight, for_backward=False)
        return LossTerms(terms.reconstruction.sum(), terms.kl.sum(), terms.loss.sum())

    def elbo_terms(self, x, eps=None, use_mean=False, checked=False):
        """The per-datapoint terms of the negative ELBO, forward only: (reconstruction (B,), kl (B,)),
        the reconstruction NLL averaged over the L samples (eq. (3)) and the KL (eq. (7)). x: (B, D);
        eps: (L, B, J) or (B, J), drawn when None; ``use_mean`` decodes z = mu instead."""
        terms, _ = self.forward(x, eps, use_mean, for_backward=False, checked=checked)
        return terms.reconstruction, terms.kl

    def encode(self, x):
        """Eq. (4): x (B, D) -> (mu, logvar), each (B, J)."""
        self._check_input(x)
        return self._encode(x)

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

    def _encode(self, x):
        """Eq. (4) on a checked x: the encoder's head [mu | logvar] split."""
        head = self.encoder.forward(x)
        return head[:, :self.latent_dim], head[:, self.latent_dim:]

    def _check_batch(self, x):
        """x must be a batch (``_check_input``) of data the likelihood accepts (its ``support``: x in
        [0, 1] for the Bernoulli and the continuous Bernoulli; pixels of 0..255 would give a loss of
        ~1e12). The range is checked on the CPU only: on a GPU it would cost a device-to-host copy per
        step (the datasets of minivae.data are checked when loaded)."""
        self._check_input(x)
        if self.backend.name == "numpy":
            self.likelihood.check_data(x)

    def _check_input(self, x):
        """x must be a (B, D) array with B >= 1 in the backend's dtype (no silent promotion)."""
        shape, width = tuple(getattr(x, "shape", ())), self.config["input_dim"]
        if len(shape) != 2 or shape[0] < 1 or shape[1] != width:
            raise ValueError(f"x must be a batch of shape (B >= 1, {width}), got shape {shape}")
        if getattr(x, "dtype", None) != self.backend.dtype:
            raise TypeError(f"x has dtype {getattr(x, 'dtype', type(x).__name__)}, the model computes in "
                            f"{self.backend.dtype}; pass backend.to_device(x)")

    def _repeat(self, x, n_samples):
        """x stacked n_samples times along the rows, to line up with z's sample-major rows."""
        return x if n_samples == 1 else self.backend.xp.tile(x, (n_samples, 1))
