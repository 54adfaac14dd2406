"""The two-stochastic-layer estimators (`vae_jax.math.two_layers`) against
their definitions, in a linear-Gaussian hierarchy where everything is analytic:

  h2 ~ N(0, I), h1 | h2 ~ N(C h2 + c, diag t), x | h1 ~ N(E h1 + e, diag u),
  q(h1 | x) = N(A1 x + a1, diag v1), q(h2 | h1) = N(A2 h1 + a2, diag v2).

Under q, (h1, h2) is jointly Gaussian, so the expectation of every term of
log w is a Gaussian moment, and the ELBO has a closed form. With one unit
per layer and one pixel, q can be the exact posterior (q(h2 | h1) =
p(h2 | h1, x) = p(h2 | h1)), and every log w is then log p(x).
Monte-Carlo tolerances are z standard errors (`z_score`, Bonferroni).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from linear_gaussian import z_score
from scipy import stats

from vae_jax.math import distributions, two_layers

J1, J2, D, BATCH = 3, 2, 4, 5
LOG_2PI = np.log(2 * np.pi)


def _functions() -> two_layers.TwoLayerFunctions:
  def encode_fn(params, x):
    return params["A1"] @ x + params["a1"], params["lv1"]

  def top_encode_fn(params, h1):
    return params["A2"] @ h1 + params["a2"], params["lv2"]

  def top_decode_fn(params, h2):
    return params["C"] @ h2 + params["c"], params["lvp"]

  def log_likelihood_fn(params, x, h1):
    return distributions.gaussian_log_prob(params["E"] @ h1 + params["e"], params["lvx"], x)

  return two_layers.TwoLayerFunctions(encode_fn, top_encode_fn, top_decode_fn, log_likelihood_fn)


FUNCTIONS = _functions()


def _random_params(seed: int, j1: int = J1, j2: int = J2, d: int = D) -> dict:
  rng = np.random.default_rng(seed)
  shapes = {
    "A1": (j1, d),
    "a1": (j1,),
    "lv1": (j1,),
    "A2": (j2, j1),
    "a2": (j2,),
    "lv2": (j2,),
    "C": (j1, j2),
    "c": (j1,),
    "lvp": (j1,),
    "E": (d, j1),
    "e": (d,),
    "lvx": (d,),
  }
  return {
    name: jnp.asarray(0.5 * rng.normal(size=shape), jnp.float32) for name, shape in shapes.items()
  }


def _data(seed: int, d: int = D) -> jnp.ndarray:
  return jnp.asarray(np.random.default_rng(seed).normal(size=(BATCH, d)), jnp.float32)


def _expected_log_normal(project, offset, logvar, mean, cov):
  """E log N(P u + offset; 0, diag exp(logvar)) for u ~ N(mean, cov)."""
  residual_mean = project @ mean + offset
  residual_var = np.diag(project @ cov @ project.T)
  return -0.5 * np.sum(LOG_2PI + logvar + (residual_mean**2 + residual_var) / np.exp(logvar))


def _analytic_elbo(params, x) -> float:
  """E_q[log w] for one example, from the joint Gaussian of u = (h1, h2)."""
  p = {name: np.asarray(value, np.float64) for name, value in params.items()}
  x = np.asarray(x, np.float64)
  v1, v2 = np.diag(np.exp(p["lv1"])), np.diag(np.exp(p["lv2"]))
  m1 = p["A1"] @ x + p["a1"]
  mean = np.concatenate([m1, p["A2"] @ m1 + p["a2"]])
  cov = np.block([[v1, v1 @ p["A2"].T], [p["A2"] @ v1, p["A2"] @ v1 @ p["A2"].T + v2]])
  identity1, identity2 = np.eye(J1), np.eye(J2)
  log_px = _expected_log_normal(
    np.hstack([-p["E"], np.zeros((D, J2))]), x - p["e"], p["lvx"], mean, cov
  )
  log_ph1 = _expected_log_normal(np.hstack([identity1, -p["C"]]), -p["c"], p["lvp"], mean, cov)
  log_ph2 = _expected_log_normal(
    np.hstack([np.zeros((J2, J1)), identity2]), np.zeros(J2), np.zeros(J2), mean, cov
  )
  # Under q each layer's standardised residual is its own noise:
  # E log q = -(log 2 pi + logvar + 1) / 2 per unit.
  entropy = 0.5 * np.sum(LOG_2PI + p["lv1"] + 1) + 0.5 * np.sum(LOG_2PI + p["lv2"] + 1)
  return log_px + log_ph1 + log_ph2 + entropy


def _batch(estimator, params, x, eps):
  return jax.vmap(lambda x_i, eps_i: estimator(FUNCTIONS, params, x_i, eps_i), in_axes=(0, 1))(
    x, eps
  )


def test_log_weight_is_the_five_log_densities_written_out():
  params, x = _random_params(0), _data(1)
  eps = jax.random.normal(jax.random.key(2), (7, J1 + J2))
  got = two_layers.log_importance_weights(FUNCTIONS, params, x[0], eps)

  p = {name: np.asarray(value, np.float64) for name, value in params.items()}
  x0, eps = np.asarray(x[0], np.float64), np.asarray(eps, np.float64)
  expected = []
  for noise in eps:
    m1, s1 = p["A1"] @ x0 + p["a1"], np.exp(0.5 * p["lv1"])
    h1 = m1 + s1 * noise[:J1]
    m2, s2 = p["A2"] @ h1 + p["a2"], np.exp(0.5 * p["lv2"])
    h2 = m2 + s2 * noise[J1:]
    log_p = (
      stats.norm.logpdf(x0, p["E"] @ h1 + p["e"], np.exp(0.5 * p["lvx"])).sum()
      + stats.norm.logpdf(h1, p["C"] @ h2 + p["c"], np.exp(0.5 * p["lvp"])).sum()
      + stats.norm.logpdf(h2).sum()
    )
    log_q = stats.norm.logpdf(h1, m1, s1).sum() + stats.norm.logpdf(h2, m2, s2).sum()
    expected.append(log_p - log_q)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


def test_estimator_a_at_k_1_averages_to_the_analytic_elbo():
  params, x = _random_params(3), _data(4)
  num_draws = 4000
  eps = jax.random.normal(jax.random.key(5), (num_draws, BATCH, J1 + J2))
  draws = np.asarray(jax.vmap(lambda e: _batch(two_layers.estimator_a, params, x, e[None]))(eps))
  expected = np.array([_analytic_elbo(params, x_i) for x_i in x])
  standard_error = draws.std(0, ddof=1) / np.sqrt(num_draws)
  gap = np.abs(draws.mean(0) - expected)
  assert np.all(gap < z_score(BATCH) * standard_error), (gap, standard_error)


def _exact_posterior_model(seed: int) -> tuple[dict, float, float]:
  """One unit per layer and one pixel, q set to the exact posterior:
  returns (params, the marginal's mean, its variance) of x."""
  rng = np.random.default_rng(seed)
  C, c, E, e = rng.normal(size=4)
  t, u = np.exp(rng.normal(size=2) * 0.3)
  prior_var1 = C**2 + t  # h1's marginal variance
  post_var1 = 1 / (1 / prior_var1 + E**2 / u)
  post_var2 = 1 / (1 + C**2 / t)
  values = {
    "A1": post_var1 * E / u,
    "a1": post_var1 * (c / prior_var1 - E * e / u),
    "lv1": np.log(post_var1),
    "A2": post_var2 * C / t,
    "a2": -post_var2 * C * c / t,
    "lv2": np.log(post_var2),
    "C": C,
    "c": c,
    "lvp": np.log(t),
    "E": E,
    "e": e,
    "lvx": np.log(u),
  }
  params = {
    name: jnp.asarray(
      np.reshape(v, (1, 1) if name in ("A1", "A2", "C", "E") else (1,)), jnp.float32
    )
    for name, v in values.items()
  }
  return params, E * c + e, E**2 * prior_var1 + u


@pytest.mark.parametrize("num_samples", [1, 10])
def test_with_the_exact_posterior_every_weight_is_the_marginal_likelihood(num_samples):
  params, mean, variance = _exact_posterior_model(6)
  x = _data(7, d=1)
  exact = stats.norm.logpdf(np.asarray(x[:, 0], np.float64), mean, np.sqrt(variance))
  eps = jax.random.normal(jax.random.key(8), (num_samples, BATCH, 2))
  log_w = jax.vmap(
    lambda x_i, e: two_layers.log_importance_weights(FUNCTIONS, params, x_i, e), in_axes=(0, 1)
  )(x, eps)
  np.testing.assert_allclose(log_w, np.repeat(exact[:, None], num_samples, 1), atol=2e-5)
  np.testing.assert_allclose(_batch(two_layers.iwae_bound, params, x, eps), exact, atol=2e-5)


def test_stl_gradient_of_q_vanishes_at_the_exact_posterior_and_a_does_not():
  """At q = p(h1, h2 | x), log w is constant in the samples, so the path
  derivative, STL's whole gradient of q's parameters, is 0 for every draw;
  A's adds the score of q at fixed samples, zero only on average."""
  params, _, _ = _exact_posterior_model(9)
  x, eps = _data(10, d=1), jax.random.normal(jax.random.key(11), (3, BATCH, 2))
  q_names = ("A1", "a1", "lv1", "A2", "a2", "lv2")

  def q_gradient(estimator):
    grads = jax.grad(lambda p: jnp.sum(_batch(estimator, p, x, eps)))(params)
    return np.concatenate([np.ravel(grads[name]) for name in q_names])

  np.testing.assert_allclose(q_gradient(two_layers.estimator_stl), 0.0, atol=1e-4)
  assert np.max(np.abs(q_gradient(two_layers.estimator_a))) > 1e-2


@pytest.mark.parametrize("name", ["iwae", "stl", "score", "score_baseline"])
def test_values_at_one_sample_equal_estimator_a(name):
  params, x = _random_params(12), _data(13)
  eps = jax.random.normal(jax.random.key(14), (1, BATCH, J1 + J2))
  np.testing.assert_allclose(
    _batch(two_layers.ESTIMATORS[name], params, x, eps),
    _batch(two_layers.estimator_a, params, x, eps),
    rtol=1e-6,
  )


@pytest.mark.parametrize("name", ["stl", "score", "score_baseline"])
def test_gradient_estimators_are_unbiased_for_the_elbo_gradient(name):
  """Their mean gradient over draws equals A's mean gradient (both estimate
  the ELBO's): every coordinate within z standard errors of the difference."""
  params, x = _random_params(15), _data(16)[:2]
  num_draws = 3000
  keys = jax.random.split(jax.random.key(17), num_draws)

  def gradient(estimator, key):
    eps = jax.random.normal(key, (1, x.shape[0], J1 + J2))
    grads = jax.grad(lambda p: jnp.sum(_batch(estimator, p, x, eps)))(params)
    return jnp.concatenate([jnp.ravel(g) for g in jax.tree.leaves(grads)])

  # The same draws for both: the difference's variance is what the test pays.
  difference = np.asarray(
    jax.vmap(
      lambda k: gradient(two_layers.ESTIMATORS[name], k) - gradient(two_layers.estimator_a, k)
    )(keys),
    np.float64,
  )
  standard_error = difference.std(0, ddof=1) / np.sqrt(num_draws)
  z = z_score(difference.shape[1])
  assert np.all(np.abs(difference.mean(0)) < z * standard_error + 1e-5)
