"""binarize: Bernoulli draws with the input as their mean; quantize: K equal-width bins."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vae_jax import data


def _probabilities() -> jax.Array:
  """[200, 784] intensities spread over [0, 1], exact 0s and 1s included."""
  x = jax.random.uniform(jax.random.key(1), (200, 784))
  return x.at[:, :10].set(0.0).at[:, 10:20].set(1.0)


def test_binarize_draws_zeros_and_ones_as_float32():
  x = _probabilities()
  draws = data.binarize(jax.random.key(0), x)
  assert draws.shape == x.shape and draws.dtype == jnp.float32
  np.testing.assert_array_equal(np.unique(draws), [0.0, 1.0])
  # Probability 0 and 1 are deterministic.
  assert not draws[:, :10].any() and draws[:, 10:20].all()


def test_binarize_mean_matches_the_input_mean():
  x = np.asarray(_probabilities(), np.float64)
  draws = np.asarray(data.binarize(jax.random.key(0), x))
  # The mean of independent Bernoulli(p_i) has variance sum p_i (1 - p_i) / n^2.
  standard_error = np.sqrt(np.sum(x * (1 - x))) / x.size
  assert abs(draws.mean() - x.mean()) < 5 * standard_error
  # Per pixel over many images too: the mean image is preserved.
  per_pixel_error = np.sqrt(np.sum(x * (1 - x), axis=0)) / x.shape[0]
  assert np.all(np.abs(draws.mean(0) - x.mean(0)) < 5 * per_pixel_error + 1e-12)


def test_binarize_is_jittable_and_keyed():
  x = _probabilities()
  key = jax.random.key(0)
  np.testing.assert_array_equal(jax.jit(data.binarize)(key, x), data.binarize(key, x))
  assert not np.array_equal(data.binarize(jax.random.key(2), x), data.binarize(key, x))


def test_quantize_gives_back_the_digits_levels_and_equal_width_bins():
  dataset = data.load_dataset("digits")
  levels = data.quantize(dataset.train, 17)  # digits: levels k / 16, k = 0..16
  np.testing.assert_array_equal(levels, np.rint(dataset.train * 16).astype(np.int32))
  assert levels.dtype == jnp.int32
  x = jnp.array([0.0, 0.2499, 0.25, 0.74, 0.75, 1.0])
  np.testing.assert_array_equal(data.quantize(x, 4), [0, 0, 1, 2, 3, 3])
  with pytest.raises(ValueError, match="num_categories must be >= 2"):
    data.quantize(x, 1)
