"""Hamiltonian Monte Carlo on the exact posterior p_theta(z|x), per example.

The AEVB paper samples the true posterior
p_theta(z|x) ∝ p(z) p_theta(x|z), p(z) = N(0, I), with HMC in two places:
the E-step of its Monte Carlo EM baseline (App. E, `vae_jax.training.mcem`) and its
marginal-likelihood estimator (App. D, `vae_jax.inference.marginal_likelihood`). The
moves are blackjax's HMC kernel (identity mass matrix); this module adds the
step-size rule the paper describes, "automatically tuned such that the
acceptance rate was 90%": after every transition,

  log step_size += adaptation_rate * (acceptance_rate - target_acceptance),

a Robbins-Monro step that settles where the mean acceptance equals the
target. Written, like `vae_jax.math.estimators`, for ONE example in terms of

  log_likelihood_fn(params, x, z) -> scalar    log p_theta(x | z), z: [latent_dim]

and vmapped over a batch by the callers.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import blackjax
import chex
import jax
import jax.numpy as jnp

from vae_jax.math import distributions
from vae_jax.math.estimators import LogLikelihoodFn

Array = jax.Array
Params = Any

DEFAULT_TARGET_ACCEPTANCE = 0.9  # App. E
DEFAULT_ADAPTATION_RATE = 0.1


def log_joint(log_likelihood_fn: LogLikelihoodFn, params: Params, x: Array, z: Array) -> Array:
  """log p(z) + log p_theta(x|z) = log p_theta(z|x) + log p_theta(x), a scalar."""
  return distributions.standard_normal_log_prob(z) + log_likelihood_fn(params, x, z)


def adapt_log_step_size(
  log_step_size: Array,
  acceptance_rate: Array,
  target_acceptance: float = DEFAULT_TARGET_ACCEPTANCE,
  adaptation_rate: float = DEFAULT_ADAPTATION_RATE,
) -> Array:
  """One Robbins-Monro step towards `target_acceptance` (module docstring)."""
  return log_step_size + adaptation_rate * (acceptance_rate - target_acceptance)


class Transition(NamedTuple):
  """One HMC transition's outcome for one example."""

  position: Array  # [latent_dim] the chain's new state z
  acceptance_rate: Array  # scalar in [0, 1], the Metropolis acceptance probability


def _kernel(log_likelihood_fn, params, x, num_leapfrog):
  """`move(state, key, step_size) -> (HMCState, HMCInfo)`: blackjax's HMC
  kernel on log p(x, z) with an identity mass matrix."""
  logdensity = functools.partial(log_joint, log_likelihood_fn, params, x)
  kernel = blackjax.mcmc.hmc.build_kernel()

  def move(state, key, step_size):
    return kernel(key, state, logdensity, step_size, jnp.ones_like(state.position), num_leapfrog)

  return logdensity, move


def transition(
  log_likelihood_fn: LogLikelihoodFn,
  params: Params,
  x: Array,
  z: Array,
  key: Array,
  step_size: Array,
  num_leapfrog: int,
) -> Transition:
  """One HMC transition of `num_leapfrog` leapfrog steps from z [latent_dim]."""
  chex.assert_rank(z, 1)
  logdensity, move = _kernel(log_likelihood_fn, params, x, num_leapfrog)
  new_state, info = move(blackjax.mcmc.hmc.init(z, logdensity), key, step_size)
  return Transition(new_state.position, info.acceptance_rate)


class Chain(NamedTuple):
  """What `sample_posterior` returns for one example."""

  samples: Array  # [num_samples, latent_dim] draws after the warm-up
  step_size: Array  # scalar: the step size the samples were drawn with
  acceptance_rate: Array  # scalar: the mean acceptance over the samples


def sample_posterior(
  log_likelihood_fn: LogLikelihoodFn,
  params: Params,
  x: Array,
  z_init: Array,
  key: Array,
  *,
  num_samples: int,
  num_leapfrog: int,
  num_warmup: int,
  initial_step_size: float = 0.1,
  target_acceptance: float = DEFAULT_TARGET_ACCEPTANCE,
) -> Chain:
  """`num_samples` HMC draws from p_theta(z|x) for one example x [data_dim].

  The chain starts at z_init [latent_dim] and runs `num_warmup` transitions
  that adapt the step size (`adapt_log_step_size`) and are discarded; the
  step size is then frozen, so the draws come from a fixed, reversible
  kernel. Successive draws are correlated (no thinning).
  """
  chex.assert_rank(z_init, 1)
  warmup_key, sampling_key = jax.random.split(key)
  logdensity, move = _kernel(log_likelihood_fn, params, x, num_leapfrog)

  # The chain carries blackjax's state, whose log-density and gradient at the
  # current position each transition reuses.
  def warmup(carry, key):
    state, log_step_size = carry
    state, info = move(state, key, jnp.exp(log_step_size))
    log_step_size = adapt_log_step_size(log_step_size, info.acceptance_rate, target_acceptance)
    return (state, log_step_size), None

  (state, log_step_size), _ = jax.lax.scan(
    warmup,
    (
      blackjax.mcmc.hmc.init(z_init, logdensity),
      jnp.log(jnp.asarray(initial_step_size, z_init.dtype)),
    ),
    jax.random.split(warmup_key, num_warmup),
  )
  step_size = jnp.exp(log_step_size)

  def draw(state, key):
    state, info = move(state, key, step_size)
    return state, (state.position, info.acceptance_rate)

  _, (samples, acceptance) = jax.lax.scan(draw, state, jax.random.split(sampling_key, num_samples))
  return Chain(samples, step_size, jnp.mean(acceptance))
