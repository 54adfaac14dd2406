"""Log-densities against scipy.stats; closed-form KL against Monte Carlo."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special, stats

from vae_jax.math import distributions

RNG = np.random.default_rng(0)


def test_bernoulli_log_prob_matches_scipy_on_binary_targets():
  logits = RNG.normal(0.0, 3.0, size=(7, 11)).astype(np.float32)
  x = RNG.integers(0, 2, size=(7, 11)).astype(np.float32)
  expected = stats.bernoulli.logpmf(x, special.expit(logits.astype(np.float64))).sum(-1)
  got = distributions.bernoulli_log_prob(jnp.asarray(logits), jnp.asarray(x))
  assert got.shape == (7,)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_bernoulli_log_prob_is_cross_entropy_on_grey_levels():
  logits = RNG.normal(0.0, 2.0, size=(5, 9))
  x = RNG.uniform(size=(5, 9))
  p = special.expit(logits)
  expected = (x * np.log(p) + (1 - x) * np.log1p(-p)).sum(-1)
  np.testing.assert_allclose(
    distributions.bernoulli_log_prob(jnp.asarray(logits), jnp.asarray(x)),
    expected,
    rtol=1e-5,
  )


def test_bernoulli_log_prob_exact_and_finite_at_extreme_logits():
  logits = jnp.array([1000.0, -1000.0, 1000.0, -1000.0], jnp.float32)
  x = jnp.array([1.0, 0.0, 0.0, 1.0], jnp.float32)
  per_pixel = jax.vmap(lambda logit, t: distributions.bernoulli_log_prob(logit[None], t[None]))(
    logits, x
  )
  # Confident and right costs nothing; confident and wrong costs |logit| nats.
  np.testing.assert_array_equal(per_pixel, [0.0, 0.0, -1000.0, -1000.0])
  grad = jax.grad(lambda logit: distributions.bernoulli_log_prob(logit, x))(logits)
  # d/dlogit = x - sigmoid(logit): exactly 0 when confident and right, +-1 when wrong.
  np.testing.assert_array_equal(grad, [0.0, 0.0, -1.0, 1.0])


def test_bernoulli_log_prob_is_bit_for_bit_the_jax_softplus_formula():
  """The hand-written softplus changes the speed, not one bit of the value,
  over the whole float32 range and at its special values."""
  special_values = [0.0, -0.0, 1e-30, -1e-30, 88.7, -88.7, 1e38, -1e38, np.inf, -np.inf, np.nan]
  logits = np.concatenate(
    [
      RNG.normal(0.0, 20.0, size=20_000),
      np.sign(RNG.normal(size=2000)) * 10.0 ** RNG.uniform(-40, 38, 2000),
      special_values,
    ]
  ).astype(np.float32)[:, None]

  def formula(logit, t):
    return jnp.sum(t * logit - jax.nn.softplus(logit), axis=-1)

  for target in (0.0, 1.0, 0.3):
    x = jnp.asarray(np.full_like(logits, target))
    # Eager against eager, compiled against compiled: XLA fuses x * l - s
    # into one multiply-add when compiled, rounding grey levels differently.
    for transform in (lambda fn: fn, jax.jit):
      np.testing.assert_array_equal(
        transform(distributions.bernoulli_log_prob)(jnp.asarray(logits), x),
        transform(formula)(jnp.asarray(logits), x),
      )


def test_bernoulli_log_prob_derivatives_are_those_of_its_formula():
  """The stated derivative rule against autodiff of x * l - softplus(l),
  in both arguments, forward and reverse, second order, with broadcasting."""
  logits = jnp.asarray(RNG.normal(0.0, 3.0, size=(3, 4, 5)))  # [L, batch, data_dim]
  x = jnp.asarray(RNG.uniform(size=(4, 5)))  # [batch, data_dim]

  def formula(logit, t):
    return jnp.sum(t * logit - jax.nn.softplus(logit), axis=-1)

  def total(fn):
    return lambda logit, t: jnp.sum(jnp.tanh(fn(logit, t)))  # a non-linear use of the output

  for argnums in (0, 1):
    np.testing.assert_allclose(
      jax.grad(total(distributions.bernoulli_log_prob), argnums)(logits, x),
      jax.grad(total(formula), argnums)(logits, x),
      rtol=1e-5,
      atol=1e-6,
    )
  tangents = (jnp.ones_like(logits), jnp.full_like(x, 0.5))
  np.testing.assert_allclose(
    jax.jvp(distributions.bernoulli_log_prob, (logits, x), tangents)[1],
    jax.jvp(formula, (logits, x), tangents)[1],
    rtol=1e-5,
    atol=1e-6,
  )
  # The Hessian in the logits is diag(-s (1 - s)), s = sigmoid(l), here against
  # float64; float32 resolves 1 - s no finer than its spacing near 1.0 (eps),
  # hence an atol of a few eps.
  s = special.expit(np.asarray(logits[0, 0], np.float64))
  np.testing.assert_allclose(
    jax.hessian(lambda logit: distributions.bernoulli_log_prob(logit, x[0]))(logits[0, 0]),
    np.diag(-s * (1 - s)),
    rtol=1e-5,
    atol=4 * np.finfo(np.float32).eps,
  )
  # Integer targets have no tangent; the logits' gradient is still x - sigmoid(l).
  binary = jnp.asarray(RNG.integers(0, 2, size=(4, 5)), jnp.int32)
  np.testing.assert_allclose(
    jax.grad(lambda logit: distributions.bernoulli_log_prob(logit, binary).sum())(logits[0]),
    binary - jax.nn.sigmoid(logits[0]),
    rtol=1e-6,
  )


def test_gaussian_log_prob_matches_scipy():
  mean = RNG.normal(size=(4, 6))
  logvar = RNG.normal(0.0, 2.0, size=(4, 6))
  x = RNG.normal(size=(4, 6))
  expected = stats.norm.logpdf(x, mean, np.exp(0.5 * logvar)).sum(-1)
  got = distributions.gaussian_log_prob(*map(jnp.asarray, (mean, logvar, x)))
  np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_standard_normal_log_prob_matches_scipy():
  z = RNG.normal(size=(3, 5))
  np.testing.assert_allclose(
    distributions.standard_normal_log_prob(jnp.asarray(z)),
    stats.norm.logpdf(z).sum(-1),
    rtol=1e-6,
  )


@pytest.mark.parametrize("logvar_value", [-80.0, 80.0])
def test_gaussian_log_prob_finite_at_extreme_logvar(logvar_value):
  mean = jnp.zeros((2, 3), jnp.float32)
  logvar = jnp.full((2, 3), logvar_value, jnp.float32)
  x = jnp.full((2, 3), 1e-3, jnp.float32)
  value = distributions.gaussian_log_prob(mean, logvar, x)
  expected = stats.norm.logpdf(1e-3, 0.0, np.exp(0.5 * np.float64(logvar_value))) * 3
  assert np.isfinite(value).all()
  np.testing.assert_allclose(value, np.full(2, expected), rtol=1e-5)


def test_categorical_log_prob_matches_scipy():
  num_categories = 5
  logits = RNG.normal(0.0, 2.0, size=(3, 4, num_categories))
  x = RNG.integers(0, num_categories, size=(3, 4))
  probs = special.softmax(logits, axis=-1)
  expected = np.array(
    [
      sum(
        stats.multinomial.logpmf(np.eye(num_categories)[x[b, d]], 1, probs[b, d]) for d in range(4)
      )
      for b in range(3)
    ]
  )
  got = distributions.categorical_log_prob(jnp.asarray(logits), jnp.asarray(x))
  np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_categorical_log_prob_finite_at_extreme_logits():
  logits = jnp.array([[[1000.0, -1000.0, 0.0]]], jnp.float32)
  x = jnp.array([[1]])
  np.testing.assert_allclose(distributions.categorical_log_prob(logits, x), [-2000.0], rtol=1e-6)


def test_kl_standard_normal_is_special_case_of_kl_diag_gaussians():
  mean = jnp.asarray(RNG.normal(size=(6, 4)))
  logvar = jnp.asarray(RNG.normal(size=(6, 4)))
  np.testing.assert_allclose(
    distributions.kl_standard_normal(mean, logvar),
    distributions.kl_diag_gaussians(mean, logvar, jnp.zeros_like(mean), jnp.zeros_like(logvar)),
    rtol=1e-6,
  )


def _monte_carlo_kl(key, mean_q, logvar_q, mean_p, logvar_p, num_samples):
  eps = jax.random.normal(key, (num_samples, *mean_q.shape), jnp.float64)
  z = distributions.reparameterize(mean_q, logvar_q, eps)
  log_ratio = distributions.gaussian_log_prob(
    mean_q, logvar_q, z
  ) - distributions.gaussian_log_prob(mean_p, logvar_p, z)
  standard_error = jnp.std(log_ratio) / np.sqrt(num_samples)
  return jnp.mean(log_ratio), standard_error


@pytest.mark.parametrize("standard_prior", [True, False])
def test_closed_form_kl_matches_monte_carlo(standard_prior):
  with jax.enable_x64():
    mean_q = jnp.asarray(RNG.normal(size=5))
    logvar_q = jnp.asarray(RNG.normal(0.0, 0.5, size=5))
    if standard_prior:
      mean_p, logvar_p = jnp.zeros(5), jnp.zeros(5)
      closed_form = distributions.kl_standard_normal(mean_q, logvar_q)
    else:
      mean_p = jnp.asarray(RNG.normal(size=5))
      logvar_p = jnp.asarray(RNG.normal(0.0, 0.5, size=5))
      closed_form = distributions.kl_diag_gaussians(mean_q, logvar_q, mean_p, logvar_p)
    estimate, standard_error = _monte_carlo_kl(
      jax.random.key(1), mean_q, logvar_q, mean_p, logvar_p, 200_000
    )
    assert abs(estimate - closed_form) < 4 * standard_error, (
      estimate,
      closed_form,
      standard_error,
    )


def test_sample_diag_gaussian_shapes_and_moments():
  mean = jnp.array([[1.0, -2.0], [0.0, 3.0]])
  logvar = jnp.log(jnp.array([[0.25, 4.0], [1.0, 0.01]]))
  num_samples = 50_000
  z = distributions.sample_diag_gaussian(jax.random.key(0), mean, logvar, num_samples)
  assert z.shape == (num_samples, 2, 2)
  assert z.dtype == jnp.float32
  std = jnp.exp(0.5 * logvar)
  # Sample mean: standard error std / sqrt(n).
  assert jnp.all(jnp.abs(z.mean(0) - mean) < 4 * std / np.sqrt(num_samples))
  # Sample variance of a Gaussian: standard error var * sqrt(2 / (n - 1)).
  var_error = std**2 * np.sqrt(2.0 / (num_samples - 1))
  assert jnp.all(jnp.abs(z.var(0) - std**2) < 4 * var_error)
