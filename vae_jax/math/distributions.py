"""Log-densities, KL divergences and reparameterised sampling, in plain jnp.

Everything here is a pure function of arrays: no Flax, no optax, no state.
Log-densities are in nats and are summed over the event axis (the last axis
of `x`, or the last-but-one of Categorical logits), so a `[batch, data_dim]`
input gives a `[batch]` output. Leading axes broadcast as in numpy.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

Array = jax.Array

_LOG_2PI = math.log(2.0 * math.pi)


@jax.custom_jvp
def bernoulli_log_prob(logits: Array, x: Array) -> Array:
  """log p(x) under independent Bernoullis with p = sigmoid(logits).

  Written as x * logits - softplus(logits), which stays finite and exact for
  logits of +-1000 in float32 (the naive x * log(sigmoid(l)) gives -inf * 0).
  Targets in [0, 1] that are not 0/1 (grey levels) give the cross-entropy.
  softplus(l) is max(l, 0) + log1p(exp(-|l|)), bit for bit
  `jax.nn.softplus` on every input, NaN and infinities included.

  Args:
    logits: [..., data_dim] real.
    x: [..., data_dim] in [0, 1].

  Returns:
    [...] log-probabilities in nats.
  """
  return jnp.sum(x * logits - _softplus(logits), axis=-1)


def _softplus(logits: Array) -> Array:
  # jax.nn.softplus is logaddexp(l, 0), which adds a NaN test and a select
  # per element to these operations: on a CPU the k = 5000 estimate's pass
  # over the decoder's logits costs about 13% more with it (BUILD.md).
  return jnp.maximum(logits, 0.0) + jnp.log1p(jnp.exp(-jnp.abs(logits)))


@bernoulli_log_prob.defjvp
def _bernoulli_log_prob_jvp(primals, tangents):
  # d/dlogits = x - sigmoid(logits), stated directly: differentiating
  # softplus op by op costs XLA more elementwise passes over the [batch,
  # data_dim] logits, about 10% of a CPU epoch of the paper's MNIST model
  # (BUILD.md).
  logits, x = primals
  logits_dot, x_dot = tangents
  tangent = (x - jax.nn.sigmoid(logits)) * logits_dot
  if jnp.issubdtype(x.dtype, jnp.inexact):
    tangent = tangent + logits * x_dot
  return bernoulli_log_prob(logits, x), jnp.sum(tangent, axis=-1)


def gaussian_log_prob(mean: Array, logvar: Array, x: Array) -> Array:
  """log N(x; mean, diag(exp(logvar))), summed over the last axis.

  Args:
    mean: [..., dim].
    logvar: [..., dim] natural log of the variance.
    x: [..., dim].

  Returns:
    [...] log-densities in nats.
  """
  squared_error = jnp.square(x - mean) * jnp.exp(-logvar)
  return -0.5 * jnp.sum(_LOG_2PI + logvar + squared_error, axis=-1)


def standard_normal_log_prob(z: Array) -> Array:
  """log N(z; 0, I), summed over the last axis. z: [..., dim] -> [...]."""
  return -0.5 * jnp.sum(_LOG_2PI + jnp.square(z), axis=-1)


def categorical_log_prob(logits: Array, x: Array) -> Array:
  """log p(x) under independent Categoricals, summed over the data axis.

  Args:
    logits: [..., data_dim, num_categories] unnormalised log-probabilities.
    x: [..., data_dim] integers in [0, num_categories).

  Returns:
    [...] log-probabilities in nats.
  """
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  picked = jnp.take_along_axis(log_probs, x[..., None].astype(jnp.int32), axis=-1)
  return jnp.sum(picked[..., 0], axis=-1)


def kl_diag_gaussians(mean_q: Array, logvar_q: Array, mean_p: Array, logvar_p: Array) -> Array:
  """KL( N(mean_q, diag exp(logvar_q)) || N(mean_p, diag exp(logvar_p)) ).

  All arguments: [..., dim]. Returns [...] in nats.
  """
  variance_ratio = jnp.exp(logvar_q - logvar_p)
  scaled_mean_gap = jnp.square(mean_q - mean_p) * jnp.exp(-logvar_p)
  return 0.5 * jnp.sum(variance_ratio + scaled_mean_gap - 1.0 - (logvar_q - logvar_p), axis=-1)


def kl_standard_normal(mean: Array, logvar: Array) -> Array:
  """KL( N(mean, diag exp(logvar)) || N(0, I) ), the paper's eq. 10 negated.

  -KL = 1/2 * sum_j (1 + log sigma_j^2 - mu_j^2 - sigma_j^2).

  Args:
    mean: [..., latent_dim].
    logvar: [..., latent_dim].

  Returns:
    [...] in nats.
  """
  return 0.5 * jnp.sum(jnp.exp(logvar) + jnp.square(mean) - 1.0 - logvar, axis=-1)


def reparameterize(mean: Array, logvar: Array, eps: Array) -> Array:
  """z = mean + sigma * eps, the paper's reparameterisation trick.

  Args:
    mean: [..., latent_dim].
    logvar: [..., latent_dim].
    eps: [L, ..., latent_dim] or any shape broadcasting against mean.

  Returns:
    z with the broadcast shape of eps and mean.
  """
  return mean + jnp.exp(0.5 * logvar) * eps


def sample_diag_gaussian(key: Array, mean: Array, logvar: Array, num_samples: int) -> Array:
  """Draws reparameterised samples z ~ N(mean, diag exp(logvar)).

  Args:
    key: a PRNG key; the caller splits it.
    mean: [batch, latent_dim].
    logvar: [batch, latent_dim].
    num_samples: L >= 1.

  Returns:
    z: [L, batch, latent_dim], differentiable in mean and logvar.
  """
  eps = jax.random.normal(key, (num_samples, *mean.shape), dtype=mean.dtype)
  return reparameterize(mean, logvar, eps)
