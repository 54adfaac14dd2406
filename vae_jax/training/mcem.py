"""Monte Carlo EM with an HMC E-step: the AEVB paper's Fig. 3 baseline (App. E).

MCEM fits the decoder p_theta(x|z) alone, with no encoder: every training
example keeps its own latent sample, a persistent HMC chain on the exact
posterior p_theta(z|x) (`vae_jax.inference.hmc`). Per minibatch, as App. E describes:

  E-step: one HMC transition of 10 leapfrog steps for each example's z, the
          step size tuned so that the acceptance rate is about 90%;
  M-step: 5 optimiser updates of theta on the mean of log p_theta(x | z)
          at those samples (plus the weight prior on theta, as AEVB).

The encoder's parameters stay in the state (so MCEM and AEVB runs share
`TrainState` and the model) but receive no gradient. An epoch is one
compiled `lax.scan` of the step above (`vae_jax.training.epoch.make_epoch`,
as for AEVB); it is not an on-line algorithm: the per-example chains make its state grow with the
training set, which is why the paper runs it on small ones.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import flax
import jax
import jax.numpy as jnp

from vae_jax.errors import ConfigError
from vae_jax.inference import hmc
from vae_jax.models.functions import model_functions
from vae_jax.models.vae import VAE
from vae_jax.training.epoch import Minibatch, make_epoch
from vae_jax.training.objectives import with_weight_prior
from vae_jax.training.state import (
  TrainConfig,
  TrainState,
  apply_gradients,
  init_train_state,
  make_optimizer,
)

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
        raise ConfigError(name, f"{name} must be >= 1, got {getattr(self, name)}.")
    if not 0 < self.target_acceptance < 1:
      raise ConfigError(
        "target_acceptance", f"target_acceptance must be in (0, 1), got {self.target_acceptance}."
      )
    if not self.initial_step_size > 0:
      raise ConfigError(
        "initial_step_size", f"initial_step_size must be > 0, got {self.initial_step_size}."
      )


@flax.struct.dataclass
class MCEMState:
  """A training state plus MCEM's chains: a pytree."""

  train: TrainState
  latents: Array  # [num_train, latent_dim]: each training example's chain
  log_step_size: Array  # scalar: the E-step's tuned HMC step size, log

  @property
  def key(self) -> Array:
    """The run's PRNG key, which the train state carries."""
    return self.train.key

  def with_key(self, key: Array) -> MCEMState:
    """The state with `key` as the run's PRNG key."""
    return self.replace(train=self.train.with_key(key))


def init_mcem_state(
  model: VAE,
  config: TrainConfig,
  mcem_config: MCEMConfig,
  num_train: int,
  key: Array,
) -> MCEMState:
  """Parameters and optimiser state as `init_train_state(model,
  config, key)`; the chains start at draws from the prior p(z)."""
  train_key, latent_key = jax.random.split(key)
  return MCEMState(
    train=init_train_state(model, config, train_key, num_train),
    latents=jax.random.normal(latent_key, (num_train, model.latent_dim)),
    log_step_size=jnp.log(jnp.float32(mcem_config.initial_step_size)),
  )


def make_mcem_epoch(
  model: VAE,
  config: TrainConfig,
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
    raise ValueError(f"batch_size {config.batch_size} exceeds the {num_train} training examples.")
  _, log_likelihood_fn = model_functions(model)
  optimizer = make_optimizer(config, num_train)
  transition = jax.vmap(
    lambda params, x, z, key, step_size: hmc.transition(
      log_likelihood_fn, params, x, z, key, step_size, mcem_config.num_leapfrog
    ),
    in_axes=(None, 0, 0, 0, None),
  )
  log_likelihood = jax.vmap(log_likelihood_fn, in_axes=(None, 0, 0))

  def loss(params, x, z):
    mean_log_likelihood = jnp.mean(log_likelihood(params, x, z))
    # The prior on the decoder alone: the unused encoder is left as initialised.
    decoder = params["params"]["decoder"]
    return -with_weight_prior(mean_log_likelihood, decoder, num_train, config)

  def update(train_state, inputs):
    x, z = inputs
    grads = jax.grad(loss)(train_state.params, x, z)
    return apply_gradients(train_state, grads, optimizer), None

  def step(state: MCEMState, minibatch: Minibatch):
    indices, x, key = minibatch
    keys = jax.random.split(key, indices.shape[0])
    moved = transition(
      state.train.params, x, state.latents[indices], keys, jnp.exp(state.log_step_size)
    )
    acceptance = jnp.mean(moved.acceptance_rate)
    train_state, _ = jax.lax.scan(
      lambda s, _: update(s, (x, moved.position)),
      state.train,
      None,
      length=mcem_config.num_updates,
    )
    return state.replace(
      train=train_state,
      latents=state.latents.at[indices].set(moved.position),
      log_step_size=hmc.adapt_log_step_size(
        state.log_step_size, acceptance, mcem_config.target_acceptance
      ),
    ), acceptance

  return make_epoch(step, config)
