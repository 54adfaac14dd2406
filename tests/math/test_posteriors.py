"""The q(z|x) families of `vae_jax.posteriors`: moments of reparameterised
samples, log-densities against scipy.stats, unbiased reparameterisation
gradients, and their wiring into the estimators.

Tolerances are Monte-Carlo standard errors with a Bonferroni-corrected z, as
in test_estimators.py; seeds are fixed.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from linear_gaussian import (
  LATENT_DIM,
  data,
  encode_fn,
  log_likelihood_fn,
  random_params,
  z_score,
)
from scipy import special, stats

from vae_jax import training
from vae_jax.errors import ConfigError
from vae_jax.math import distributions, estimators, posteriors

DOF = 10.0  # > 4, so that the sample variance has a finite variance
FAMILIES = ("gaussian", "laplace", "logistic", "student_t", "gumbel", "johnson_su")
SCIPY = {
  "gaussian": stats.norm(),
  "laplace": stats.laplace(),
  "logistic": stats.logistic(),
  "student_t": stats.t(DOF),
  "gumbel": stats.gumbel_r(),
  "johnson_su": stats.johnsonsu(0.0, 1.0),
}
LOC, SCALE, NUM_DRAWS = 0.3, 1.5, 200_000


def _family(name):
  return posteriors.make_posterior(name, student_t_dof=DOF)


def _draws(name, seed=0):
  """[NUM_DRAWS] reparameterised z with loc LOC and scale SCALE."""
  eps = _family(name).sample_noise(jax.random.key(seed), (NUM_DRAWS,), jnp.float32)
  return np.asarray(distributions.reparameterize(LOC, 2.0 * math.log(SCALE), eps), np.float64)


def test_sample_moments_match_the_family_and_scipy():
  z_crit = z_score(2 * len(FAMILIES))
  for name in FAMILIES:
    family, z = _family(name), _draws(name)
    mean = LOC + SCALE * family.noise_mean
    variance = SCALE**2 * family.noise_variance
    np.testing.assert_allclose(family.noise_mean, SCIPY[name].mean(), atol=1e-12)
    np.testing.assert_allclose(family.noise_variance, SCIPY[name].var(), rtol=1e-12)
    mean_se = z.std() / math.sqrt(NUM_DRAWS)
    squared = np.square(z - z.mean())
    var_se = squared.std() / math.sqrt(NUM_DRAWS)
    assert abs(z.mean() - mean) < z_crit * mean_se, (name, z.mean(), mean)
    assert abs(squared.mean() - variance) < z_crit * var_se, (name, squared.mean(), variance)


@pytest.mark.parametrize("name", FAMILIES)
def test_log_prob_matches_scipy(name):
  rng = np.random.default_rng(1)
  loc, logvar = rng.normal(size=(4, 3)), rng.normal(0.0, 0.5, size=(4, 3))
  z = rng.normal(0.0, 2.0, size=(4, 3))
  scale = np.exp(0.5 * logvar)
  expected = np.sum(SCIPY[name].logpdf((z - loc) / scale) - np.log(scale), axis=-1)
  got = _family(name).log_prob(*(jnp.asarray(a, jnp.float32) for a in (loc, logvar, z)))
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_reparameterisation_gradient_of_a_square_is_unbiased():
  """d/d(loc, logvar) of E_q[z^2] = (loc + s m)^2 + s^2 v, s = exp(logvar / 2)."""
  logvar = 2.0 * math.log(SCALE)
  z_crit = z_score(2 * len(FAMILIES))
  for name in FAMILIES:
    family = _family(name)
    eps = family.sample_noise(jax.random.key(2), (NUM_DRAWS,), jnp.float32)
    per_draw = jax.vmap(
      jax.grad(lambda loc, lv, e: jnp.square(distributions.reparameterize(loc, lv, e)), (0, 1)),
      in_axes=(None, None, 0),
    )(LOC, logvar, eps)
    m, v = family.noise_mean, family.noise_variance
    exact = (2.0 * (LOC + SCALE * m), SCALE / 2.0 * (2.0 * (LOC + SCALE * m) * m + 2.0 * SCALE * v))
    for draws, target in zip(per_draw, exact, strict=False):
      draws = np.asarray(draws, np.float64)
      se = draws.std() / math.sqrt(NUM_DRAWS)
      assert abs(draws.mean() - target) < z_crit * se, (name, draws.mean(), target)


@pytest.mark.parametrize("estimator", ["A", "iwae"])
def test_estimators_use_the_family_density(estimator):
  """On the linear-Gaussian model of linear_gaussian.py, with Laplace noise."""
  rng = np.random.default_rng(3)
  params, x = random_params(rng), data(rng)
  family = _family("laplace")
  eps = family.sample_noise(jax.random.key(4), (2, x.shape[0], LATENT_DIM), jnp.float32)
  got = estimators.batch_bound(
    functools.partial(estimators.ESTIMATORS[estimator], log_q=family.log_prob),
    encode_fn,
    log_likelihood_fn,
    params,
    x,
    eps,
  )
  mean, logvar = jax.vmap(encode_fn, in_axes=(None, 0))(params, x)
  z = distributions.reparameterize(mean, logvar, eps)
  log_px = jax.vmap(jax.vmap(log_likelihood_fn, (None, 0, 0)), (None, None, 0))(params, x, z)
  scale = np.exp(0.5 * np.asarray(logvar))
  log_q = np.sum(
    stats.laplace.logpdf((np.asarray(z) - np.asarray(mean)) / scale) - np.log(scale), axis=-1
  )
  log_w = np.asarray(log_px + distributions.standard_normal_log_prob(z)) - log_q
  expected = log_w.mean(0) if estimator == "A" else special.logsumexp(log_w, 0) - math.log(2)
  np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_default_noise_is_the_gaussian_draw_of_before():
  key = jax.random.key(5)
  np.testing.assert_array_equal(
    posteriors.GAUSSIAN.sample_noise(key, (3, 4, 2), jnp.result_type(float)),
    jax.random.normal(key, (3, 4, 2)),
  )


@pytest.mark.parametrize(
  "kwargs, parameter, message",
  [
    ({"posterior": "laplace"}, "posterior", r"Estimator B .* 'laplace' posterior lacks"),
    (
      {"posterior": "gumbel", "estimator": "A", "algorithm": "wake_sleep"},
      "posterior",
      r"'gumbel' posterior cannot be trained by wake-sleep",
    ),
    ({"posterior": "cauchy"}, "posterior", r"Unknown posterior 'cauchy'"),
    (
      {"posterior": "student_t", "estimator": "A", "student_t_dof": 0.0},
      "student_t_dof",
      r"student_t_dof must be > 0",
    ),
  ],
)
def test_bad_posterior_is_named(kwargs, parameter, message):
  # The library names its own parameter; the runner maps it to a flag.
  with pytest.raises(ConfigError, match=message) as error:
    training.TrainConfig(**kwargs)
  assert error.value.parameter == parameter
