"""Scoring a model on a whole data set inside one compiled program."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax.data.transforms import binarize
from vae_jax.inference import bounds
from vae_jax.math import posteriors
from vae_jax.models.vae import VAE

Array = jax.Array
Params = Any

# The evaluation data of a dynamically binarised set is binarised once, with
# this fixed key, so that runs with different seeds are scored on the same bits.
EVAL_BINARIZATION_SEED = 0
# On a CPU the importance-sampled estimate runs fastest when one pass's
# decoder outputs, [examples x samples, data_dim], stay in cache: passes of
# 1,000 rows ran 17% faster than passes of 10,000 on the 2-core machine
# (BUILD.md). An accelerator wants the opposite, as many rows as fit.
CPU_ROWS_PER_PASS = 1000


def make_evaluate(
  model: VAE,
  estimator: str = "B",
  num_samples: int = 1,
  batch_size: int = 1000,
  multi_run: bool = False,
  samples_per_pass: int = 100,
  posterior: posteriors.Posterior = posteriors.GAUSSIAN,
  rows_per_pass: int | None = None,
) -> Callable[[Params, Array, Array], Array]:
  """Returns a jitted `evaluate(params, data, key) -> [N]` bounds in nats.

  data: [N, data_dim]; one value per example, computed `batch_size` examples
  at a time inside one compiled program (the data is padded to whole
  batches and the padding dropped). With a fixed key the result is
  deterministic. Average it with `mean_nats`, which sums in float64.

  estimator "iwae" gives the importance-sampled log-likelihood estimate with
  k = `num_samples` (`api.make_log_likelihood_estimate`), drawn
  `samples_per_pass` at a time so that k = 5000 fits in memory, for at
  most `rows_per_pass` (example, sample) pairs per pass: the batch shrinks
  to rows_per_pass // (samples per pass) examples (at least 1). Its default
  is CPU_ROWS_PER_PASS on a CPU and no limit on an accelerator. The batch,
  and so the key each example's samples are drawn from, depends on it:
  with a fixed key the estimate is deterministic for given settings. With
  `multi_run`, params have a leading [num_runs] axis and so does the
  result. `posterior` is the family of q(z|x).
  """
  if estimator == "iwae":
    bound = bounds.make_log_likelihood_estimate(model, num_samples, samples_per_pass, posterior)
    if rows_per_pass is None and jax.default_backend() == "cpu":
      rows_per_pass = CPU_ROWS_PER_PASS
    if rows_per_pass is not None:
      per_pass = bounds.samples_in_each_pass(num_samples, samples_per_pass)
      batch_size = min(batch_size, max(1, rows_per_pass // per_pass))
  else:
    bound = bounds.make_elbo(model, estimator, num_samples, posterior=posterior)

  def evaluate(params: Params, data: Array, key: Array) -> Array:
    return map_in_batches(lambda x, k: bound(params, x, k), (data,), key, batch_size)

  if multi_run:
    evaluate = jax.vmap(evaluate, in_axes=(0, None, None))
  return jax.jit(evaluate)


def map_in_batches(
  fn: Callable[..., Any], arrays: tuple[Array, ...], key: Array, batch_size: int
) -> Any:
  """fn(*batches, key) over `arrays` [N, ...] in batches of `batch_size` rows,
  one `lax.map` (so one compiled loop, not N / batch_size programs).

  fn maps batches [size, ...] and a key to a pytree of [size, ...] arrays;
  the result is that pytree for all N rows. The arrays are padded to whole
  batches by repeating their first rows (so every input stays valid) and the
  padding's outputs dropped; each batch gets its own key from `key`.
  """
  num_examples = arrays[0].shape[0]
  size = min(batch_size, num_examples)
  num_batches = math.ceil(num_examples / size)
  padding = num_batches * size - num_examples

  def batched(a: Array) -> Array:
    padded = jnp.concatenate([a, a[:padding]]) if padding else a
    return padded.reshape(num_batches, size, *a.shape[1:])

  keys = jax.random.split(key, num_batches)
  outputs = jax.lax.map(lambda inputs: fn(*inputs), (*map(batched, arrays), keys))
  return jax.tree.map(lambda o: o.reshape(-1, *o.shape[2:])[:num_examples], outputs)


def mean_nats(bounds: Array) -> np.ndarray:
  """Mean over the last axis, summed in float64: [..., N] -> [...]."""
  return np.mean(np.asarray(bounds, np.float64), axis=-1)


def binarize_for_evaluation(sets: dict[str, Array]) -> dict[str, Array]:
  """Each grey-level evaluation set [N, data_dim] binarised once, with keys
  fixed by EVAL_BINARIZATION_SEED and the set's position: every run and
  every evaluation scores the same bits."""
  key = jax.random.key(EVAL_BINARIZATION_SEED)
  return {
    name: binarize(jax.random.fold_in(key, i), data) for i, (name, data) in enumerate(sets.items())
  }
