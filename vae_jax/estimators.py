"""The SGVB estimators of the per-example lower bound (AEVB paper, Sec. 2.3).

Each estimator is written once, for ONE example and the noise of its L
samples, in terms of two pure functions supplied by the caller:

  encode_fn(params, x) -> (mean, logvar)      x: [data_dim] -> 2 x [latent_dim]
  log_likelihood_fn(params, x, z) -> scalar    log p_theta(x | z) in nats

`batch_bound` vmaps a per-example estimator over the batch; inside, the
decoder is vmapped over the L samples. Nothing here knows about Flax or
training: `vae_jax.api.make_elbo` binds these to a Flax model.

Per example, with z_l = mu(x) + sigma(x) * eps_l and eps_l ~ N(0, I):
  A (eq. 6):  (1/L) sum_l [log p(x, z_l) - log q(z_l | x)]
  B (eq. 7):  -KL(q(z|x) || p(z)) + (1/L) sum_l log p(x | z_l)
  IWAE:       log (1/L) sum_l p(x, z_l) / q(z_l | x)   (Burda et al., 2016)
All three are in nats; A and B are unbiased for the ELBO, IWAE is a tighter
bound that is biased for it.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Protocol

import chex
import jax
import jax.numpy as jnp

from vae_jax import distributions

Array = jax.Array
Params = Any
EncodeFn = Callable[[Params, Array], tuple[Array, Array]]
LogLikelihoodFn = Callable[[Params, Array, Array], Array]


class PerExampleEstimator(Protocol):

  def __call__(
      self,
      encode_fn: EncodeFn,
      log_likelihood_fn: LogLikelihoodFn,
      params: Params,
      x: Array,
      eps: Array,
  ) -> Array:
    ...


def _posterior_samples(
    encode_fn: EncodeFn,
    log_likelihood_fn: LogLikelihoodFn,
    params: Params,
    x: Array,
    eps: Array,
) -> tuple[Array, Array, Array, Array]:
  """Encodes x, reparameterises, decodes each sample.

  Returns (mean [latent], logvar [latent], z [L, latent], log p(x|z_l) [L]).
  """
  mean, logvar = encode_fn(params, x)
  z = distributions.reparameterize(mean, logvar, eps)
  log_px_given_z = jax.vmap(log_likelihood_fn, in_axes=(None, None, 0))(
      params, x, z
  )
  return mean, logvar, z, log_px_given_z


def log_importance_weights(
    encode_fn: EncodeFn,
    log_likelihood_fn: LogLikelihoodFn,
    params: Params,
    x: Array,
    eps: Array,
) -> Array:
  """log w_l = log p(x, z_l) - log q(z_l | x) for one example.

  Args:
    encode_fn, log_likelihood_fn: see the module docstring.
    params: the pytree both functions take.
    x: [data_dim] one example.
    eps: [L, latent_dim] standard-normal noise.

  Returns:
    [L] log-weights in nats.
  """
  mean, logvar, z, log_px_given_z = _posterior_samples(
      encode_fn, log_likelihood_fn, params, x, eps
  )
  log_pz = distributions.standard_normal_log_prob(z)
  log_qz = distributions.gaussian_log_prob(mean, logvar, z)
  return log_px_given_z + log_pz - log_qz


def estimator_a(
    encode_fn: EncodeFn,
    log_likelihood_fn: LogLikelihoodFn,
    params: Params,
    x: Array,
    eps: Array,
) -> Array:
  """SGVB estimator A (eq. 6) for one example. x: [data_dim], eps: [L, latent]."""
  return jnp.mean(
      log_importance_weights(encode_fn, log_likelihood_fn, params, x, eps)
  )


def estimator_b(
    encode_fn: EncodeFn,
    log_likelihood_fn: LogLikelihoodFn,
    params: Params,
    x: Array,
    eps: Array,
) -> Array:
  """SGVB estimator B (eq. 7) for one example: analytic KL + MC likelihood."""
  mean, logvar, _, log_px_given_z = _posterior_samples(
      encode_fn, log_likelihood_fn, params, x, eps
  )
  return -distributions.kl_standard_normal(mean, logvar) + jnp.mean(
      log_px_given_z
  )


def iwae_bound(
    encode_fn: EncodeFn,
    log_likelihood_fn: LogLikelihoodFn,
    params: Params,
    x: Array,
    eps: Array,
) -> Array:
  """The importance-weighted bound with k = L samples, for one example.

  log (1/k) sum_l w_l, computed with logsumexp; for k = 1 it equals A.
  """
  log_w = log_importance_weights(encode_fn, log_likelihood_fn, params, x, eps)
  return jax.nn.logsumexp(log_w) - math.log(log_w.shape[0])


ESTIMATORS: dict[str, PerExampleEstimator] = {
    "A": estimator_a,
    "B": estimator_b,
    "iwae": iwae_bound,
}


def batch_bound(
    estimator: PerExampleEstimator,
    encode_fn: EncodeFn,
    log_likelihood_fn: LogLikelihoodFn,
    params: Params,
    x: Array,
    eps: Array,
) -> Array:
  """A per-example estimator vmapped over the batch.

  Args:
    estimator: one of `ESTIMATORS`' values.
    encode_fn, log_likelihood_fn, params: see the module docstring.
    x: [batch, data_dim].
    eps: [L, batch, latent_dim] standard-normal noise.

  Returns:
    [batch] per-example bound estimates in nats.
  """
  chex.assert_rank([x, eps], [2, 3])
  chex.assert_equal(eps.shape[1], x.shape[0])
  per_example = lambda x_i, eps_i: estimator(
      encode_fn, log_likelihood_fn, params, x_i, eps_i
  )
  return jax.vmap(per_example, in_axes=(0, 1))(x, eps)


def gaussian_weight_log_prior(params: Params, stddev: float = 1.0) -> Array:
  """log N(params; 0, stddev^2 I) summed over every leaf of a pytree.

  The paper's MAP term log p(theta) (its experiments use N(0, I), which acts
  as weight decay). It is a term of the whole data set's objective, so a
  minibatch objective per example adds it as `log_prior / num_train`
  (eq. 8 divided by N); see `map_objective`.
  """
  leaves = jax.tree_util.tree_leaves(params)
  sum_squares = sum(jnp.sum(jnp.square(leaf)) for leaf in leaves)
  count = sum(leaf.size for leaf in leaves)
  return -0.5 * sum_squares / stddev**2 - count * (
      0.5 * math.log(2.0 * math.pi) + math.log(stddev)
  )


def map_objective(
    bounds: Array, params: Params, num_train: int, prior_stddev: float = 1.0
) -> Array:
  """Mean per-example bound plus the weight prior's share (eq. 8 / N).

  Args:
    bounds: [batch] per-example bound estimates (nats).
    params: the parameters the prior is placed on.
    num_train: N, the size of the training set.
    prior_stddev: standard deviation of the Gaussian weight prior.

  Returns:
    scalar, nats per example; maximise it.
  """
  return jnp.mean(bounds) + gaussian_weight_log_prior(
      params, prior_stddev
  ) / num_train
