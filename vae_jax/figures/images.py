"""A model's outputs as images: data, samples, reconstructions, a 2-D manifold."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from vae_jax.figures import plots
from vae_jax.models.functions import decode_mean, encode, sample
from vae_jax.models.vae import VAE

MANIFOLD_GRID_SIZE = 20


def images(flat: np.ndarray, image_shape: tuple[int, int], model: VAE) -> np.ndarray:
  """Data or decoder means as intensities in [0, 1]: [N, height, width]. A
  Categorical model's values are levels in [0, K - 1], scaled by 1 / (K - 1)."""
  levels = model.decoder.num_categories - 1 if model.likelihood == "categorical" else 1
  intensities = np.asarray(flat, np.float32) / np.float32(levels)
  return np.clip(intensities, 0.0, 1.0).reshape(-1, *image_shape)


def sample_images(
  model: VAE, params: Any, key: jax.Array, num: int, image_shape: tuple[int, int]
) -> np.ndarray:
  """[num, height, width]: decoder means E[x|z] at z ~ N(0, I), clipped to [0, 1]."""
  return images(sample(model, params, key, num), image_shape, model)


def manifold_images(
  model: VAE,
  params: Any,
  image_shape: tuple[int, int],
  grid_size: int = MANIFOLD_GRID_SIZE,
) -> np.ndarray:
  """[grid_size**2, height, width]: decoder means over `plots.manifold_latents`
  (a model with J = 2), clipped to [0, 1]."""
  grid = plots.manifold_grid(lambda z: decode_mean(model, params, z), grid_size, image_shape)
  return images(grid, image_shape, model)


def reconstruction_images(
  model: VAE, params: Any, x: np.ndarray, image_shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
  """(x, E[x | z = encoder mean of x]) as images [n, height, width] in [0, 1]."""
  mean, _ = encode(model, params, x)
  return (
    images(x, image_shape, model),
    images(decode_mean(model, params, mean), image_shape, model),
  )
