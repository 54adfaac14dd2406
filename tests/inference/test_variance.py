"""The variance measurements: moments, summaries, 1/L scaling, intervals."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import vae_jax
from vae_jax.inference import variance
from vae_jax.math import estimators
from vae_jax.models.functions import model_functions

DATA_DIM, LATENT_DIM, NUM_EXAMPLES = 12, 3, 4


@pytest.fixture(scope="module")
def setup():
  model = vae_jax.make_vae(DATA_DIM, LATENT_DIM, hidden_sizes=(16,), init="flax")
  params = vae_jax.init_params(model, jax.random.key(0))
  x = jnp.asarray(np.random.default_rng(0).integers(0, 2, (NUM_EXAMPLES, DATA_DIM)), jnp.float32)
  return model, params, x


def test_welford_moments_equal_numpy_moments_of_the_same_draws(setup):
  model, params, x = setup
  num_draws, num_samples, key = 7, 2, jax.random.key(1)
  mean, var = variance.make_gradient_moments(
    model, estimator="A", num_samples=num_samples, num_draws=num_draws
  )(params, x, key)
  encode_fn, log_likelihood_fn = model_functions(model)
  # Compiled once: draw by draw in eager mode took most of this test's time.
  draw = jax.jit(
    lambda k: estimators.per_example_gradients(
      estimators.estimator_a,
      encode_fn,
      log_likelihood_fn,
      params,
      x,
      jax.random.normal(k, (num_samples, NUM_EXAMPLES, LATENT_DIM)),
    )
  )
  draws = [draw(k) for k in jax.random.split(key, num_draws)]
  stacked = jax.tree_util.tree_map(lambda *leaves: np.stack(leaves), *draws)
  np.testing.assert_allclose(mean[0], stacked[0].mean(0), rtol=1e-5)
  np.testing.assert_allclose(var[0], stacked[0].var(0, ddof=1), rtol=1e-4)
  for got_mean, got_var, draw in zip(
    jax.tree_util.tree_leaves(mean[1]),
    jax.tree_util.tree_leaves(var[1]),
    jax.tree_util.tree_leaves(stacked[1]),
    strict=False,
  ):
    np.testing.assert_allclose(got_mean, draw.mean(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got_var, draw.var(0, ddof=1), rtol=1e-3, atol=1e-8)


def _summary_of_one_example(encoder_moments, decoder_moments):
  """`summarize` of one example whose encoder and decoder gradients have the
  given (means, variances), each a list of coordinates."""
  mean, var = (
    {"params": {"encoder": {"w": jnp.array([e])}, "decoder": {"w": jnp.array([d])}}}
    for e, d in zip(encoder_moments, decoder_moments, strict=True)
  )
  return variance.summarize(
    variance.Moments(
      bound_mean=jnp.array([-5.0]),
      bound_variance=jnp.array([2.0]),
      gradient_mean=mean,
      gradient_variance=var,
      seconds_per_gradient=0.5,
    )
  )


def test_summarize_traces_and_snr_by_hand():
  summary = _summary_of_one_example(([3.0, 4.0], [1.0, 3.0]), ([1.0], [4.0]))
  assert summary["encoder_variance"] == 4.0 and summary["decoder_variance"] == 4.0
  assert summary["total_variance"] == 8.0
  assert np.isclose(summary["encoder_snr"], 5.0 / 2.0)
  assert np.isclose(summary["decoder_snr"], 1.0 / 2.0)
  assert np.isclose(summary["total_snr"], np.sqrt(26.0 / 8.0))
  assert summary["bound_variance"] == 2.0


@pytest.mark.parametrize("estimator", ["A", "B", "stl"])
def test_pathwise_variances_scale_as_one_over_l(setup, estimator):
  """log Var vs log L has slope -1 for a mean of L iid terms; the slope's
  standard error is propagated from the spread over repetitions."""
  model, params, x = setup
  sample_counts = np.array([1, 8, 64])
  num_repetitions = 5
  intervals = []
  for num_samples in sample_counts:
    totals = [
      variance.summarize(m)["total_variance"]
      for m in variance.gradient_moments(
        model,
        params,
        x,
        jax.random.split(jax.random.key(num_samples), num_repetitions),
        estimator=estimator,
        num_samples=int(num_samples),
        num_draws=200,
      )
    ]
    intervals.append(variance.confidence_interval(totals))
  means, half_widths = zip(*intervals, strict=True)
  slope, slope_half_width = variance.log_log_slope(
    sample_counts, means, half_widths, num_repetitions
  )
  slope_error = slope_half_width / stats.norm.isf(0.025)
  z = stats.norm.isf(1e-3 / 2 / 3)
  assert abs(slope + 1.0) < z * slope_error, (slope, slope_error)
  assert slope_error < 0.05  # the test has the power to see a wrong slope


def test_log_log_slope_by_hand():
  """Points on log y = 2 - 0.5 log L give slope -0.5; with equal relative
  errors e the weighted fit's slope variance is e^2 / sum (log L - mean)^2."""
  counts = np.array([1.0, 10.0, 100.0])
  means = np.exp(2.0 - 0.5 * np.log(counts))
  relative_error = 0.1
  t = stats.t.ppf(0.975, 4)
  slope, half_width = variance.log_log_slope(counts, means, t * relative_error * means, 5)
  assert np.isclose(slope, -0.5)
  log_counts = np.log(counts)
  expected = relative_error / np.sqrt(np.sum(np.square(log_counts - log_counts.mean())))
  assert np.isclose(half_width, stats.norm.isf(0.025) * expected)


def test_parameter_snr_averages_over_coordinates_that_vary():
  """Rainforth et al.'s SNR: |E g_i| / std g_i per coordinate, averaged; a
  coordinate of zero variance (a dead unit) has no ratio and is left out."""
  summary = _summary_of_one_example(([3.0, 4.0, 0.0], [1.0, 4.0, 0.0]), ([1.0], [4.0]))
  assert np.isclose(summary["encoder_parameter_snr"], (3.0 / 1.0 + 4.0 / 2.0) / 2)
  assert np.isclose(summary["encoder_snr"], 5.0 / np.sqrt(5.0))
  assert np.isclose(summary["decoder_parameter_snr"], 0.5)


def test_confidence_interval_is_student_t():
  mean, half = variance.confidence_interval(np.array([1.0, 2.0, 3.0]))
  assert mean == 2.0
  assert np.isclose(half, stats.t.ppf(0.975, 2) * 1.0 / np.sqrt(3))


def test_bad_arguments_are_named(setup):
  model, params, x = setup
  with pytest.raises(ValueError, match="num_draws must be >= 2"):
    variance.make_gradient_moments(model, estimator="A", num_samples=1, num_draws=1)
  with pytest.raises(ValueError, match="Unknown estimator"):
    variance.make_gradient_moments(model, estimator="C", num_samples=1, num_draws=5)
