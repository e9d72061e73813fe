"""minivae: a Variational Autoencoder whose every gradient is derived by hand and checked."""

__version__ = "0.1.0"
