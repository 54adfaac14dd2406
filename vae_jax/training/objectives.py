"""What a training step ascends, when it is not the reported bound, and the
weight prior that every algorithm's objective adds in the same way.
"""

from __future__ import annotations

import jax

from vae_jax.errors import ConfigError
from vae_jax.inference import bounds, wake_sleep
from vae_jax.math import estimators
from vae_jax.models.vae import VAE, TwoLayerVAE
from vae_jax.training.state import Params, TrainConfig

Array = jax.Array


def training_objective(model: VAE, config: TrainConfig) -> bounds.ElboFn | None:
  """The per-example objective ascended when it is not the reported bound:
  wake-sleep's surrogate, the autoencoder's reconstruction or the
  beta-weighted objective; None otherwise. Two stochastic layers train by
  AEVB only: wake-sleep and the autoencoder are written for one."""
  if isinstance(model, TwoLayerVAE) and config.algorithm != "aevb":
    raise ConfigError(
      "algorithm",
      f"algorithm={config.algorithm!r} is written for one stochastic layer; "
      "train a TwoLayerVAE with algorithm='aevb'.",
    )
  if config.algorithm == "wake_sleep":
    return wake_sleep.make_wake_sleep_objective(model, config.num_samples)
  if config.algorithm == "autoencoder":
    return bounds.make_autoencoder_objective(model)
  if config.kl_weight != 1:
    return bounds.make_elbo(
      model,
      config.estimator,
      config.num_samples,
      config.kl_weight,
      config.posterior_family,
      **config.estimator_settings,
    )
  return None


def with_weight_prior(
  objective: Array, params: Params, num_examples: int, config: TrainConfig
) -> Array:
  """`objective` plus the weight prior's share per example, if `config.weight_prior`.

  The paper's MAP term log N(params; 0, prior_stddev^2 I) belongs to the
  whole data set's objective, so an objective averaged over examples gets
  1 / N of it (eq. 8 divided by N; `estimators.gaussian_weight_log_prior`).

  Args:
    objective: scalar, a mean per-example objective in nats (to be ascended).
    params: the parameters the prior is placed on: all a model trains (MCEM
      passes its decoder's alone, the only ones it trains).
    num_examples: N, the examples the objective averages over in an epoch
      (M2: the labelled and the unlabelled ones together).
    config: whether to add the prior (`weight_prior`), and its `prior_stddev`.

  Returns:
    scalar, nats per example; `objective` itself without the prior.
  """
  if not config.weight_prior:
    return objective
  return (
    objective + estimators.gaussian_weight_log_prior(params, config.prior_stddev) / num_examples
  )
