"""Pure functions of a `VAE`'s parameters: initialise, encode, decode, sample.

    model = vae_jax.make_vae(data_dim=784, latent_dim=20)
    params = vae_jax.init_params(model, jax.random.key(0))
    mean, logvar = vae_jax.encode(model, params, x)

Input checks on shapes and dtypes run at trace time; checks on values
(range, NaN) run whenever `x` is a concrete array, i.e. outside `jit`: call
`check_data` once on a data set before jitted training. `model_functions`
gives the pair of per-example functions that `vae_jax.math.estimators` works
with.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax.math import distributions, estimators, two_layers
from vae_jax.models.vae import VAE, TwoLayerVAE

Array = jax.Array
Params = Any


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
      f"x has data_dim {shape[1]} (shape {shape}) but the model expects data_dim {model.data_dim}."
    )
  if shape[0] < 1:
    raise ValueError(f"x has an empty batch axis: shape {shape}.")
  dtype = jnp.result_type(x)
  if model.likelihood == "categorical":
    if not jnp.issubdtype(dtype, jnp.integer):
      raise TypeError(f"Categorical data must be integer category indices, got dtype {dtype}.")
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
      raise ValueError(f"Bernoulli targets must lie in [0, 1], got values in [{low}, {high}].")


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
def sample(model: VAE, params: Params, key: Array, num_samples: int, *, mean: bool = True) -> Array:
  """Generates data from the model: z ~ p(z) (N(0, I); with two layers h2 ~
  N(0, I), then z = h1 ~ p(h1 | h2)), then x given z.

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
  z = model.apply(params, z_key, num_samples, method=type(model).sample_latent)
  if mean:
    return decode_mean(model, params, z)
  return model.apply(params, z, x_key, method=VAE.decode_sample)


def kl_divergence(model: VAE, params: Params, x: Array) -> Array:
  """KL(q_phi(z|x) || N(0, I)) in closed form: x [batch, data_dim] -> [batch] nats.

  One stochastic layer only: with two, p(h1) is no N(0, I), and
  KL(q(h1|x) || p(h1)) has no closed form.
  """
  if isinstance(model, TwoLayerVAE):
    raise ValueError(
      "kl_divergence is KL(q(z|x) || N(0, I)) of a one-layer VAE; a TwoLayerVAE's prior "
      "p(h1) has no closed-form KL: estimate the bound with make_elbo(model, 'A') instead."
    )
  mean, logvar = encode(model, params, x)
  return distributions.kl_standard_normal(mean, logvar)


def model_functions(
  model: VAE,
) -> tuple[estimators.EncodeFn, estimators.LogLikelihoodFn]:
  """The pair of pure functions `vae_jax.math.estimators` works with.

  Returns:
    encode_fn(params, x [data_dim]) -> (mean, logvar) [latent_dim] each, and
    log_likelihood_fn(params, x [data_dim], z [latent_dim]) -> scalar nats.
  """

  def encode_fn(params: Params, x: Array) -> tuple[Array, Array]:
    return model.apply(params, x, method=VAE.encode)

  def log_likelihood_fn(params: Params, x: Array, z: Array) -> Array:
    return model.apply(params, x, z, method=VAE.log_likelihood)

  return encode_fn, log_likelihood_fn


def two_layer_functions(model: TwoLayerVAE) -> two_layers.TwoLayerFunctions:
  """The per-example functions `vae_jax.math.two_layers` works with: q(h1|x),
  q(h2|h1), p(h1|h2) and log p(x|h1) of one example."""
  encode_fn, log_likelihood_fn = model_functions(model)

  def top_encode_fn(params: Params, h1: Array) -> tuple[Array, Array]:
    return model.apply(params, h1, method=TwoLayerVAE.top_encode)

  def top_decode_fn(params: Params, h2: Array) -> tuple[Array, Array]:
    return model.apply(params, h2, method=TwoLayerVAE.top_decode)

  return two_layers.TwoLayerFunctions(encode_fn, top_encode_fn, top_decode_fn, log_likelihood_fn)
