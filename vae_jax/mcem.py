"""Monte Carlo EM with an HMC E-step: the AEVB paper's Fig. 3 baseline (App. E).

MCEM fits the decoder p_theta(x|z) alone, with no encoder: every training
example keeps its own latent sample, a persistent HMC chain on the exact
posterior p_theta(z|x) (`vae_jax.hmc`). Per minibatch, as App. E describes:

  E-step: one HMC transition of 10 leapfrog steps for each example's z, the
          step size tuned so that the acceptance rate is about 90%;
  M-step: 5 optimiser updates of theta on the mean of log p_theta(x | z)
          at those samples (plus the weight prior on theta, as AEVB).

The encoder's parameters stay in the state (so MCEM and AEVB runs share
`TrainState` and the model) but receive no gradient. An epoch is one
compiled `lax.scan`, as `vae_jax.training.make_train_epoch`; it is not an
on-line algorithm: the per-example chains make its state grow with the
training set, which is why the paper runs it on small ones.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import flax
import jax
import jax.numpy as jnp

from vae_jax import api, estimators, hmc, training
from vae_jax.models import VAE

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class MCEMConfig:
  """The E- and M-step settings of App. E.

  Attributes:
    num_leapfrog: leapfrog steps of the E-step's HMC transition.
    num_updates: optimiser updates of theta per E-step.
    target_acceptance: the acceptance rate the step size is tuned towards.
    initial_step_size: the HMC step size before any tuning.
  """

  num_leapfrog: int = 10
  num_updates: int = 5
  target_acceptance: float = hmc.DEFAULT_TARGET_ACCEPTANCE
  initial_step_size: float = 0.1

  def __post_init__(self):
    for name in ("num_leapfrog", "num_updates"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
    if not 0 < self.target_acceptance < 1:
      raise ValueError(f"target_acceptance must be in (0, 1), got {self.target_acceptance}.")
    if not self.initial_step_size > 0:
      raise ValueError(f"initial_step_size must be > 0, got {self.initial_step_size}.")


@flax.struct.dataclass
class MCEMState:
  """A training state plus MCEM's chains: a pytree."""

  train: training.TrainState
  latents: Array  # [num_train, latent_dim]: each training example's chain
  log_step_size: Array  # scalar: the E-step's tuned HMC step size, log


def init_mcem_state(
    model: VAE,
    config: training.TrainConfig,
    mcem_config: MCEMConfig,
    num_train: int,
    key: Array,
) -> MCEMState:
  """Parameters and optimiser state as `training.init_train_state(model,
  config, key)`; the chains start at draws from the prior p(z)."""
  train_key, latent_key = jax.random.split(key)
  return MCEMState(
      train=training.init_train_state(model, config, train_key, num_train),
      latents=jax.random.normal(latent_key, (num_train, model.latent_dim)),
      log_step_size=jnp.log(jnp.float32(mcem_config.initial_step_size)),
  )


def make_mcem_epoch(
    model: VAE,
    config: training.TrainConfig,
    mcem_config: MCEMConfig,
    num_train: int,
) -> Callable[[MCEMState, Array], tuple[MCEMState, Array]]:
  """Returns a jitted `epoch(state, train_data) -> (state, acceptance)`.

  train_data: [num_train, data_dim] on device, the examples the chains of
  `state.latents` belong to (row i is chain i). One epoch visits the
  examples in a fresh random order, M = `config.batch_size` at a time, and
  binarises them anew if `config.dynamic_binarization`. acceptance:
  [num_train // M] the E-steps' mean acceptance rates.
  """
  if num_train < config.batch_size:
    raise ValueError(
        f"batch_size {config.batch_size} exceeds the {num_train} training examples."
    )
  num_batches = num_train // config.batch_size
  _, log_likelihood_fn = api.model_functions(model)
  optimizer = training.make_optimizer(config, num_train)
  transition = jax.vmap(
      lambda params, x, z, key, step_size: hmc.transition(
          log_likelihood_fn, params, x, z, key, step_size, mcem_config.num_leapfrog
      ),
      in_axes=(None, 0, 0, 0, None),
  )
  log_likelihood = jax.vmap(log_likelihood_fn, in_axes=(None, 0, 0))

  def loss(params, x, z):
    per_example = log_likelihood(params, x, z)
    if config.weight_prior:
      # On the decoder alone: the unused encoder is left as initialised.
      decoder = params["params"]["decoder"]
      return -estimators.map_objective(per_example, decoder, num_train, config.prior_stddev)
    return -jnp.mean(per_example)

  def update(train_state, inputs):
    x, z = inputs
    grads = jax.grad(loss)(train_state.params, x, z)
    return training.apply_gradients(train_state, grads, optimizer), None

  def step(state: MCEMState, inputs):
    indices, x, key = inputs
    keys = jax.random.split(key, indices.shape[0])
    moved = transition(state.train.params, x, state.latents[indices], keys,
                       jnp.exp(state.log_step_size))
    acceptance = jnp.mean(moved.acceptance_rate)
    train_state, _ = jax.lax.scan(
        lambda s, _: update(s, (x, moved.position)), state.train, None,
        length=mcem_config.num_updates,
    )
    return state.replace(
        train=train_state,
        latents=state.latents.at[indices].set(moved.position),
        log_step_size=hmc.adapt_log_step_size(
            state.log_step_size, acceptance, mcem_config.target_acceptance
        ),
    ), acceptance

  def epoch(state: MCEMState, train_data: Array):
    key, step_key, (indices, batches) = training.epoch_batches(
        state.train.key, train_data, config)
    state, acceptance = jax.lax.scan(
        step, state, (indices, batches, jax.random.split(step_key, num_batches))
    )
    return state.replace(
        train=state.train.replace(key_data=jax.random.key_data(key))
    ), acceptance

  return jax.jit(epoch, donate_argnums=0)
