"""Gradient estimators in the linear-Gaussian model: unbiased, and STL's zero variance.

Tolerances: z standard errors of the Monte-Carlo mean, z Bonferroni-corrected
for a family-wise false alarm rate of 1e-3 over the compared coordinates.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from linear_gaussian import (
  LATENT_DIM,
  analytic_elbo,
  data,
  encode_fn,
  exact_posterior_params,
  log_likelihood_fn,
  log_marginal_jax,
  random_params,
  z_score,
)

from vae_jax.errors import ConfigError
from vae_jax.math import estimators

ENCODER = ("enc_A", "enc_a", "enc_logvar")
DECODER = ("W", "b")


@pytest.fixture(autouse=True)
def float64():
  with jax.enable_x64():
    yield


def draw_gradients(name, params, x, num_draws, num_samples=1, seed=0):
  """Gradients of the batch sum, one per draw: leaves [num_draws, ...]."""

  def one_draw(key):
    eps = jax.random.normal(key, (num_samples, x.shape[0], LATENT_DIM), x.dtype)
    _, grads = estimators.per_example_gradients(
      estimators.ESTIMATORS[name], encode_fn, log_likelihood_fn, params, x, eps
    )
    return jax.tree_util.tree_map(lambda g: g.sum(0), grads)

  keys = jax.random.split(jax.random.key(seed), num_draws)
  return jax.jit(jax.vmap(one_draw))(keys)


def assert_mean_matches(draws, expected, num_comparisons_scale=1):
  num_draws = len(jax.tree_util.tree_leaves(draws)[0])
  num_components = sum(np.size(v) for v in expected.values()) * num_comparisons_scale
  z = z_score(num_components)
  for name, target in expected.items():
    standard_error = draws[name].std(0) / np.sqrt(num_draws)
    gap = np.abs(draws[name].mean(0) - target)
    assert np.all(gap <= z * standard_error + 1e-9), (name, gap, standard_error)


@pytest.mark.parametrize("name", ["A", "B", "stl", "score", "score_baseline"])
def test_gradient_estimator_is_unbiased_for_the_analytic_elbo_gradient(name):
  rng = np.random.default_rng(10)
  params, x = random_params(rng), data(rng)
  draws = draw_gradients(name, params, x, num_draws=40_000)
  exact = jax.grad(lambda p: jnp.sum(analytic_elbo(p, x)))(params)
  assert_mean_matches(draws, exact)


def test_baseline_reduces_the_score_function_variance():
  rng = np.random.default_rng(11)
  params, x = random_params(rng), data(rng)
  naive = draw_gradients("score", params, x, num_draws=5000)
  with_baseline = draw_gradients("score_baseline", params, x, num_draws=5000)
  pathwise = draw_gradients("A", params, x, num_draws=5000)
  total = lambda d: sum(d[k].var(0).sum() for k in ENCODER)
  assert total(with_baseline) < total(naive)
  assert total(pathwise) < total(with_baseline)


@pytest.mark.parametrize(
  "name, k",
  [("iwae", 1), ("iwae", 5), ("dreg", 5), ("iwae_stl", 5), ("rws", 5), ("rws_dreg", 5)],
)
def test_iwae_gradient_at_the_exact_posterior_is_the_log_marginal_gradient(name, k):
  """At q = p(z|x) every importance weight is p(x), so the IWAE gradient's
  expectation is grad_theta log p(x) (Fisher's identity) for the decoder and
  0 for the encoder (the bound is at its maximum over q); the wake phase of
  q (rws) is zero in expectation there too, as E_q grad log q = 0."""
  rng = np.random.default_rng(12)
  params, x = exact_posterior_params(rng), data(rng)
  draws = draw_gradients(name, params, x, num_draws=20_000, num_samples=k)
  exact = jax.grad(lambda p: jnp.sum(log_marginal_jax(p, x)))(params)
  expected = {name: exact[name] for name in DECODER}
  expected.update({name: np.zeros_like(params[name]) for name in ENCODER})
  assert_mean_matches(draws, expected)
  assert np.all(draws["W"].std(0) > 0)  # the decoder gradient stays noisy


@pytest.mark.parametrize("name, k", [("stl", 1), ("dreg", 5), ("iwae_stl", 5), ("rws_dreg", 5)])
def test_path_derivative_encoder_gradient_is_exactly_zero_at_the_exact_posterior(name, k):
  """log w is constant in z at q = p(z|x), and these encoder gradients are
  path derivatives of it (weighted by w~, w~^2 or w~ - w~^2)."""
  rng = np.random.default_rng(13)
  params, x = exact_posterior_params(rng), data(rng)
  stl = draw_gradients(name, params, x, num_draws=200, num_samples=k)
  a = draw_gradients("A", params, x, num_draws=200, num_samples=k)
  for name in ENCODER:
    # Every draw, not just the mean: the variance is zero.
    np.testing.assert_allclose(stl[name], 0.0, atol=1e-10)
    assert a[name].std(0).max() > 1e-2, name
  # The decoder's gradient depends on z for every estimator, so it keeps noise.
  assert stl["W"].std(0).max() > 1e-2


IWAE_GRADIENTS = ("dreg", "iwae_stl", "rws", "rws_dreg")


@pytest.mark.parametrize("name", IWAE_GRADIENTS)
def test_iwae_family_value_and_decoder_gradient_are_iwaes(name):
  """On the same noise each is the IWAE bound in value, with IWAE's decoder
  gradient: they differ only in the encoder's."""
  rng = np.random.default_rng(14)
  params, x = random_params(rng), data(rng)
  eps = jax.random.normal(jax.random.key(0), (5, x.shape[0], LATENT_DIM), x.dtype)
  theirs = estimators.per_example_gradients(
    estimators.ESTIMATORS[name], encode_fn, log_likelihood_fn, params, x, eps
  )
  iwae = estimators.per_example_gradients(
    estimators.iwae_bound, encode_fn, log_likelihood_fn, params, x, eps
  )
  np.testing.assert_allclose(theirs[0], iwae[0], rtol=1e-12)
  for leaf in DECODER:
    np.testing.assert_allclose(theirs[1][leaf], iwae[1][leaf], rtol=1e-10, atol=1e-12)
  assert not np.allclose(theirs[1]["enc_A"], iwae[1]["enc_A"])


def test_iwae_stl_at_one_sample_is_stl():
  rng = np.random.default_rng(15)
  params, x = random_params(rng), data(rng)
  eps = jax.random.normal(jax.random.key(1), (1, x.shape[0], LATENT_DIM), x.dtype)
  ours, stl = (
    estimators.per_example_gradients(
      estimators.ESTIMATORS[name], encode_fn, log_likelihood_fn, params, x, eps
    )
    for name in ("iwae_stl", "stl")
  )
  chex.assert_trees_all_close(ours, stl, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name, reference", [("dreg", "iwae"), ("rws_dreg", "rws")])
def test_doubly_reparameterised_encoder_gradient_has_the_same_expectation(name, reference):
  """DReG estimates the IWAE bound's encoder gradient and RWS-DReG the wake
  phase of q, each by reparameterising the other's score term (Tucker et al.,
  2019): away from the posterior, their means agree within the Monte-Carlo
  error of the difference of two independent means."""
  rng = np.random.default_rng(16)
  params, x = random_params(rng), data(rng)
  # 5,000 draws: a biased substitute (iwae_stl for dreg) is off by about 75 standard errors.
  ours = draw_gradients(name, params, x, num_draws=5_000, num_samples=5, seed=1)
  theirs = draw_gradients(reference, params, x, num_draws=5_000, num_samples=5, seed=2)
  z = z_score(sum(np.size(params[leaf]) for leaf in ENCODER))
  for leaf in ENCODER:
    gap = np.abs(ours[leaf].mean(0) - theirs[leaf].mean(0))
    standard_error = np.sqrt((ours[leaf].var(0) + theirs[leaf].var(0)) / 5_000)
    assert np.all(gap <= z * standard_error), (leaf, gap, standard_error)
    # Not the same estimator: the draws differ in spread.
    assert not np.allclose(ours[leaf].std(0), theirs[leaf].std(0), rtol=1e-3)


def _values_and_gradients(estimator, params, x, eps):
  return estimators.per_example_gradients(estimator, encode_fn, log_likelihood_fn, params, x, eps)


@pytest.mark.parametrize(
  "ours, theirs",
  [
    (estimators.make_miwae(1), estimators.iwae_bound),  # M = 1: IWAE of L samples
    (estimators.make_miwae(6), estimators.estimator_a),  # K = 1: the L-sample ELBO
    (estimators.make_ciwae(1.0), estimators.estimator_a),
    (estimators.make_ciwae(0.0), estimators.iwae_bound),
  ],
)
def test_rainforth_objectives_at_their_ends_are_elbo_and_iwae(ours, theirs):
  rng = np.random.default_rng(17)
  params, x = random_params(rng), data(rng)
  eps = jax.random.normal(jax.random.key(2), (6, x.shape[0], LATENT_DIM), x.dtype)
  chex.assert_trees_all_close(
    _values_and_gradients(ours, params, x, eps),
    _values_and_gradients(theirs, params, x, eps),
    rtol=1e-10,
    atol=1e-12,
  )


def test_miwae_ciwae_and_piwae_written_out():
  """MIWAE(2, 3) as the mean of two 3-sample IWAE bounds; CIWAE(0.3) as the
  mix of the ELBO and IWAE; PIWAE(2, 3): IWAE(6)'s value and decoder
  gradient, MIWAE(2, 3)'s encoder gradient."""
  rng = np.random.default_rng(18)
  params, x = random_params(rng), data(rng)
  eps = jax.random.normal(jax.random.key(3), (6, x.shape[0], LATENT_DIM), x.dtype)
  elbo, iwae = (
    _values_and_gradients(e, params, x, eps)[0]
    for e in (estimators.estimator_a, estimators.iwae_bound)
  )
  halves = [
    _values_and_gradients(estimators.iwae_bound, params, x, eps[i : i + 3])[0] for i in (0, 3)
  ]
  miwae = _values_and_gradients(estimators.make_miwae(2), params, x, eps)
  np.testing.assert_allclose(miwae[0], (halves[0] + halves[1]) / 2, rtol=1e-12)
  ciwae = _values_and_gradients(estimators.make_ciwae(0.3), params, x, eps)[0]
  np.testing.assert_allclose(ciwae, 0.3 * elbo + 0.7 * iwae, rtol=1e-12)
  piwae = _values_and_gradients(estimators.make_piwae(2), params, x, eps)
  iwae_gradient = _values_and_gradients(estimators.iwae_bound, params, x, eps)[1]
  np.testing.assert_allclose(piwae[0], iwae, rtol=1e-12)
  for leaf in DECODER:
    np.testing.assert_allclose(piwae[1][leaf], iwae_gradient[leaf], rtol=1e-10, atol=1e-12)
  for leaf in ENCODER:
    np.testing.assert_allclose(piwae[1][leaf], miwae[1][leaf], rtol=1e-10, atol=1e-12)
    assert not np.allclose(piwae[1][leaf], iwae_gradient[leaf])


@pytest.mark.parametrize(
  "make, parameter, problem",
  [
    (lambda: estimators.make_miwae(0), "num_groups", "must be an int >= 1, got 0"),
    (lambda: estimators.make_piwae(2.5), "num_groups", "must be an int >= 1, got 2.5"),
    (lambda: estimators.make_ciwae(1.5), "ciwae_beta", r"must be in \[0, 1\], got 1.5"),
    (lambda: estimators.make_ciwae(-0.1), "ciwae_beta", r"must be in \[0, 1\], got -0.1"),
    (lambda: estimators.make_estimator("ciwae"), "ciwae_beta", "ciwae needs ciwae_beta"),
    (lambda: estimators.make_estimator("iwae", num_groups=2), "num_groups", "not of 'iwae'"),
    (lambda: estimators.make_estimator("miwae", ciwae_beta=0.5), "ciwae_beta", "not of 'miwae'"),
    (lambda: estimators.make_estimator("miwea"), "estimator", "Unknown estimator 'miwea'"),
  ],
)
def test_bad_settings_of_the_rainforth_objectives_are_named(make, parameter, problem):
  with pytest.raises(ConfigError, match=problem) as error:
    make()
  assert error.value.parameter == parameter


def test_samples_not_divisible_into_groups_are_refused():
  """K = L / M must be a whole number >= 1 (M = 4 groups of 6 samples: K < 2)."""
  rng = np.random.default_rng(19)
  params, x = random_params(rng), data(rng)
  eps = jax.random.normal(jax.random.key(4), (6, x.shape[0], LATENT_DIM), x.dtype)
  for make in (estimators.make_miwae, estimators.make_piwae):
    with pytest.raises(ConfigError, match="L = 6 is not a multiple of num_groups M = 4"):
      _values_and_gradients(make(4), params, x, eps)
