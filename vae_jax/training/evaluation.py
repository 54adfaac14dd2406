"""Scoring a model on a whole data set inside one compiled program."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from vae_jax.data.transforms import binarize
from vae_jax.inference import bounds
from vae_jax.inference.bounds import map_in_batches
from vae_jax.math import posteriors
from vae_jax.models.vae import VAE

Array = jax.Array
Params = Any

# The evaluation data of a dynamically binarised set is binarised once, with
# this fixed key, so that runs with different seeds are scored on the same bits.
EVAL_BINARIZATION_SEED = 0


def make_evaluate(
  model: VAE,
  estimator: str = "B",
  num_samples: int = 1,
  batch_size: int = 1000,
  multi_run: bool = False,
  samples_per_pass: int = 100,
  posterior: posteriors.Posterior = posteriors.GAUSSIAN,
  rows_per_pass: int | None = None,
  num_groups: int = 1,
  ciwae_beta: float | None = None,
) -> Callable[[Params, Array, Array], Array]:
  """Returns a jitted `evaluate(params, data, key) -> [N]` bounds in nats.

  data: [N, data_dim]; one value per example, computed `batch_size` examples
  at a time inside one compiled program (the data is padded to whole
  batches and the padding dropped). With a fixed key the result is
  deterministic. Average it with `mean_nats`, which sums in float64.

  estimator "iwae" gives the importance-sampled log-likelihood estimate with
  k = `num_samples` (`vae_jax.make_log_likelihood_estimate`), drawn
  `samples_per_pass` at a time so that k = 5000 fits in memory; the other
  estimators draw their L samples in one pass. A pass holds at most
  `rows_per_pass` (example, sample) pairs: the batch shrinks to
  rows_per_pass // (samples per pass) examples (at least 1). Its default is
  `bounds.CPU_ROWS_PER_PASS` on a CPU (at L = 1, batches of 1000) and no
  limit on an accelerator, as for the public estimate, which on the same
  data and key the "iwae" evaluation equals. The batch, and so the key each
  example's samples are drawn from, depends on it: with a fixed key the
  result is deterministic for given settings. With
  `multi_run`, params have a leading [num_runs] axis and so does the
  result. `posterior` is the family of q(z|x); `num_groups` and
  `ciwae_beta` are the estimator's settings (`bounds.make_elbo`).
  """
  if estimator == "iwae":
    bound = bounds.make_log_likelihood_estimate(
      model, num_samples, samples_per_pass, posterior, rows_per_pass
    )
  else:
    # The other estimators draw all L samples in one pass.
    samples_per_pass = num_samples
    bound = bounds.make_elbo(
      model,
      estimator,
      num_samples,
      posterior=posterior,
      num_groups=num_groups,
      ciwae_beta=ciwae_beta,
    )
  examples_per_pass = bounds.examples_per_pass(num_samples, samples_per_pass, rows_per_pass)
  if examples_per_pass is not None:
    batch_size = min(batch_size, examples_per_pass)

  def evaluate(params: Params, data: Array, key: Array) -> Array:
    return map_in_batches(lambda x, k: bound(params, x, k), (data,), key, batch_size)

  if multi_run:
    evaluate = jax.vmap(evaluate, in_axes=(0, None, None))
  return jax.jit(evaluate)


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
