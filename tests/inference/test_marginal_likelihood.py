"""HMC on the exact posterior and the App. D marginal-likelihood estimator, in
the linear-Gaussian model of `linear_gaussian.py`, where p(z|x) and log p(x)
are analytic."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from linear_gaussian import (
  BATCH,
  LATENT_DIM,
  NOISE_STD,
  data,
  log_likelihood_fn,
  log_marginal,
  random_params,
)
from scipy import special, stats

import vae_jax
from vae_jax.inference import hmc, marginal_likelihood

NUM_REPLICATES = 8  # independent chains per example: their spread is the Monte-Carlo error
FALSE_ALARM = 1e-3


def t_score(num_comparisons: int) -> float:
  """Two-sided Student-t quantile for a standard error estimated from
  NUM_REPLICATES replicates, Bonferroni-corrected."""
  return float(stats.t.isf(FALSE_ALARM / (2 * num_comparisons), NUM_REPLICATES - 1))


def exact_posterior(params, x):
  """Mean [batch, J] and covariance [J, J] of p(z|x) (the same for every x)."""
  W, b = np.asarray(params["W"]), np.asarray(params["b"])
  covariance = np.linalg.inv(np.eye(LATENT_DIM) + W.T @ W / NOISE_STD**2)
  return (np.asarray(x) - b) @ W @ covariance / NOISE_STD**2, covariance


def replicate_keys(seed):
  return jax.random.split(jax.random.key(seed), NUM_REPLICATES * BATCH).reshape(
    NUM_REPLICATES, BATCH
  )


@pytest.fixture(scope="module")
def model():
  rng = np.random.default_rng(0)
  return random_params(rng), data(rng)


# Slow: the App. D test below fails too if HMC misses the posterior.
@pytest.mark.slow
def test_hmc_draws_from_the_exact_posterior(model):
  params, x = model
  sample = jax.jit(
    jax.vmap(
      jax.vmap(
        lambda x, key: hmc.sample_posterior(
          log_likelihood_fn,
          params,
          x,
          jnp.zeros(LATENT_DIM),
          key,
          num_samples=200,
          num_leapfrog=4,
          num_warmup=100,
        ),
        in_axes=(0, 0),
      ),
      in_axes=(None, 0),
    )
  )
  chains = sample(x, replicate_keys(0))
  samples = np.asarray(chains.samples, np.float64)  # [replicates, batch, samples, J]
  mean, covariance = exact_posterior(params, x)
  # Each replicate's sample mean and variance; their spread across replicates
  # is the Monte-Carlo error, autocorrelation of the chains included.
  for statistic, exact in (
    (samples.mean(2), mean),
    (samples.var(2), np.broadcast_to(np.diag(covariance), mean.shape)),
  ):
    estimate = statistic.mean(0)
    standard_error = statistic.std(0, ddof=1) / np.sqrt(NUM_REPLICATES)
    gap = np.abs(estimate - exact)
    assert np.all(gap < t_score(2 * BATCH * LATENT_DIM) * standard_error), (gap, standard_error)
  # The tuned step size makes the chains move rather than reject.
  assert np.asarray(chains.acceptance_rate).mean() > 0.5


def test_app_d_estimate_matches_the_exact_log_marginal(model):
  params, x = model
  estimate = jax.jit(
    jax.vmap(
      jax.vmap(
        lambda x, key: marginal_likelihood.log_marginal_likelihood(
          log_likelihood_fn, params, x, jnp.zeros(LATENT_DIM), key, num_samples=200
        ),
        in_axes=(0, 0),
      ),
      in_axes=(None, 0),
    )
  )
  estimates = np.asarray(estimate(x, replicate_keys(1)), np.float64)  # [replicates, batch]
  standard_error = estimates.std(0, ddof=1) / np.sqrt(NUM_REPLICATES)
  gap = np.abs(estimates.mean(0) - log_marginal(params, x))
  assert np.all(gap < t_score(BATCH) * standard_error), (gap, standard_error)


def test_harmonic_mean_is_exact_when_q_is_the_posterior(model):
  """Every ratio q(z)/p(x, z) is then 1/p(x): any samples give log p(x)."""
  params, x = model
  mean, covariance = exact_posterior(params, x)
  z = jax.random.normal(jax.random.key(2), (BATCH, 30, LATENT_DIM))
  chol = jnp.asarray(np.linalg.cholesky(covariance), jnp.float32)

  def estimate(x, mean, z):
    log_joint = jax.vmap(lambda z: hmc.log_joint(log_likelihood_fn, params, x, z))(z)
    log_q = marginal_likelihood.gaussian_log_prob(z, mean, chol)
    return marginal_likelihood.harmonic_mean_log_marginal(log_q, log_joint)

  # Full float32 products: on a GPU the default is TF32, far from rtol 1e-5.
  with jax.default_matmul_precision("float32"):
    estimates = jax.jit(jax.vmap(estimate))(x, jnp.asarray(mean, jnp.float32), z)
  np.testing.assert_allclose(estimates, log_marginal(params, x), rtol=1e-5)


def test_harmonic_mean_is_the_log_mean_exp_of_unequal_ratios():
  """-log((1/L) sum_l exp(log_q_l - log_joint_l)) for ratios spread over ~100 nats, where
  exp overflows in float32 and a plain mean of the log-ratios is far off."""
  rng = np.random.default_rng(4)
  num_samples = 50
  log_joint = rng.normal(-500.0, 30.0, num_samples).astype(np.float32)
  log_q = rng.normal(0.0, 20.0, num_samples).astype(np.float32)
  log_ratio = np.asarray(log_q, np.float64) - np.asarray(log_joint, np.float64)
  assert np.ptp(log_ratio) > 100.0
  expected = -(special.logsumexp(log_ratio) - np.log(num_samples))
  estimate = marginal_likelihood.harmonic_mean_log_marginal(
    jnp.asarray(log_q), jnp.asarray(log_joint)
  )
  # float32 inputs and arithmetic: a few ulps of |log_ratio| ~ 600.
  np.testing.assert_allclose(estimate, expected, rtol=1e-6)


def test_fit_gaussian_is_the_sample_mean_and_covariance():
  samples = jax.random.normal(jax.random.key(3), (500, 3)) @ jnp.array(
    [[1.0, 0.0, 0.0], [0.5, 2.0, 0.0], [0.0, -1.0, 0.3]]
  )
  mean, chol = marginal_likelihood.fit_gaussian(samples)
  np.testing.assert_allclose(mean, np.mean(samples, 0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(chol @ chol.T, np.cov(samples.T, bias=True), rtol=1e-4, atol=1e-5)
  z = samples[:5]
  np.testing.assert_allclose(
    marginal_likelihood.gaussian_log_prob(z, mean, chol),
    stats.multivariate_normal(mean, chol @ chol.T).logpdf(np.asarray(z)),
    rtol=1e-5,
  )


@pytest.mark.parametrize(
  "kwargs, message",
  [
    ({"num_samples": 0}, "num_samples"),
    ({"num_leapfrog": 0}, "num_leapfrog"),
    ({"num_warmup": -1}, "num_warmup"),
  ],
)
def test_make_marginal_likelihood_estimate_rejects_bad_settings(kwargs, message):
  model = vae_jax.make_vae(data_dim=6, latent_dim=2, hidden_sizes=(4,))
  with pytest.raises(ValueError, match=message):
    vae_jax.make_marginal_likelihood_estimate(model, **kwargs)


def test_the_estimate_scores_draws_other_than_those_q_was_fitted_on(model):
  """App. D's step 3 takes fresh posterior draws: the chain's first
  num_samples fit q, the next num_samples enter the estimate. Scoring the
  fitting draws instead (a plausible slip) gives another value."""
  params, x = model
  key, num_samples = jax.random.key(3), 20
  settings = {"num_leapfrog": 4, "num_warmup": 20}
  estimate = marginal_likelihood.log_marginal_likelihood(
    log_likelihood_fn, params, x[0], jnp.zeros(LATENT_DIM), key, num_samples=num_samples, **settings
  )
  chain = hmc.sample_posterior(
    log_likelihood_fn,
    params,
    x[0],
    jnp.zeros(LATENT_DIM),
    key,
    num_samples=2 * num_samples,
    **settings,
  )
  fit, fresh = chain.samples[:num_samples], chain.samples[num_samples:]
  mean, chol = marginal_likelihood.fit_gaussian(fit)

  def scored(samples):
    log_joint = jax.vmap(lambda z: hmc.log_joint(log_likelihood_fn, params, x[0], z))(samples)
    log_q = marginal_likelihood.gaussian_log_prob(samples, mean, chol)
    return marginal_likelihood.harmonic_mean_log_marginal(log_q, log_joint)

  np.testing.assert_allclose(estimate, scored(fresh), rtol=1e-5)
  assert not np.isclose(estimate, scored(fit), rtol=1e-5)
