"""Bounds on log p(x) of a `VAE` as pure functions of (params, x, key).

    elbo = vae_jax.make_elbo(model, estimator="B", num_samples=1)
    bounds = elbo(params, x, key)            # [batch], nats per example

`elbo` is pure: `jax.jit`, `jax.grad` of its mean and `jax.vmap` over keys
all work on it. The per-example estimators are `vae_jax.math.estimators`';
here they are bound to a Flax model and vmapped over the batch.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax.errors import ConfigError
from vae_jax.math import estimators, posteriors, two_layers
from vae_jax.models.functions import check_data, model_functions, two_layer_functions
from vae_jax.models.vae import VAE, TwoLayerVAE

Array = jax.Array
Params = Any
ElboFn = Callable[[Params, Array, Array], Array]


def check_estimator(
  estimator: str, num_samples: int, num_groups: int = 1, ciwae_beta: float | None = None
) -> None:
  """Raises a ConfigError/TypeError for an unknown estimator name, L < 1, or
  settings the estimator does not take or cannot use with L samples (see
  `estimators.make_estimator`)."""
  estimators.make_estimator(estimator, num_groups, ciwae_beta)
  check_num_samples(num_samples)
  estimators.check_group_size(num_samples, num_groups)


def check_num_samples(num_samples: int) -> None:
  """Raises a TypeError/ConfigError unless L is an int >= 1."""
  if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)):
    raise TypeError(f"num_samples must be an int, got {num_samples!r}.")
  if num_samples < 1:
    raise ConfigError("num_samples", f"num_samples (L) must be >= 1, got {num_samples}.")


def check_kl_weight(kl_weight: float, estimator: str) -> None:
  """Raises a ConfigError for beta < 0, or beta != 1 with an estimator that has
  no KL term to weight (see `estimators.KL_WEIGHTED_ESTIMATORS`)."""
  if not kl_weight >= 0:
    raise ConfigError("kl_weight", f"kl_weight must be >= 0, got {kl_weight}.")
  if kl_weight != 1 and estimator not in estimators.KL_WEIGHTED_ESTIMATORS:
    raise ConfigError(
      "kl_weight",
      f"kl_weight = {kl_weight} is defined only for the estimators "
      f"{list(estimators.KL_WEIGHTED_ESTIMATORS)}, not {estimator!r}; use 1.",
    )


def check_posterior(posterior: posteriors.Posterior, estimator: str) -> None:
  """Raises a ConfigError for estimator B with a q family that has no
  closed-form KL to N(0, I)."""
  if estimator == "B" and not posterior.analytic_kl:
    raise ConfigError(
      "posterior",
      f"Estimator B needs KL(q || N(0, I)) in closed form, which the "
      f"{posterior.name!r} posterior lacks; use estimator A, iwae or "
      "stl, or the gaussian posterior.",
    )


def make_elbo(
  model: VAE,
  estimator: str = "B",
  num_samples: int = 1,
  kl_weight: float = 1.0,
  posterior: posteriors.Posterior = posteriors.GAUSSIAN,
  num_groups: int = 1,
  ciwae_beta: float | None = None,
) -> ElboFn:
  """Returns `elbo(params, x, key) -> [batch]`, the per-example bound in nats.

  Args:
    model: a `VAE` (see `vae_jax.make_vae`), or a `TwoLayerVAE`, for which
      estimators A, iwae, stl, score and score_baseline are defined
      (`vae_jax.math.two_layers`), with kl_weight 1 and the Gaussian q.
    estimator: "A" (eq. 6), "B" (eq. 7), "iwae" (importance-weighted bound
      with k = num_samples), one of A's variants that differ only in their
      gradients ("stl", "score", "score_baseline"), one of IWAE's ("dreg",
      "iwae_stl", "rws", "rws_dreg"), or one of the objectives of Rainforth
      et al. ("miwae", "ciwae", "piwae"); see `vae_jax.math.estimators`.
    num_samples: L >= 1, samples of z per example.
    kl_weight: beta >= 0 of the beta-VAE objective E_q log p(x|z) - beta KL,
      estimators "A" and "B" only; other than 1 the value is that training
      objective, not a bound.
    posterior: the family of q(z|x) (`vae_jax.math.posteriors`), whose location
      and log squared scale the encoder outputs; all but the Gaussian need
      an estimator other than "B".
    num_groups: M of "miwae" and "piwae", which split the L samples into M
      groups of K = L / M; 1 for the others.
    ciwae_beta: "ciwae"'s weight of the ELBO, in [0, 1]; None for the others.

  The returned function takes params (from `init_params`), x [batch,
  data_dim] and a PRNG key; it draws eps [L, batch, noise_dim] from the key
  and vmaps the per-example estimator over the batch and the decoder over L.
  """
  check_estimator(estimator, num_samples, num_groups, ciwae_beta)
  per_example = per_example_bound(model, estimator, kl_weight, posterior, num_groups, ciwae_beta)

  def elbo(params: Params, x: Array, key: Array) -> Array:
    check_data(x, model)
    eps = posterior_noise(model, key, num_samples, x.shape[0], posterior)
    return estimators.over_batch(per_example, params, x, eps)

  return elbo


def per_example_bound(
  model: VAE,
  estimator: str,
  kl_weight: float = 1.0,
  posterior: posteriors.Posterior = posteriors.GAUSSIAN,
  num_groups: int = 1,
  ciwae_beta: float | None = None,
) -> Callable[[Params, Array, Array], Array]:
  """`bound(params, x [data_dim], eps [L, noise_dim]) -> scalar`: the
  estimator bound to the model for one example (`vae_jax.math.estimators`,
  or `vae_jax.math.two_layers` for a `TwoLayerVAE`), checked as
  `make_elbo` documents."""
  if isinstance(model, TwoLayerVAE):
    check_two_layer_settings(estimator, kl_weight, posterior)
    functions = two_layer_functions(model)
    two_layer_estimator = two_layers.ESTIMATORS[estimator]
    return lambda params, x, eps: two_layer_estimator(functions, params, x, eps)
  check_kl_weight(kl_weight, estimator)
  check_posterior(posterior, estimator)
  per_example = estimators.make_estimator(estimator, num_groups, ciwae_beta)
  if kl_weight != 1:
    per_example = functools.partial(per_example, kl_weight=kl_weight)
  if posterior is not posteriors.GAUSSIAN:
    per_example = functools.partial(per_example, log_q=posterior.log_prob)
  encode_fn, log_likelihood_fn = model_functions(model)
  return lambda params, x, eps: per_example(encode_fn, log_likelihood_fn, params, x, eps)


def check_two_layer_settings(
  estimator: str, kl_weight: float, posterior: posteriors.Posterior
) -> None:
  """Raises a ConfigError for what two stochastic layers do not define:
  estimator B (no closed-form KL to p(h1)), the estimators written for one
  layer only, a KL weight, another q family."""
  if estimator == "B":
    raise ConfigError(
      "estimator",
      "Estimator 'B' needs KL(q(z|x) || p(z)) in closed form, which two stochastic "
      "layers lack (p(h1) is the marginal of p(h1|h2) p(h2)); choose one of "
      f"{sorted(two_layers.ESTIMATORS)}.",
    )
  if estimator not in two_layers.ESTIMATORS:
    raise ConfigError(
      "estimator",
      f"Estimator {estimator!r} is written for one stochastic layer; with two, choose one "
      f"of {sorted(two_layers.ESTIMATORS)}.",
    )
  if kl_weight != 1:
    raise ConfigError(
      "kl_weight", f"kl_weight = {kl_weight} is for one stochastic layer only; use 1."
    )
  if posterior is not posteriors.GAUSSIAN:
    raise ConfigError(
      "posterior",
      f"Two stochastic layers have Gaussian q's only, not the {posterior.name!r} posterior.",
    )


def posterior_noise(
  model: VAE,
  key: Array,
  num_samples: int,
  batch: int,
  posterior: posteriors.Posterior = posteriors.GAUSSIAN,
) -> Array:
  """eps [L, batch, noise_dim], the posterior family's standardised noise
  (N(0, I) for the Gaussian) that `make_elbo` draws from `key` (noise_dim:
  latent_dim, or J1 + J2 for two stochastic layers)."""
  return posterior.sample_noise(key, (num_samples, batch, model.noise_dim), jnp.result_type(float))


# On a CPU the importance-sampled estimate runs fastest when one pass's
# decoder outputs, [examples x samples, data_dim], stay in cache: passes of
# 1,000 rows ran 17% faster than passes of 10,000 on the 2-core machine
# (BUILD.md). An accelerator wants the opposite, as many rows as fit.
CPU_ROWS_PER_PASS = 1000


def examples_per_pass(
  num_samples: int, samples_per_pass: int, rows_per_pass: int | None = None
) -> int | None:
  """How many examples one pass of the k-sample estimate takes at most, so
  that it holds at most rows_per_pass (example, sample) pairs: at least 1,
  None for no limit. rows_per_pass None: CPU_ROWS_PER_PASS on a CPU, no
  limit on an accelerator."""
  if rows_per_pass is None:
    if jax.default_backend() != "cpu":
      return None
    rows_per_pass = CPU_ROWS_PER_PASS
  if rows_per_pass < 1:
    raise ConfigError("rows_per_pass", f"rows_per_pass must be >= 1, got {rows_per_pass}.")
  return max(1, rows_per_pass // samples_in_each_pass(num_samples, samples_per_pass))


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


def samples_in_each_pass(num_samples: int, samples_per_pass: int) -> int:
  """How many of k = num_samples draws `make_log_likelihood_estimate` takes
  per pass: the largest divisor of k not above samples_per_pass."""
  return max(d for d in range(1, min(num_samples, samples_per_pass) + 1) if num_samples % d == 0)


def make_log_likelihood_estimate(
  model: VAE,
  num_samples: int = 5000,
  samples_per_pass: int = 100,
  posterior: posteriors.Posterior = posteriors.GAUSSIAN,
  rows_per_pass: int | None = None,
) -> ElboFn:
  """Returns `log_likelihood(params, x, key) -> [batch]`, log p(x) in nats.

  The importance-sampled estimate with q(z|x) as proposal,
  log (1/k) sum_k p(x, z_k) / q(z_k|x) over k = `num_samples` draws: the
  standard test metric (k = 5000 in Burda et al., 2016). It is the IWAE
  bound at k, so it is a stochastic lower bound on log p(x) that tightens as
  k grows.

  The k draws are taken `samples_per_pass` at a time (the largest divisor of
  k not above it), so memory is that of `samples_per_pass` decoder passes
  over the batch, [samples_per_pass, batch, data_dim], whatever k is; each
  pass's log-weights are reduced by logsumexp before the next, and the
  passes are combined by logsumexp again, which is exact. A pass holds at
  most `rows_per_pass` (example, sample) pairs (`examples_per_pass`; by
  default CPU_ROWS_PER_PASS on a CPU, where such passes stay in cache, and
  no limit on an accelerator): a larger batch is estimated that many
  examples at a time (`map_in_batches`, each with its own key), as the
  runner's evaluation does, which on the same data and key it equals.
  """
  check_estimator("iwae", num_samples)
  if samples_per_pass < 1:
    raise ConfigError("samples_per_pass", f"samples_per_pass must be >= 1, got {samples_per_pass}.")
  per_pass = samples_in_each_pass(num_samples, samples_per_pass)
  num_passes = num_samples // per_pass
  pass_bound = make_elbo(model, "iwae", per_pass, posterior=posterior)
  examples = examples_per_pass(num_samples, samples_per_pass, rows_per_pass)

  def all_passes(params: Params, x: Array, key: Array) -> Array:
    keys = jax.random.split(key, num_passes)
    # iwae_bound(k') + log k' is the logsumexp of one pass's k' log-weights.
    pass_logsumexp = jax.lax.map(lambda k: pass_bound(params, x, k), keys)
    return jax.nn.logsumexp(pass_logsumexp, axis=0) + (np.log(per_pass) - np.log(num_samples))

  def log_likelihood(params: Params, x: Array, key: Array) -> Array:
    if examples is None or x.shape[0] <= examples:
      return all_passes(params, x, key)
    check_data(x, model)  # before the batches, so that an error names the whole x
    return map_in_batches(lambda batch, k: all_passes(params, batch, k), (x,), key, examples)

  return log_likelihood


def make_autoencoder_objective(model: VAE) -> ElboFn:
  """Returns `objective(params, x, key) -> [batch]`, log p(x | z = mean(x)).

  The deterministic autoencoder baseline (`estimators.reconstruction_at_mean`):
  ascending its mean trains the encoder mean and the decoder with no noise
  and no KL. It is not a bound; the key is unused and kept so that it has
  `make_elbo`'s signature. Evaluate such a model with `make_elbo`: it is
  still a VAE, so its ELBO is defined, though its q variance is untrained.
  """
  encode_fn, log_likelihood_fn = model_functions(model)

  def objective(params: Params, x: Array, key: Array) -> Array:
    del key
    check_data(x, model)
    return jax.vmap(
      lambda x_i: estimators.reconstruction_at_mean(encode_fn, log_likelihood_fn, params, x_i)
    )(x)

  return objective
