"""Estimator variance, measured per example (the design card's third use).

For a fixed set of examples and parameters, `gradient_moments` draws the
noise eps many times and accumulates, per example, the mean and variance of
the bound estimate and of every gradient coordinate (Welford's update inside
one `lax.scan`, so memory does not grow with the number of draws).
`summarize` reduces them to the figures a paper reports:

  bound_variance        Var[bound estimate], averaged over examples (nats^2)
  {part}_variance       trace of the gradient covariance, i.e. the sum of the
                        coordinate variances, for part = encoder, decoder, total
  {part}_snr            |E[g]| / sqrt(trace Cov[g]) per example, averaged: the
                        norm signal-to-noise ratio of the gradient
  {part}_parameter_snr  |E[g_i]| / std[g_i] averaged over the part's coordinates
                        (those that vary), then over examples: the SNR of
                        Rainforth et al. (ICML 2018), per parameter

Both SNRs are estimated from the draws' mean and variance, so a gradient of
zero mean reads as about 1 / sqrt(num_draws) (the mean of D draws has norm
about sqrt(trace Cov / D)): `snr_floor` gives that level, below which a
measured SNR says only "at most this".

`measure` repeats the whole measurement with independent noise and gives each
figure with a 95% confidence interval over the repetitions.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from vae_jax.inference.bounds import check_estimator, per_example_bound
from vae_jax.math import estimators
from vae_jax.models.functions import check_data
from vae_jax.models.vae import VAE

Array = jax.Array
Params = Any
# The networks of q (the encoder's part) and of p (the decoder's), of one
# stochastic layer or two (`vae_jax.models.vae.TwoLayerVAE`).
PARTS = {"encoder": ("encoder", "top_encoder"), "decoder": ("decoder", "top_decoder")}


@dataclasses.dataclass(frozen=True)
class Moments:
  """Per-example moments over draws of the noise.

  Attributes:
    bound_mean, bound_variance: [num_examples].
    gradient_mean, gradient_variance: pytrees like params, each leaf with a
      leading [num_examples] axis. Variances are unbiased (divide by n - 1).
    seconds_per_gradient: wall time of one per-example gradient (compiled,
      averaged over the draws and examples).
  """

  bound_mean: Array
  bound_variance: Array
  gradient_mean: Params
  gradient_variance: Params
  seconds_per_gradient: float


def make_gradient_moments(
  model: VAE,
  *,
  estimator: str,
  num_samples: int,
  num_draws: int,
  num_groups: int = 1,
  ciwae_beta: float | None = None,
):
  """Returns a jitted `moments(params, x, key) -> (mean, variance)`.

  Per example, over `num_draws` independent draws of eps [L, num_examples,
  noise_dim]: the mean and unbiased variance of (bound estimate, gradient), each
  a pair (bound [num_examples], gradient pytree with leading [num_examples]).

  Args:
    model: the VAE.
    estimator: a name of `vae_jax.math.estimators.ESTIMATOR_NAMES`.
    num_samples: L (k for "iwae").
    num_draws: >= 2.
    num_groups, ciwae_beta: the estimator's settings (`bounds.make_elbo`).
  """
  if num_draws < 2:
    raise ValueError(f"num_draws must be >= 2 to estimate a variance, got {num_draws}.")
  check_estimator(estimator, num_samples, num_groups, ciwae_beta)
  bound_and_gradient = jax.value_and_grad(
    per_example_bound(model, estimator, num_groups=num_groups, ciwae_beta=ciwae_beta)
  )

  def moments(params: Params, x: Array, key: Array):
    def draw(draw_key):
      eps = jax.random.normal(draw_key, (num_samples, x.shape[0], model.noise_dim))
      return estimators.over_batch(bound_and_gradient, params, x, eps)

    def welford(carry, draw_key):
      count, mean, m2 = carry
      sample = draw(draw_key)
      count = count + 1
      delta = jax.tree_util.tree_map(lambda s, m: s - m, sample, mean)
      mean = jax.tree_util.tree_map(lambda m, d: m + d / count, mean, delta)
      m2 = jax.tree_util.tree_map(lambda acc, d, s, m: acc + d * (s - m), m2, delta, sample, mean)
      return (count, mean, m2), None

    zeros = jax.tree_util.tree_map(jnp.zeros_like, jax.eval_shape(draw, key))
    (count, mean, m2), _ = jax.lax.scan(
      welford, (0.0, zeros, zeros), jax.random.split(key, num_draws)
    )
    return mean, jax.tree_util.tree_map(lambda acc: acc / (count - 1), m2)

  return jax.jit(moments)


def gradient_moments(
  model: VAE,
  params: Params,
  x: Array,
  keys: Array,
  *,
  estimator: str,
  num_samples: int,
  num_draws: int,
  **estimator_settings: Any,
) -> list[Moments]:
  """One `Moments` per key in `keys`, from one compiled program.

  Args:
    model, params: the VAE and its parameters.
    x: [num_examples, data_dim].
    keys: [num_repetitions] PRNG keys, one independent measurement each.
    estimator, num_samples, num_draws, estimator_settings: see
      `make_gradient_moments`.
  """
  check_data(x, model)
  moments = (
    make_gradient_moments(
      model,
      estimator=estimator,
      num_samples=num_samples,
      num_draws=num_draws,
      **estimator_settings,
    )
    .lower(params, x, keys[0])
    .compile()
  )
  results = []
  for key in keys:
    started = time.perf_counter()
    mean, variance = jax.block_until_ready(moments(params, x, key))
    seconds = time.perf_counter() - started
    results.append(
      Moments(
        bound_mean=mean[0],
        bound_variance=variance[0],
        gradient_mean=mean[1],
        gradient_variance=variance[1],
        seconds_per_gradient=seconds / (num_draws * x.shape[0]),
      )
    )
  return results


def _per_example_sum(tree: Params) -> Array:
  """Sums every coordinate of a pytree of [num_examples, ...] leaves -> [num_examples]."""
  return sum(
    jnp.sum(leaf.reshape(leaf.shape[0], -1), axis=1) for leaf in jax.tree_util.tree_leaves(tree)
  )


def summarize(moments: Moments) -> dict[str, float]:
  """The figures of the module docstring, for one measurement."""
  summary = {
    "bound_mean": float(jnp.mean(moments.bound_mean)),
    "bound_variance": float(jnp.mean(moments.bound_variance)),
    "seconds_per_gradient": moments.seconds_per_gradient,
  }
  parts = {
    part: tuple(
      [tree["params"][name] for name in modules if name in tree["params"]]
      for tree in (moments.gradient_mean, moments.gradient_variance)
    )
    for part, modules in PARTS.items()
  }
  parts["total"] = (moments.gradient_mean, moments.gradient_variance)
  for name, (mean, variance) in parts.items():
    trace = _per_example_sum(variance)
    squared_norm = _per_example_sum(jax.tree_util.tree_map(jnp.square, mean))
    summary[f"{name}_variance"] = float(jnp.mean(trace))
    summary[f"{name}_snr"] = float(jnp.mean(jnp.sqrt(squared_norm / trace)))
    summary[f"{name}_parameter_snr"] = float(jnp.mean(_mean_parameter_snr(mean, variance)))
  return summary


def _mean_parameter_snr(mean: Params, variance: Params) -> Array:
  """Per example, |E g_i| / std g_i averaged over the coordinates whose
  variance is positive (a coordinate that no draw moves, e.g. a dead unit's
  weight, has no ratio) -> [num_examples]."""
  means, variances = (
    jnp.concatenate(
      [leaf.reshape(leaf.shape[0], -1) for leaf in jax.tree_util.tree_leaves(tree)], 1
    )
    for tree in (mean, variance)
  )
  varies = variances > 0
  ratios = jnp.where(varies, jnp.abs(means) / jnp.sqrt(jnp.where(varies, variances, 1.0)), 0.0)
  return jnp.sum(ratios, axis=1) / jnp.sum(varies, axis=1)


def snr_floor(num_draws: int) -> dict[str, float]:
  """What each SNR of `summarize` reads for a gradient of zero mean, to
  leading order in 1 / num_draws: sqrt(1 / D) for the norm SNR (|mean of D
  draws|^2 has expectation trace Cov / D) and sqrt(2 / (pi D)) for the
  per-parameter one (E|N(0, 1 / D)|)."""
  return {"snr": math.sqrt(1 / num_draws), "parameter_snr": math.sqrt(2 / (math.pi * num_draws))}


def log_log_slope(
  sample_counts: Sequence[int],
  means: Sequence[float],
  half_widths: Sequence[float],
  num_repetitions: int,
  level: float = 0.95,
) -> tuple[float, float]:
  """The slope of log(figure) against log(L) and its half-width at `level`.

  A weighted least-squares line through (log L, log mean), each point's
  weight the inverse square of its log's standard error (the repetitions'
  standard error of the mean, `half_width / t`, divided by the mean: the
  delta method). The half-width is the slope's normal interval.
  """
  if len(sample_counts) < 2:
    raise ValueError(f"A slope needs at least two values of L, got {list(sample_counts)}.")
  t = stats.t.ppf(0.5 + level / 2, num_repetitions - 1)
  means = np.asarray(means, np.float64)
  log_errors = np.asarray(half_widths, np.float64) / t / means
  weights = 1.0 / np.square(log_errors)
  design = np.stack([np.ones(len(means)), np.log(np.asarray(sample_counts, np.float64))], axis=1)
  covariance = np.linalg.inv(design.T @ (weights[:, None] * design))
  slope = (covariance @ design.T @ (weights * np.log(means)))[1]
  return float(slope), float(stats.norm.ppf(0.5 + level / 2) * np.sqrt(covariance[1, 1]))


def confidence_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
  """(mean, half-width) of a Student-t interval over repetitions."""
  values = np.asarray(values, np.float64)
  if values.size < 2:
    return float(values.mean()), float("nan")
  half_width = stats.t.ppf(0.5 + level / 2, values.size - 1) * values.std(ddof=1)
  return float(values.mean()), float(half_width / np.sqrt(values.size))


def measure(
  model: VAE,
  params: Params,
  x: Array,
  key: Array,
  *,
  estimator: str,
  num_samples: int,
  num_draws: int,
  num_repetitions: int,
  **estimator_settings: Any,
) -> dict[str, tuple[float, float]]:
  """`summarize` over independent repetitions: figure -> (mean, 95% half-width).
  estimator_settings: `num_groups`, `ciwae_beta` (`make_gradient_moments`)."""
  summaries = [
    summarize(moments)
    for moments in gradient_moments(
      model,
      params,
      x,
      jax.random.split(key, num_repetitions),
      estimator=estimator,
      num_samples=num_samples,
      num_draws=num_draws,
      **estimator_settings,
    )
  ]
  return {name: confidence_interval([s[name] for s in summaries]) for name in summaries[0]}
