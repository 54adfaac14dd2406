"""Wake-sleep (Hinton et al., 1995): the AEVB paper's baseline in Figs. 2 and 3.

The same encoder q_phi(z|x) (the "recognition model") and decoder
p_theta(x|z) as AEVB, trained by two phases that each fit one network to
samples of the other:

  wake:  z ~ q_phi(z|x) for data x, held fixed;   theta ascends log p_theta(x, z)
  sleep: z* ~ p(z), x* ~ p_theta(x|z*), fixed;    phi ascends log q_phi(z*|x*)

Both phases are written as one surrogate per example, whose gradient with
respect to theta is the wake gradient and with respect to phi the sleep
gradient (the samples are behind `stop_gradient`, so neither phase's
gradient reaches the other network). Its value is not a bound: training
reports AEVB's estimator B alongside. The sleep phase fits q to the model's
posterior in the direction KL(p || q), averaged over the model's own data,
which is why wake-sleep optimises no single objective.

Written, like `vae_jax.math.estimators`, for ONE example in terms of pure
functions:

  encode_fn(params, x) -> (mean, logvar)            x: [data_dim]
  log_likelihood_fn(params, x, z) -> scalar         log p_theta(x | z)
  sample_fn(params, z, key) -> x                    x ~ p_theta(x | z)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import chex
import jax
import jax.numpy as jnp

from vae_jax.inference.bounds import ElboFn, check_num_samples, posterior_noise
from vae_jax.math import distributions
from vae_jax.math.estimators import EncodeFn, LogLikelihoodFn, log_likelihood_over_samples
from vae_jax.models.functions import check_data, model_functions
from vae_jax.models.vae import VAE

Array = jax.Array
Params = Any
SampleFn = Callable[[Params, Array, Array], Array]


def wake_sleep_surrogate(
  encode_fn: EncodeFn,
  log_likelihood_fn: LogLikelihoodFn,
  sample_fn: SampleFn,
  params: Params,
  x: Array,
  eps: Array,
  dream_key: Array,
) -> Array:
  """The wake-sleep surrogate of one example, averaged over L samples.

  Args:
    encode_fn, log_likelihood_fn, sample_fn: see the module docstring.
    params: the pytree the three functions take.
    x: [data_dim] one example.
    eps: [L, latent_dim] standard-normal noise for the wake phase's
      z_l = mean(x) + sigma(x) * eps_l.
    dream_key: PRNG key for the sleep phase's L dreams (z*_l, x*_l).

  Returns:
    Scalar (1/L) sum_l [log p(x | z_l) + log q(z*_l | x*_l)]; only its
    gradient is meaningful (the log p(z_l) term of log p(x, z_l) has no
    parameters and is left out).
  """
  num_samples, latent_dim = eps.shape
  mean, logvar = encode_fn(params, x)
  z = jax.lax.stop_gradient(distributions.reparameterize(mean, logvar, eps))
  wake = log_likelihood_over_samples(log_likelihood_fn, params, x, z)

  z_key, x_key = jax.random.split(dream_key)
  dream_z = jax.random.normal(z_key, (num_samples, latent_dim))
  dream_x = jax.vmap(sample_fn, in_axes=(None, 0, 0))(
    jax.lax.stop_gradient(params), dream_z, jax.random.split(x_key, num_samples)
  )
  dream_mean, dream_logvar = jax.vmap(encode_fn, in_axes=(None, 0))(params, dream_x)
  sleep = distributions.gaussian_log_prob(dream_mean, dream_logvar, dream_z)
  return jnp.mean(wake + sleep)


def batch_wake_sleep_surrogate(
  encode_fn: EncodeFn,
  log_likelihood_fn: LogLikelihoodFn,
  sample_fn: SampleFn,
  params: Params,
  x: Array,
  eps: Array,
  dream_key: Array,
) -> Array:
  """`wake_sleep_surrogate` vmapped over x [batch, data_dim] and eps [L,
  batch, latent_dim], with an independent dream key per example -> [batch]."""
  chex.assert_rank([x, eps], [2, 3])
  chex.assert_equal(eps.shape[1], x.shape[0])
  keys = jax.random.split(dream_key, x.shape[0])
  return jax.vmap(
    lambda x_i, eps_i, key_i: wake_sleep_surrogate(
      encode_fn, log_likelihood_fn, sample_fn, params, x_i, eps_i, key_i
    ),
    in_axes=(0, 1, 0),
  )(x, eps, keys)


def make_wake_sleep_objective(model: VAE, num_samples: int = 1) -> ElboFn:
  """Returns `objective(params, x, key) -> [batch]`, wake-sleep's surrogate.

  Ascending its mean is one wake-sleep update (`wake_sleep_surrogate`): the
  decoder fits L posterior samples of each example, the encoder fits L
  dreams per example. Its value is not a bound; evaluate runs with
  `make_elbo`. The wake phase uses the same noise as `make_elbo` with the
  same key, so a bound reported beside it scores the same z (and XLA
  computes the shared encoder and decoder passes once).
  """
  check_num_samples(num_samples)
  encode_fn, log_likelihood_fn = model_functions(model)

  def sample_fn(params: Params, z: Array, key: Array) -> Array:
    return model.apply(params, z, key, method=VAE.decode_sample)

  def objective(params: Params, x: Array, key: Array) -> Array:
    check_data(x, model)
    eps = posterior_noise(model, key, num_samples, x.shape[0])
    return batch_wake_sleep_surrogate(
      encode_fn,
      log_likelihood_fn,
      sample_fn,
      params,
      x,
      eps,
      jax.random.fold_in(key, 1),
    )

  return objective
