"""Pure, jit-able transforms applied to data batches inside the training step."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def binarize(key: jax.Array, x: jax.Array) -> jax.Array:
  """Dynamic binarisation: one Bernoulli draw per pixel.

  Drawing a fresh binary image at every step (rather than thresholding once)
  lets a Bernoulli decoder be trained on grey-level data such as `mnist`
  without the statically binarised data set overfitting to one sample.

  Args:
    key: PRNG key; a new key per step gives a new binarisation.
    x: [..., data_dim] pixel intensities in [0, 1], read as Bernoulli means.

  Returns:
    [..., data_dim] float32 array of 0.0 / 1.0 with E[result] = x.
  """
  return jax.random.bernoulli(key, x).astype(jnp.float32)


def quantize(x: jax.Array, num_categories: int) -> jax.Array:
  """Grey levels in [0, 1] -> category indices for a Categorical decoder.

  K = `num_categories` equal-width bins of [0, 1]: floor(x * K), with 1.0
  put in the top bin. For data with K evenly spaced levels l / (K - 1) (e.g.
  `digits` with K = 17) it gives back the integer levels l.

  Args:
    x: [..., data_dim] in [0, 1].
    num_categories: K >= 2.

  Returns:
    [..., data_dim] int32 in [0, K).
  """
  if num_categories < 2:
    raise ValueError(f"num_categories must be >= 2, got {num_categories}.")
  return jnp.minimum(jnp.floor(x * num_categories), num_categories - 1).astype(jnp.int32)
