"""Active units (`vae_jax.inference.active_units`) from their definition,
A_u = Cov_x(E_q[u | x]) > 0.01 (Burda et al. 2016, Sec. 5.2)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from linear_gaussian import z_score

import vae_jax
from vae_jax.inference import active_units
from vae_jax.math import distributions

DATA_DIM, NUM_EXAMPLES = 6, 300


def _data(seed=0):
  return jax.random.bernoulli(jax.random.key(seed), 0.4, (NUM_EXAMPLES, DATA_DIM)).astype(
    jnp.float32
  )


def _silence(params, network, units):
  """Zeroes the mean head's kernel columns of `units`: their posterior mean
  is then the head's bias, whatever the input."""
  kernel = params["params"][network]["mean"]["kernel"]
  params["params"][network]["mean"]["kernel"] = kernel.at[:, units].set(0.0)
  return params


def test_one_layer_activity_is_the_variance_of_the_encoder_mean_over_the_data():
  model = vae_jax.make_vae(DATA_DIM, 4, hidden_sizes=(8,), init="glorot")
  params = _silence(vae_jax.init_params(model, jax.random.key(1)), "encoder", [0, 2])
  x = _data()
  (activity,) = active_units.make_unit_activities(model, batch_size=100)(
    params, x, jax.random.key(2)
  )
  mean, _ = vae_jax.encode(model, params, x)
  np.testing.assert_allclose(activity, np.var(np.asarray(mean, np.float64), 0, ddof=1), rtol=1e-5)
  assert activity[0] == activity[2] == 0.0 and np.all(activity[[1, 3]] > 0.01)
  assert active_units.count_active((activity,)) == (2,)


def test_top_layer_activity_is_unbiased_for_the_variance_of_its_posterior_mean():
  """E_q[h2 | x] is an integral over h1. The 10-draw activity, averaged over
  keys, must match the variance over x of a 4,000-draw posterior mean (whose
  own noise adds about 1/400 of the 10-draw one's); silenced units are 0."""
  model = vae_jax.make_vae(
    DATA_DIM, 3, hidden_sizes=(8,), stochastic_layers=2, top_latent_dim=4, top_hidden_sizes=(8,)
  )
  params = vae_jax.init_params(model, jax.random.key(3))
  params = _silence(params, "top_encoder", [1])
  # A wide q(h1 | x) makes the top layer's posterior mean noisy to estimate.
  params["params"]["encoder"]["logvar"]["bias"] += 2.0
  x = _data(4)
  activities = active_units.make_unit_activities(model, num_samples=10, batch_size=100)
  keys = jax.random.split(jax.random.key(5), 30)
  top = np.array([activities(params, x, key)[1] for key in keys])

  mean1, logvar1 = vae_jax.encode(model, params, x)
  h1 = distributions.reparameterize(
    mean1, logvar1, jax.random.normal(jax.random.key(6), (4000, *mean1.shape))
  )
  mean2, _ = model.apply(params, h1, method=vae_jax.TwoLayerVAE.top_encode)
  exact = np.var(np.asarray(jnp.mean(mean2, 0), np.float64), 0, ddof=1)

  standard_error = top.std(0, ddof=1) / np.sqrt(len(keys))
  assert np.all(top[:, 1] == 0.0)
  live = [0, 2, 3]
  gap = np.abs(top.mean(0)[live] - exact[live])
  assert np.all(gap < z_score(len(live)) * standard_error[live] + 1e-4 * exact[live]), (
    gap,
    standard_error,
  )


def test_too_few_draws_are_refused():
  with pytest.raises(ValueError, match="num_samples must be >= 2"):
    active_units.make_unit_activities(vae_jax.make_vae(DATA_DIM, 2), num_samples=1)
