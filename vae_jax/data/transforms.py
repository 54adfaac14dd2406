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
