"""Active units of a VAE's stochastic layers, as the IWAE paper counts them.

Burda, Grosse & Salakhutdinov (2016, Sec. 5.2): a latent unit u is active
when its activity

  A_u = Cov_x( E_{u ~ q(u | x)}[u] )

exceeds 0.01: the posterior mean of an inactive unit does not move with the
data, so the unit carries no information about x. For z = h1 the posterior
mean is q(h1 | x)'s mean. For the top layer of a `TwoLayerVAE`,
E_q[h2 | x] = E_{q(h1 | x)}[mu_2(h1)] is an integral over h1, estimated from S
draws of h1 per example; its Monte-Carlo noise would add
E_x[Var(mu_2(h1) | x)] / S to the variance over x, so that term, estimated
from the same draws, is subtracted: the activity is then unbiased for any S.
(The IWAE code takes mu_2 at one draw of h1, without the correction.)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax.math import distributions
from vae_jax.models.vae import VAE, TwoLayerVAE

Array = jax.Array
Params = Any

# The IWAE paper's threshold on A_u.
ACTIVITY_THRESHOLD = 0.01


def make_unit_activities(model: VAE, num_samples: int = 10, batch_size: int = 1000):
  """Returns `activities(params, x, key) -> tuple of [J_layer]` float64 arrays:
  A_u of every unit of every stochastic layer (h1 first), over the examples
  x [N, data_dim] (the last N % batch_size of them left out when N exceeds
  batch_size).

  num_samples: S, the draws of h1 per example that estimate the top layer's
  posterior mean (unused for one layer). The posterior means are computed
  in one compiled program, `batch_size` examples at a time; their variances
  over the examples in float64 on the host.
  """
  if num_samples < 2:
    raise ValueError(f"num_samples must be >= 2 to correct for its noise, got {num_samples}.")

  def posterior_means(params: Params, x: Array, key: Array) -> list[tuple[Array, Array]]:
    """Each layer's (posterior mean, noise variance of its estimate), [batch, J]."""
    mean1, logvar1 = model.apply(params, x, method=VAE.encode)
    means = [(mean1, jnp.zeros_like(mean1))]
    if isinstance(model, TwoLayerVAE):
      eps = jax.random.normal(key, (num_samples, *mean1.shape))
      h1 = distributions.reparameterize(mean1, logvar1, eps)
      mean2, _ = model.apply(params, h1, method=TwoLayerVAE.top_encode)  # [S, batch, J2]
      means.append((jnp.mean(mean2, 0), jnp.var(mean2, 0, ddof=1) / num_samples))
    return means

  @jax.jit
  def all_posterior_means(params: Params, x: Array, key: Array):
    size = min(batch_size, x.shape[0])
    num_batches = x.shape[0] // size
    batches = x[: num_batches * size].reshape(num_batches, size, -1)
    keys = jax.random.split(key, num_batches)
    per_batch = jax.lax.map(lambda inputs: posterior_means(params, *inputs), (batches, keys))
    return jax.tree.map(lambda a: a.reshape(-1, a.shape[-1]), per_batch)

  def activities(params: Params, x: Array, key: Array) -> tuple[np.ndarray, ...]:
    return tuple(
      np.var(np.asarray(mean, np.float64), axis=0, ddof=1)
      - np.mean(np.asarray(noise, np.float64), axis=0)
      for mean, noise in all_posterior_means(params, x, key)
    )

  return activities


def count_active(activities: tuple[Array, ...], threshold: float = ACTIVITY_THRESHOLD):
  """The number of units with A_u > threshold, per layer: a tuple of ints."""
  return tuple(int(np.sum(np.asarray(a) > threshold)) for a in activities)
