"""The public entry points: pure functions of (params, x, key) for a `VAE`.

    model = vae_jax.make_vae(data_dim=784, latent_dim=20)
    params = vae_jax.init_params(model, jax.random.key(0))
    elbo = vae_jax.make_elbo(model, estimator="B", num_samples=1)
    bounds = elbo(params, x, key)            # [batch], nats per example

`elbo` is pure: `jax.jit`, `jax.grad` of its mean and `jax.vmap` over keys
all work on it. Input checks on shapes and dtypes run at trace time; checks
on values (range, NaN) run whenever `x` is a concrete array, i.e. outside
`jit` — call `check_data` once on a data set before jitted training.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax import distributions, estimators, posteriors, wake_sleep
from vae_jax.models import VAE

Array = jax.Array
Params = Any
ElboFn = Callable[[Params, Array, Array], Array]


def check_data(x: Any, model: VAE) -> None:
  """Raises a ValueError/TypeError naming what is wrong with a data batch.

  Args:
    x: [batch, data_dim]. Bernoulli data: floating, in [0, 1]. Gaussian:
      floating and finite. Categorical: integer in [0, num_categories).
    model: the VAE the data is for.

  Shape and dtype are checked always; values only if `x` is concrete (not a
  tracer inside `jit`/`grad`/`vmap` over x).
  """
  shape = jnp.shape(x)
  if len(shape) != 2:
    raise ValueError(
        f"x must have rank 2, [batch, data_dim], got shape {shape}; "
        "flatten images and add a batch axis."
    )
  if shape[1] != model.data_dim:
    raise ValueError(
        f"x has data_dim {shape[1]} (shape {shape}) but the model expects "
        f"data_dim {model.data_dim}."
    )
  if shape[0] < 1:
    raise ValueError(f"x has an empty batch axis: shape {shape}.")
  dtype = jnp.result_type(x)
  if model.likelihood == "categorical":
    if not jnp.issubdtype(dtype, jnp.integer):
      raise TypeError(
          f"Categorical data must be integer category indices, got dtype {dtype}."
      )
  elif not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(
        f"{model.likelihood.capitalize()} data must be floating point, got dtype "
        f"{dtype}; scale integer pixels to [0, 1] with x.astype(np.float32) / 255."
    )
  if isinstance(x, jax.core.Tracer):
    return
  values = np.asarray(x)
  if model.likelihood == "categorical":
    low, high = values.min(), values.max()
    if low < 0 or high >= model.decoder.num_categories:
      raise ValueError(
          f"Categorical targets must lie in [0, {model.decoder.num_categories}), "
          f"got values in [{low}, {high}]."
      )
    return
  if np.isnan(values).any():
    raise ValueError(f"x contains NaN ({int(np.isnan(values).sum())} entries).")
  if not np.isfinite(values).all():
    raise ValueError("x contains +-inf.")
  if model.likelihood == "bernoulli":
    low, high = values.min(), values.max()
    if low < 0.0 or high > 1.0:
      raise ValueError(
          f"Bernoulli targets must lie in [0, 1], got values in [{low}, {high}]."
      )


@functools.partial(jax.jit, static_argnames=("model", "method"))
def _apply(model: VAE, params: Params, *args: Array, method: Callable[..., Any]) -> Any:
  """`model.apply(params, *args, method=method)` as one compiled program per
  model, method and input shape: called eagerly, Flax would compile each
  operation on first use, seconds for the few calls that draw a run's figures."""
  return model.apply(params, *args, method=method)


@functools.partial(jax.jit, static_argnames="model")
def init_params(model: VAE, key: Array) -> Params:
  """Initialises encoder and decoder parameters: a Flax variables pytree
  (compiled once per model)."""
  dtype = jnp.int32 if model.likelihood == "categorical" else jnp.float32
  return model.init(key, jnp.zeros((1, model.data_dim), dtype))


def encode(model: VAE, params: Params, x: Array) -> tuple[Array, Array]:
  """q_phi(z|x): x [batch, data_dim] -> (mean, logvar), each [batch, latent_dim]."""
  check_data(x, model)
  return _apply(model, params, x, method=VAE.encode)


def decode(model: VAE, params: Params, z: Array) -> Any:
  """z [..., latent_dim] -> parameters of p_theta(x|z): logits [..., data_dim]
  (Bernoulli), (mean, logvar) (Gaussian) or logits [..., data_dim, K]."""
  return _apply(model, params, z, method=VAE.decode)


def decode_mean(model: VAE, params: Params, z: Array) -> Array:
  """E[x | z]: z [..., latent_dim] -> [..., data_dim] (for images and figures)."""
  return _apply(model, params, z, method=VAE.decode_mean)


@functools.partial(jax.jit, static_argnames=("model", "num_samples", "mean"))
def sample(
    model: VAE, params: Params, key: Array, num_samples: int, *, mean: bool = True
) -> Array:
  """Generates data from the model: z ~ N(0, I), then x given z.

  One compiled program per model, num_samples and mean.

  Args:
    model, params: the VAE.
    key: PRNG key.
    num_samples: how many examples.
    mean: return E[x|z] (what the paper's figures show) rather than a draw.

  Returns:
    [num_samples, data_dim].
  """
  z_key, x_key = jax.random.split(key)
  z = jax.random.normal(z_key, (num_samples, model.latent_dim))
  if mean:
    return decode_mean(model, params, z)
  return model.apply(params, z, x_key, method=VAE.decode_sample)


def kl_divergence(model: VAE, params: Params, x: Array) -> Array:
  """KL(q_phi(z|x) || N(0, I)) in closed form: x [batch, data_dim] -> [batch] nats."""
  mean, logvar = encode(model, params, x)
  return distributions.kl_standard_normal(mean, logvar)


def model_functions(
    model: VAE,
) -> tuple[estimators.EncodeFn, estimators.LogLikelihoodFn]:
  """The pair of pure functions `vae_jax.estimators` works with.

  Returns:
    encode_fn(params, x [data_dim]) -> (mean, logvar) [latent_dim] each, and
    log_likelihood_fn(params, x [data_dim], z [latent_dim]) -> scalar nats.
  """

  def encode_fn(params: Params, x: Array) -> tuple[Array, Array]:
    return model.apply(params, x, method=VAE.encode)

  def log_likelihood_fn(params: Params, x: Array, z: Array) -> Array:
    return model.apply(params, x, z, method=VAE.log_likelihood)

  return encode_fn, log_likelihood_fn


def check_estimator(estimator: str, num_samples: int) -> None:
  """Raises a ValueError/TypeError for an unknown estimator name or L < 1."""
  if estimator not in estimators.ESTIMATORS:
    raise ValueError(
        f"Unknown estimator {estimator!r}; choose one of "
        f"{sorted(estimators.ESTIMATORS)}."
    )
  check_num_samples(num_samples)


def check_num_samples(num_samples: int) -> None:
  """Raises a TypeError/ValueError unless L is an int >= 1."""
  if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)):
    raise TypeError(f"num_samples must be an int, got {num_samples!r}.")
  if num_samples < 1:
    raise ValueError(f"num_samples (L) must be >= 1, got {num_samples}.")


def check_kl_weight(kl_weight: float, estimator: str) -> None:
  """Raises a ValueError for beta < 0, or beta != 1 with an estimator that has
  no KL term to weight (see `estimators.KL_WEIGHTED_ESTIMATORS`)."""
  if not kl_weight >= 0:
    raise ValueError(f"kl_weight (--kl_weight) must be >= 0, got {kl_weight}.")
  if kl_weight != 1 and estimator not in estimators.KL_WEIGHTED_ESTIMATORS:
    raise ValueError(
        f"kl_weight (--kl_weight) = {kl_weight} is defined only for the estimators "
        f"{list(estimators.KL_WEIGHTED_ESTIMATORS)}, not {estimator!r}; use 1."
    )


def check_posterior(posterior: posteriors.Posterior, estimator: str) -> None:
  """Raises a ValueError for estimator B with a q family that has no
  closed-form KL to N(0, I)."""
  if estimator == "B" and not posterior.analytic_kl:
    raise ValueError(
        f"Estimator B needs KL(q || N(0, I)) in closed form, which the "
        f"{posterior.name!r} posterior (--posterior) lacks; use estimator A, iwae or "
        "stl, or the gaussian posterior."
    )


def make_elbo(
    model: VAE,
    estimator: str = "B",
    num_samples: int = 1,
    kl_weight: float = 1.0,
    posterior: posteriors.Posterior = posteriors.GAUSSIAN,
) -> ElboFn:
  """Returns `elbo(params, x, key) -> [batch]`, the per-example bound in nats.

  Args:
    model: a `VAE` (see `vae_jax.make_vae`).
    estimator: "A" (eq. 6), "B" (eq. 7), "iwae" (importance-weighted bound
      with k = num_samples), or one of A's variants that differ only in
      their gradients: "stl", "score", "score_baseline" (see
      `vae_jax.estimators`).
    num_samples: L >= 1, samples of z per example.
    kl_weight: beta >= 0 of the beta-VAE objective E_q log p(x|z) - beta KL,
      estimators "A" and "B" only; other than 1 the value is that training
      objective, not a bound.
    posterior: the family of q(z|x) (`vae_jax.posteriors`), whose location
      and log squared scale the encoder outputs; all but the Gaussian need
      an estimator other than "B".

  The returned function takes params (from `init_params`), x [batch,
  data_dim] and a PRNG key; it draws eps [L, batch, latent_dim] from the key
  and vmaps the per-example estimator over the batch and the decoder over L.
  """
  check_estimator(estimator, num_samples)
  check_kl_weight(kl_weight, estimator)
  check_posterior(posterior, estimator)
  per_example = estimators.ESTIMATORS[estimator]
  if kl_weight != 1:
    per_example = functools.partial(per_example, kl_weight=kl_weight)
  if posterior is not posteriors.GAUSSIAN:
    per_example = functools.partial(per_example, log_q=posterior.log_prob)
  encode_fn, log_likelihood_fn = model_functions(model)

  def elbo(params: Params, x: Array, key: Array) -> Array:
    check_data(x, model)
    eps = _posterior_noise(model, key, num_samples, x.shape[0], posterior)
    return estimators.batch_bound(
        per_example, encode_fn, log_likelihood_fn, params, x, eps
    )

  return elbo


def _posterior_noise(
    model: VAE, key: Array, num_samples: int, batch: int,
    posterior: posteriors.Posterior = posteriors.GAUSSIAN,
) -> Array:
  """eps [L, batch, latent_dim], the posterior family's standardised noise
  (N(0, I) for the Gaussian) that `make_elbo` draws from `key`."""
  return posterior.sample_noise(
      key, (num_samples, batch, model.latent_dim), jnp.result_type(float)
  )


def _largest_divisor_at_most(n: int, limit: int) -> int:
  return max(d for d in range(1, min(n, limit) + 1) if n % d == 0)


def make_log_likelihood_estimate(
    model: VAE, num_samples: int = 5000, samples_per_pass: int = 100,
    posterior: posteriors.Posterior = posteriors.GAUSSIAN,
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
  passes are combined by logsumexp again, which is exact.
  """
  check_estimator("iwae", num_samples)
  if samples_per_pass < 1:
    raise ValueError(f"samples_per_pass must be >= 1, got {samples_per_pass}.")
  per_pass = _largest_divisor_at_most(num_samples, samples_per_pass)
  num_passes = num_samples // per_pass
  pass_bound = make_elbo(model, "iwae", per_pass, posterior=posterior)

  def log_likelihood(params: Params, x: Array, key: Array) -> Array:
    keys = jax.random.split(key, num_passes)
    # iwae_bound(k') + log k' is the logsumexp of one pass's k' log-weights.
    pass_logsumexp = jax.lax.map(lambda k: pass_bound(params, x, k), keys)
    return jax.nn.logsumexp(pass_logsumexp, axis=0) + (
        np.log(per_pass) - np.log(num_samples)
    )

  return log_likelihood


def make_marginal_likelihood_estimate(
    model: VAE, num_samples: int = 50, num_leapfrog: int = 4, num_warmup: int = 100
) -> Callable[..., Array]:
  """Returns `estimate(params, x, key, z_init=None) -> [batch]`, log p(x) in nats.

  The AEVB paper's estimator (App. D, `vae_jax.marginal_likelihood`): per
  example, HMC on the exact posterior p_theta(z|x), a Gaussian fitted to
  `num_samples` draws, and `num_samples` further draws in a harmonic-mean
  estimate. It uses the decoder alone, so it also scores models trained
  without an encoder; it is reliable for latent_dim < 5. The chains start at
  z_init [batch, latent_dim], by default the encoder's mean.
  """
  check_num_samples(num_samples)
  if num_leapfrog < 1:
    raise ValueError(f"num_leapfrog must be >= 1, got {num_leapfrog}.")
  if num_warmup < 0:
    raise ValueError(f"num_warmup must be >= 0, got {num_warmup}.")
  # Imported here: it brings in blackjax, a third of a second that every
  # runner would otherwise pay at start-up without using it.
  from vae_jax import marginal_likelihood  # pylint: disable=g-import-not-at-top

  _, log_likelihood_fn = model_functions(model)
  per_example = functools.partial(
      marginal_likelihood.log_marginal_likelihood, log_likelihood_fn,
      num_samples=num_samples, num_leapfrog=num_leapfrog, num_warmup=num_warmup,
  )

  def estimate(params: Params, x: Array, key: Array, z_init: Array | None = None) -> Array:
    check_data(x, model)
    if z_init is None:
      z_init, _ = encode(model, params, x)
    keys = jax.random.split(key, x.shape[0])
    return jax.vmap(per_example, in_axes=(None, 0, 0, 0))(params, x, z_init, keys)

  return estimate


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
        lambda x_i: estimators.reconstruction_at_mean(
            encode_fn, log_likelihood_fn, params, x_i)
    )(x)

  return objective


def make_wake_sleep_objective(model: VAE, num_samples: int = 1) -> ElboFn:
  """Returns `objective(params, x, key) -> [batch]`, wake-sleep's surrogate.

  Ascending its mean is one wake-sleep update (`vae_jax.wake_sleep`): the
  decoder fits L posterior samples of each example, the encoder fits L
  dreams per example. Its value is not a bound; evaluate runs with
  `make_elbo`. The wake phase uses the same noise as `make_elbo` with the
  same key, so a bound reported beside it scores the same z (and XLA
  computes the shared encoder and decoder passes once).
  """
  check_num_samples(num_samples)
  encode_fn, log_likelihood_fn = model_functions(model)

  def sample_fn(params: Params, z: Array, key: Array) -> Array:
    return model.apply(params, z, key, method=VAE.decode_sample)

  def objective(params: Params, x: Array, key: Array) -> Array:
    check_data(x, model)
    eps = _posterior_noise(model, key, num_samples, x.shape[0])
    return wake_sleep.batch_wake_sleep_surrogate(
        encode_fn, log_likelihood_fn, sample_fn, params, x, eps,
        jax.random.fold_in(key, 1),
    )

  return objective
