"""The version of minivae, in a module of its own: the modules that record it (checkpoints, exports,
evaluations, a run's config.json) import it from here, not from the package, so no import goes back up.
"""

__version__ = "0.1.0"
