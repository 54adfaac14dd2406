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

`measure` repeats the whole measurement with independent noise and gives each
figure with a 95% confidence interval over the repetitions.
"""

from __future__ import annotations

import dataclasses
import time
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


def make_gradient_moments(model: VAE, *, estimator: str, num_samples: int, num_draws: int):
  """Returns a jitted `moments(params, x, key) -> (mean, variance)`.

  Per example, over `num_draws` independent draws of eps [L, num_examples,
  noise_dim]: the mean and unbiased variance of (bound estimate, gradient), each
  a pair (bound [num_examples], gradient pytree with leading [num_examples]).

  Args:
    model: the VAE.
    estimator: a key of `vae_jax.estimators.ESTIMATORS`.
    num_samples: L (k for "iwae").
    num_draws: >= 2.
  """
  if num_draws < 2:
    raise ValueError(f"num_draws must be >= 2 to estimate a variance, got {num_draws}.")
  check_estimator(estimator, num_samples)
  bound_and_gradient = jax.value_and_grad(per_example_bound(model, estimator))

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
) -> list[Moments]:
  """One `Moments` per key in `keys`, from one compiled program.

  Args:
    model, params: the VAE and its parameters.
    x: [num_examples, data_dim].
    keys: [num_repetitions] PRNG keys, one independent measurement each.
    estimator, num_samples, num_draws: see `make_gradient_moments`.
  """
  check_data(x, model)
  moments = (
    make_gradient_moments(model, estimator=estimator, num_samples=num_samples, num_draws=num_draws)
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
  return summary


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
) -> dict[str, tuple[float, float]]:
  """`summarize` over independent repetitions: figure -> (mean, 95% half-width)."""
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
    )
  ]
  return {name: confidence_interval([s[name] for s in summaries]) for name in summaries[0]}
