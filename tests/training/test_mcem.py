"""Monte Carlo EM with an HMC E-step (`vae_jax.training.mcem`, App. E)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vae_jax
from vae_jax.inference import hmc
from vae_jax.models.functions import model_functions
from vae_jax.training import mcem
from vae_jax.training.state import TrainConfig

NUM_TRAIN, BATCH_SIZE, DATA_DIM, LATENT_DIM = 250, 100, 12, 2


@pytest.fixture(scope="module")
def setup():
  model = vae_jax.make_vae(DATA_DIM, LATENT_DIM, hidden_sizes=(8,))
  config = TrainConfig(batch_size=BATCH_SIZE, learning_rate=0.1, weight_prior=True)
  mcem_config = mcem.MCEMConfig(num_leapfrog=3, num_updates=2)
  probabilities = jax.random.uniform(jax.random.key(0), (4, DATA_DIM))
  data = jax.random.bernoulli(jax.random.key(1), probabilities[jnp.arange(NUM_TRAIN) % 4]).astype(
    jnp.float32
  )
  return model, config, mcem_config, data


def mean_log_joint(model, state, data):
  _, log_likelihood_fn = model_functions(model)
  log_joint = jax.jit(
    jax.vmap(
      lambda params, x, z: hmc.log_joint(log_likelihood_fn, params, x, z), in_axes=(None, 0, 0)
    )
  )
  return float(jnp.mean(log_joint(state.train.params, data, state.latents)))


def test_mcem_epochs_fit_the_decoder_and_move_the_chains(setup):
  model, config, mcem_config, data = setup
  state = mcem.init_mcem_state(model, config, mcem_config, NUM_TRAIN, jax.random.key(2))
  encoder = jax.tree.map(np.asarray, state.train.params["params"]["encoder"])
  latents = np.asarray(state.latents)
  before = mean_log_joint(model, state, data)
  run_key = jax.random.key_data(state.key)
  epoch = mcem.make_mcem_epoch(model, config, mcem_config, NUM_TRAIN)
  state, acceptance = epoch(state, data)
  assert not np.array_equal(jax.random.key_data(state.key), run_key)
  num_batches = NUM_TRAIN // BATCH_SIZE
  assert acceptance.shape == (num_batches,)
  assert np.all((acceptance >= 0) & (acceptance <= 1))
  assert int(state.train.step) == num_batches * mcem_config.num_updates
  # One epoch visits num_batches * M examples: their chains moved (HMC
  # rejects a whole move or none), the rest sat this epoch out.
  moved = np.any(np.asarray(state.latents) != latents, axis=1)
  assert 0 < moved.sum() <= num_batches * BATCH_SIZE
  for _ in range(15):
    state, acceptance = epoch(state, data)
  # The M-steps ascend log p(x, z) at the chains (a wrong sign would descend).
  assert mean_log_joint(model, state, data) > before
  # The encoder is not part of MCEM: no gradient, no weight prior.
  jax.tree.map(
    np.testing.assert_array_equal,
    encoder,
    jax.tree.map(np.asarray, state.train.params["params"]["encoder"]),
  )


@pytest.mark.parametrize(
  "field, value",
  [
    ("num_leapfrog", 0),
    ("num_updates", 0),
    ("target_acceptance", 1.0),
    ("initial_step_size", 0.0),
  ],
)
def test_mcem_config_rejects_bad_settings(field, value):
  with pytest.raises(ValueError, match=field):
    mcem.MCEMConfig(**{field: value})
