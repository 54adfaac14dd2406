"""Estimators A, B and IWAE in the linear-Gaussian model of `linear_gaussian.py`.

Tolerances are Monte-Carlo standard errors: a mean over n draws is compared
with its target within z standard errors, z chosen for a family-wise false
alarm rate of 1e-3 over all the comparisons a test makes (Bonferroni).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from linear_gaussian import (
  BATCH,
  LATENT_DIM,
  analytic_elbo,
  data,
  encode_fn,
  exact_posterior_params,
  log_likelihood_fn,
  log_marginal,
  random_params,
  z_score,
)
from scipy import stats

from vae_jax.math import estimators


def draw_bounds(estimator, params, x, num_draws, num_samples=1, seed=0):
  """[num_draws, batch] independent estimates, L = num_samples each."""

  def one_draw(key):
    eps = jax.random.normal(key, (num_samples, x.shape[0], LATENT_DIM), x.dtype)
    return estimators.batch_bound(estimator, encode_fn, log_likelihood_fn, params, x, eps)

  keys = jax.random.split(jax.random.key(seed), num_draws)
  return jax.jit(jax.vmap(one_draw))(keys)


@pytest.fixture(autouse=True)
def float64():
  with jax.enable_x64():
    yield


@pytest.mark.parametrize("name", ["A", "B"])
@pytest.mark.parametrize("num_samples", [1, 3])
def test_estimator_mean_is_the_analytic_elbo(name, num_samples):
  rng = np.random.default_rng(1)
  params, x = random_params(rng), data(rng)
  num_draws = 40_000
  bounds = draw_bounds(estimators.ESTIMATORS[name], params, x, num_draws, num_samples)
  standard_error = bounds.std(0) / np.sqrt(num_draws)
  gap = np.abs(bounds.mean(0) - analytic_elbo(params, x))
  assert np.all(gap < z_score(BATCH) * standard_error), (gap, standard_error)
  assert np.all(standard_error > 0)


def test_analytic_elbo_is_below_log_marginal_and_tight_at_the_posterior():
  rng = np.random.default_rng(2)
  params, x = random_params(rng), data(rng)
  assert np.all(analytic_elbo(params, x) < log_marginal(params, x))
  rng = np.random.default_rng(2)
  exact, x = exact_posterior_params(rng), data(rng)
  np.testing.assert_allclose(analytic_elbo(exact, x), log_marginal(exact, x), rtol=1e-12)


def test_at_the_exact_posterior_estimator_a_is_log_marginal_with_zero_variance():
  rng = np.random.default_rng(3)
  params, x = exact_posterior_params(rng), data(rng)
  bounds = draw_bounds(estimators.estimator_a, params, x, num_draws=1000)
  # Every single-sample estimate is log p(x): log p(x,z) - log q(z|x) = log p(x).
  np.testing.assert_allclose(
    bounds, np.broadcast_to(log_marginal(params, x), bounds.shape), rtol=1e-10
  )
  assert np.all(bounds.std(0) < 1e-9)


def test_at_the_exact_posterior_estimator_b_is_unbiased_for_log_marginal():
  rng = np.random.default_rng(3)
  params, x = exact_posterior_params(rng), data(rng)
  num_draws = 40_000
  bounds = draw_bounds(estimators.estimator_b, params, x, num_draws)
  standard_error = bounds.std(0) / np.sqrt(num_draws)
  # B keeps Monte-Carlo noise from log p(x|z) even here, unlike A.
  assert np.all(standard_error > 1e-3)
  gap = np.abs(bounds.mean(0) - log_marginal(params, x))
  assert np.all(gap < z_score(BATCH) * standard_error), (gap, standard_error)


def test_iwae_bound_lies_between_elbo_and_log_marginal_and_tightens_with_k():
  rng = np.random.default_rng(4)
  params, x = random_params(rng), data(rng)
  num_draws = 4000
  elbo = analytic_elbo(params, x)
  log_px = log_marginal(params, x)
  means = []
  for k in (1, 10, 100):
    bounds = draw_bounds(estimators.iwae_bound, params, x, num_draws, num_samples=k)
    means.append(bounds.mean(0))
  # k = 1 is estimator A; each mean must sit below log p(x) (a bound) and
  # rise with k (Burda et al., Theorem 1), by far more than the MC error here.
  np.testing.assert_array_less(elbo - 0.5, means[0])
  np.testing.assert_array_less(means[0], means[1])
  np.testing.assert_array_less(means[1], means[2])
  np.testing.assert_array_less(means[2], log_px)


def test_iwae_with_one_sample_is_estimator_a():
  rng = np.random.default_rng(5)
  params, x = random_params(rng), data(rng)
  np.testing.assert_allclose(
    draw_bounds(estimators.iwae_bound, params, x, 5),
    draw_bounds(estimators.estimator_a, params, x, 5),
    rtol=1e-12,
  )


@pytest.mark.parametrize("name", ["A", "B"])
def test_mean_reparameterised_gradient_is_the_analytic_elbo_gradient(name):
  rng = np.random.default_rng(6)
  params, x = random_params(rng), data(rng)
  estimator = estimators.ESTIMATORS[name]

  def single_draw_objective(p, key):
    eps = jax.random.normal(key, (1, BATCH, LATENT_DIM), x.dtype)
    return jnp.sum(estimators.batch_bound(estimator, encode_fn, log_likelihood_fn, p, x, eps))

  num_draws = 40_000
  keys = jax.random.split(jax.random.key(7), num_draws)
  grads = jax.jit(jax.vmap(jax.grad(single_draw_objective), in_axes=(None, 0)))(params, keys)
  exact = jax.grad(lambda p: jnp.sum(analytic_elbo(p, x)))(params)
  num_components = sum(leaf.size for leaf in jax.tree_util.tree_leaves(params))
  z = z_score(num_components)
  for name_, draws in grads.items():
    standard_error = draws.std(0) / np.sqrt(num_draws)
    gap = np.abs(draws.mean(0) - exact[name_])
    assert np.all(gap <= z * standard_error + 1e-10), (name_, gap, standard_error)


def test_gaussian_weight_log_prior_matches_scipy():
  rng = np.random.default_rng(8)
  params = random_params(rng)
  leaves = np.concatenate([np.ravel(leaf) for leaf in jax.tree_util.tree_leaves(params)])
  expected = stats.norm.logpdf(leaves, scale=2.0).sum()
  np.testing.assert_allclose(
    estimators.gaussian_weight_log_prior(params, stddev=2.0), expected, rtol=1e-10
  )
