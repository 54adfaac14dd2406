"""vae-jax: Auto-Encoding Variational Bayes (Kingma & Welling, 2014) in JAX/Flax.

The package is layered; a layer imports only the layers above it in this list:

  vae_jax.math        log-densities, KL, posterior families, the SGVB estimators
                      for one stochastic layer and two (per example, pure jnp: no
                      Flax, no optax)
  vae_jax.data        data sets as arrays, binarisation and quantisation
  vae_jax.models      the Flax networks (VAE, TwoLayerVAE, M2) and pure functions of
                      their params
  vae_jax.inference   bounds and algorithms on a model: make_elbo, the k-sample
                      log-likelihood, wake-sleep, HMC, App. D's estimator, M2's bounds,
                      estimator variance
  vae_jax.training    train state and optimiser, step and scanned epoch, devices,
                      evaluation, the one resumable loop, its hooks, checkpoints, metrics
  vae_jax.figures     matplotlib figures and the hook that draws a run's figures

The names below are the pure entry points most code needs.
"""

import importlib

from vae_jax.inference.bounds import make_elbo, make_log_likelihood_estimate
from vae_jax.models.functions import (
  check_data,
  decode,
  decode_mean,
  encode,
  init_params,
  kl_divergence,
  sample,
)
from vae_jax.models.vae import VAE, TwoLayerVAE, make_vae

__all__ = [
  "TwoLayerVAE",
  "VAE",
  "check_data",
  "decode",
  "decode_mean",
  "encode",
  "init_params",
  "kl_divergence",
  "make_elbo",
  "make_log_likelihood_estimate",
  "make_marginal_likelihood_estimate",
  "make_vae",
  "sample",
]
__version__ = "0.3.0"

# Loaded on first use: they import blackjax, or are modules that moved into the
# layers above and keep answering at their old names (`vae_jax.estimators`).
_LAZY = {
  "make_marginal_likelihood_estimate": (
    "vae_jax.inference.marginal_likelihood",
    "make_marginal_likelihood_estimate",
  ),
  # The old vae_jax.api held exactly the public functions above.
  "api": ("vae_jax", None),
  "distributions": ("vae_jax.math.distributions", None),
  "estimators": ("vae_jax.math.estimators", None),
  "posteriors": ("vae_jax.math.posteriors", None),
  "wake_sleep": ("vae_jax.inference.wake_sleep", None),
  "hmc": ("vae_jax.inference.hmc", None),
  "marginal_likelihood": ("vae_jax.inference.marginal_likelihood", None),
  "variance": ("vae_jax.inference.variance", None),
  "mcem": ("vae_jax.training.mcem", None),
  "semi_supervised_training": ("vae_jax.training.semi_supervised", None),
  "checkpoints": ("vae_jax.training.checkpoints", None),
  "metrics": ("vae_jax.training.metrics", None),
}


def __getattr__(name: str):
  if name not in _LAZY:
    raise AttributeError(f"module 'vae_jax' has no attribute {name!r}")
  module_name, attribute = _LAZY[name]
  module = importlib.import_module(module_name)
  return module if attribute is None else getattr(module, attribute)
