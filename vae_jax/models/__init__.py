"""The Flax networks: the paper's VAE (`vae`, App. C), the IWAE paper's
TwoLayerVAE, M2 (`m2`), and the
pure functions of a VAE's parameters (`functions`). Imports `vae_jax.math`.
"""

from vae_jax.models.vae import (
  ACTIVATIONS,
  INITIALIZATIONS,
  LIKELIHOODS,
  VAE,
  ModelConfig,
  TwoLayerVAE,
  make_vae,
)

__all__ = [
  "ACTIVATIONS",
  "INITIALIZATIONS",
  "LIKELIHOODS",
  "VAE",
  "ModelConfig",
  "TwoLayerVAE",
  "make_vae",
]
