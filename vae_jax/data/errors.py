"""The one exception type raised by `vae_jax.data`."""

from __future__ import annotations


class DataError(ValueError):
  """A data set cannot be loaded: unknown name, missing or corrupt raw files,
  or prepared data with the wrong shape or value range.

  The message names the data set, the file or directory involved, and how to
  fix it (which argument or environment variable to set).
  """
