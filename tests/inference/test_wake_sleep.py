"""Wake-sleep in the linear-Gaussian model: at the exact posterior, the wake
gradient of the decoder is grad log p(x) (Fisher's identity) and the sleep
gradient of the encoder is zero in expectation (q = p(z|x) maximises
E_p(x, z) log q(z|x)). Tolerances as in test_gradient_estimators.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from linear_gaussian import (
  LATENT_DIM,
  NOISE_STD,
  data,
  encode_fn,
  exact_posterior_params,
  log_likelihood_fn,
  log_marginal_jax,
  random_params,
  z_score,
)

from vae_jax.inference import wake_sleep


@pytest.fixture(autouse=True)
def float64():
  with jax.enable_x64():
    yield


def sample_fn(params, z, key):
  mean = params["W"] @ z + params["b"]
  return mean + NOISE_STD * jax.random.normal(key, mean.shape, mean.dtype)


def draw_gradients(params, x, num_draws, num_samples=1):
  """Gradients of the batch sum of the surrogate, one per draw."""

  def one_draw(key):
    eps_key, dream_key = jax.random.split(key)
    eps = jax.random.normal(eps_key, (num_samples, x.shape[0], LATENT_DIM), x.dtype)
    return jax.grad(
      lambda p: wake_sleep.batch_wake_sleep_surrogate(
        encode_fn, log_likelihood_fn, sample_fn, p, x, eps, dream_key
      ).sum()
    )(params)

  return jax.jit(jax.vmap(one_draw))(jax.random.split(jax.random.key(0), num_draws))


def test_at_the_exact_posterior_wake_is_fisher_and_sleep_is_stationary():
  rng = np.random.default_rng(11)
  params, x = exact_posterior_params(rng), data(rng)
  draws = draw_gradients(params, x, num_draws=20000)
  expected = jax.grad(lambda p: log_marginal_jax(p, x).sum())(params)
  expected = {
    name: (expected[name] if name in ("W", "b") else np.zeros_like(params[name])) for name in params
  }
  z = z_score(sum(np.size(v) for v in expected.values()))
  for name, target in expected.items():
    standard_error = draws[name].std(0) / np.sqrt(20000)
    gap = np.abs(draws[name].mean(0) - target)
    assert np.all(gap <= z * standard_error + 1e-9), (name, gap, standard_error)


def test_the_phases_update_disjoint_networks():
  """Away from the posterior: the decoder gradient is the wake term's alone
  (z held fixed) and the encoder gradient is the sleep term's alone."""
  rng = np.random.default_rng(12)
  params, x = random_params(rng), data(rng)
  eps = jax.random.normal(jax.random.key(1), (3, x.shape[0], LATENT_DIM), x.dtype)
  dream_key = jax.random.key(2)
  grads = jax.grad(
    lambda p: wake_sleep.batch_wake_sleep_surrogate(
      encode_fn, log_likelihood_fn, sample_fn, p, x, eps, dream_key
    ).sum()
  )(params)

  mean, logvar = jax.vmap(encode_fn, in_axes=(None, 0))(params, x)
  z = mean + jnp.exp(0.5 * logvar) * eps  # [L, batch, latent]
  wake = jax.grad(
    lambda p: (
      jax.vmap(jax.vmap(log_likelihood_fn, (None, None, 0)), (None, 0, 1))(p, x, z).mean(1).sum()
    )
  )(params)
  for name in ("W", "b"):
    np.testing.assert_allclose(grads[name], wake[name], rtol=1e-10, atol=1e-12)
  assert all(np.any(grads[name] != 0) for name in ("enc_A", "enc_a", "enc_logvar"))
