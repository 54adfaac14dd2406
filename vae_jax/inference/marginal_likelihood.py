"""The AEVB paper's marginal-likelihood estimator (App. D), per example.

For a generative model p_theta(x, z) = p(z) p_theta(x|z) and one datapoint x:

  1. draw L samples z_l ~ p_theta(z|x) with HMC (`vae_jax.inference.hmc`);
  2. fit a density q(z) to them (here a full-covariance Gaussian);
  3. draw L new samples z_l ~ p_theta(z|x) and estimate

       p_theta(x) ≈ ( (1/L) sum_l q(z_l) / (p(z_l) p_theta(x|z_l)) )^-1.

The estimator follows from E_{p(z|x)}[q(z) / p(x, z)] = 1 / p(x) for any
normalised q; it is reliable only where q covers the posterior well with no
heavier tails, which the paper finds holds for latent spaces of fewer than 5
dimensions. Unlike the importance-sampled estimate with q(z|x) as proposal
(`vae_jax.inference.bounds.make_log_likelihood_estimate`), it needs no encoder, so it
scores models trained without one (Monte Carlo EM, `vae_jax.training.mcem`).

Written for ONE example in terms of
`log_likelihood_fn(params, x, z) -> log p_theta(x|z)`; see
`make_marginal_likelihood_estimate` for a batch of a Flax model.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np

from vae_jax.errors import ConfigError
from vae_jax.inference import hmc
from vae_jax.inference.bounds import check_num_samples
from vae_jax.math.estimators import LogLikelihoodFn
from vae_jax.models.functions import check_data, encode, model_functions
from vae_jax.models.vae import VAE

Array = jax.Array
Params = Any

# Added to the fitted covariance's diagonal, relative to its mean variance, so
# that L samples that nearly lie on a plane still give a proper density.
COVARIANCE_JITTER = 1e-6


def fit_gaussian(samples: Array) -> tuple[Array, Array]:
  """Maximum-likelihood Gaussian of samples [L, dim]: (mean [dim], chol [dim, dim]),
  chol the lower Cholesky factor of the covariance."""
  chex.assert_rank(samples, 2)
  mean = jnp.mean(samples, axis=0)
  centred = samples - mean
  covariance = centred.T @ centred / samples.shape[0]
  jitter = COVARIANCE_JITTER * jnp.mean(jnp.diag(covariance)) + jnp.finfo(samples.dtype).tiny
  covariance = covariance + jitter * jnp.eye(samples.shape[1], dtype=samples.dtype)
  return mean, jnp.linalg.cholesky(covariance)


def gaussian_log_prob(z: Array, mean: Array, chol: Array) -> Array:
  """log N(z; mean, chol chol^T). z: [..., dim] -> [...]."""
  whitened = jax.scipy.linalg.solve_triangular(chol, (z - mean).T, lower=True).T
  dim = mean.shape[-1]
  return (
    -0.5 * jnp.sum(jnp.square(whitened), axis=-1)
    - jnp.sum(jnp.log(jnp.diag(chol)))
    - 0.5 * dim * np.log(2 * np.pi)
  )


def harmonic_mean_log_marginal(log_q: Array, log_joint: Array) -> Array:
  """Step 3's estimate of log p(x) from L posterior samples' log q(z_l) [L]
  and log p(x, z_l) [L]: -log((1/L) sum_l exp(log_q - log_joint)), computed
  with logsumexp."""
  chex.assert_equal_shape((log_q, log_joint))
  num_samples = log_q.shape[0]
  return -(jax.nn.logsumexp(log_q - log_joint) - np.log(num_samples))


def log_marginal_likelihood(
  log_likelihood_fn: LogLikelihoodFn,
  params: Params,
  x: Array,
  z_init: Array,
  key: Array,
  *,
  num_samples: int = 50,
  num_leapfrog: int = 4,
  num_warmup: int = 100,
) -> Array:
  """The App. D estimate of log p_theta(x) for x [data_dim], a scalar in nats.

  HMC starts at z_init [latent_dim], adapts its step size over `num_warmup`
  transitions of `num_leapfrog` leapfrog steps (App. E: 4 for the estimator),
  draws `num_samples` samples to fit q, and continues the same chain for
  `num_samples` new ones that enter the estimate (step 3's fresh draws).
  """
  chain = hmc.sample_posterior(
    log_likelihood_fn,
    params,
    x,
    z_init,
    key,
    num_samples=2 * num_samples,
    num_leapfrog=num_leapfrog,
    num_warmup=num_warmup,
  )
  fit_samples, estimate_samples = jnp.split(chain.samples, 2)
  mean, chol = fit_gaussian(fit_samples)
  log_joint = jax.vmap(lambda z: hmc.log_joint(log_likelihood_fn, params, x, z))(estimate_samples)
  return harmonic_mean_log_marginal(gaussian_log_prob(estimate_samples, mean, chol), log_joint)


def make_marginal_likelihood_estimate(
  model: VAE, num_samples: int = 50, num_leapfrog: int = 4, num_warmup: int = 100
) -> Callable[..., Array]:
  """Returns `estimate(params, x, key, z_init=None) -> [batch]`, log p(x) in nats.

  The AEVB paper's estimator (App. D, `log_marginal_likelihood`): per
  example, HMC on the exact posterior p_theta(z|x), a Gaussian fitted to
  `num_samples` draws, and `num_samples` further draws in a harmonic-mean
  estimate. It uses the decoder alone, so it also scores models trained
  without an encoder; it is reliable for latent_dim < 5. The chains start at
  z_init [batch, latent_dim], by default the encoder's mean.
  """
  check_num_samples(num_samples)
  if num_leapfrog < 1:
    raise ConfigError("num_leapfrog", f"num_leapfrog must be >= 1, got {num_leapfrog}.")
  if num_warmup < 0:
    raise ConfigError("num_warmup", f"num_warmup must be >= 0, got {num_warmup}.")
  _, log_likelihood_fn = model_functions(model)
  per_example = functools.partial(
    log_marginal_likelihood,
    log_likelihood_fn,
    num_samples=num_samples,
    num_leapfrog=num_leapfrog,
    num_warmup=num_warmup,
  )

  def estimate(params: Params, x: Array, key: Array, z_init: Array | None = None) -> Array:
    check_data(x, model)
    if z_init is None:
      z_init, _ = encode(model, params, x)
    keys = jax.random.split(key, x.shape[0])
    return jax.vmap(per_example, in_axes=(None, 0, 0, 0))(params, x, z_init, keys)

  return estimate
