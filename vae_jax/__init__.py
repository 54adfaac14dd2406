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
import warnings

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

# Loaded on first use, since it imports blackjax.
_LAZY = {
  "make_marginal_likelihood_estimate": (
    "vae_jax.inference.marginal_likelihood",
    "make_marginal_likelihood_estimate",
  ),
}

# The flat layout of 0.1 (vae_jax.estimators, ...): these modules moved into
# the layers, and the old names answer with a DeprecationWarning that names the
# new place until `MOVED_MODULES_REMOVED_IN` (README, "Old module names").
MOVED_MODULES = {
  # The old vae_jax.api held exactly the public functions above.
  "api": "vae_jax",
  "distributions": "vae_jax.math.distributions",
  "estimators": "vae_jax.math.estimators",
  "posteriors": "vae_jax.math.posteriors",
  "wake_sleep": "vae_jax.inference.wake_sleep",
  "hmc": "vae_jax.inference.hmc",
  "marginal_likelihood": "vae_jax.inference.marginal_likelihood",
  "variance": "vae_jax.inference.variance",
  "mcem": "vae_jax.training.mcem",
  "semi_supervised_training": "vae_jax.training.semi_supervised",
  "checkpoints": "vae_jax.training.checkpoints",
  "metrics": "vae_jax.training.metrics",
}
MOVED_MODULES_REMOVED_IN = "0.4.0"


def __getattr__(name: str):
  if name in MOVED_MODULES:
    new_name = MOVED_MODULES[name]
    warnings.warn(
      f"vae_jax.{name} moved to {new_name}; import it from there (the old name goes in "
      f"vae_jax {MOVED_MODULES_REMOVED_IN}).",
      DeprecationWarning,
      stacklevel=2,
    )
    return importlib.import_module(new_name)
  if name not in _LAZY:
    raise AttributeError(f"module 'vae_jax' has no attribute {name!r}")
  module_name, attribute = _LAZY[name]
  return getattr(importlib.import_module(module_name), attribute)
