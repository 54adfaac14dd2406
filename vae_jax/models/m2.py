"""The networks of the semi-supervised VAE "M2" (Kingma, Rezende, Mohamed & Welling, 2014).

A discrete label y and a continuous style z generate x:

  p(y) = Cat(1/K),  p(z) = N(0, I),  p_theta(x | y, z) = Bernoulli(f(y, z));
  q_phi(y | x) = Cat(pi(x)) (the classifier),  q_phi(z | x, y) = N(mu(x, y), diag sigma^2(x, y)).

Its bounds and training objective are in `vae_jax.inference.semi_supervised`.
The networks follow the paper's MNIST M2: MLPs, each with its own hidden
layers; y enters the encoder and the decoder through their first layer,
act(W x + b + E[y]), with E a learned embedding (the same as a dense layer on
the one-hot y), so the K label-conditioned passes of U share the W x product.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from vae_jax.errors import ConfigError
from vae_jax.math import distributions
from vae_jax.models import vae as models

Array = jax.Array
Params = Any


class _ConditionedMLP(nn.Module):
  """Hidden layers whose first takes a label too: (inputs [..., in], y [...]
  int) -> [..., hidden_sizes[-1]]."""

  num_classes: int
  hidden_sizes: Sequence[int]
  activation: str
  init_scheme: str

  @nn.compact
  def __call__(self, inputs: Array, y: Array) -> Array:
    first, rest = self.hidden_sizes[0], self.hidden_sizes[1:]
    embedding_init = (
      nn.initializers.normal(stddev=models.PAPER_INIT_STDDEV)
      if self.init_scheme == "paper"
      else nn.initializers.lecun_normal()
    )
    pre_activation = models.dense(first, self.init_scheme, name="input")(inputs) + nn.Embed(
      self.num_classes, first, embedding_init=embedding_init, name="label"
    )(y)
    h = models.ACTIVATIONS[self.activation](pre_activation)
    if rest:
      h = models.MLP(rest, self.activation, self.init_scheme, name="mlp")(h)
    return h


class M2(nn.Module):
  """The classifier q(y|x), the encoder q(z|x,y) and the Bernoulli decoder
  p(x|y,z) of M2. Use through `model.apply(params, ..., method=M2.<name>)` or
  the pure functions of this module; `__call__` initialises all three."""

  data_dim: int
  num_classes: int
  latent_dim: int
  hidden_sizes: Sequence[int] = (500,)
  activation: str = "softplus"
  init_scheme: str = "paper"

  def setup(self):
    mlp = dict(activation=self.activation, init_scheme=self.init_scheme)
    self.classifier_mlp = models.MLP(self.hidden_sizes, name="classifier_mlp", **mlp)
    self.classifier_logits = models.dense(self.num_classes, self.init_scheme)
    self.encoder_mlp = _ConditionedMLP(self.num_classes, self.hidden_sizes, **mlp)
    self.encoder_mean = models.dense(self.latent_dim, self.init_scheme)
    self.encoder_logvar = models.dense(self.latent_dim, self.init_scheme)
    self.decoder_mlp = _ConditionedMLP(self.num_classes, self.hidden_sizes, **mlp)
    self.decoder_logits = models.dense(self.data_dim, self.init_scheme)

  def __call__(self, x: Array, y: Array) -> tuple[Array, Array]:
    """(classifier logits, decoder mean at the encoder mean): initialises every network."""
    mean, _ = self.encode(x, y)
    return self.classify(x), self.decode_mean(y, mean)

  def classify(self, x: Array) -> Array:
    """Logits of q(y | x): x [..., data_dim] -> [..., num_classes]."""
    return self.classifier_logits(self.classifier_mlp(x))

  def encode(self, x: Array, y: Array) -> tuple[Array, Array]:
    """q(z | x, y): x [..., data_dim], y [...] int -> (mean, logvar) [..., latent]."""
    h = self.encoder_mlp(x, y)
    return self.encoder_mean(h), self.encoder_logvar(h)

  def decoder_logits_of(self, y: Array, z: Array) -> Array:
    """Bernoulli logits of p(x | y, z): y [...] int, z [..., latent] -> [..., data_dim]."""
    return self.decoder_logits(self.decoder_mlp(z, y))

  def log_likelihood(self, x: Array, y: Array, z: Array) -> Array:
    """log p(x | y, z) in nats: x [..., data_dim] in [0, 1] -> [...]."""
    return distributions.bernoulli_log_prob(self.decoder_logits_of(y, z), x)

  def decode_mean(self, y: Array, z: Array) -> Array:
    """E[x | y, z]: [..., data_dim]."""
    return jax.nn.sigmoid(self.decoder_logits_of(y, z))


def make_m2(
  data_dim: int,
  num_classes: int,
  latent_dim: int,
  *,
  hidden_sizes: Sequence[int] = (500,),
  activation: str = "softplus",
  init: str = "paper",
) -> M2:
  """The M2 model; the paper's MNIST settings are latent_dim 50, one hidden
  layer of 500 softplus units per network."""
  models.check_positive_int("data_dim", data_dim)
  if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
    raise ConfigError("num_classes", f"num_classes must be an integer >= 2, got {num_classes!r}.")
  # The networks' settings are checked as a VAE's are.
  networks = models.ModelConfig(
    latent_dim=latent_dim, hidden_sizes=hidden_sizes, activation=activation, init=init
  )
  return M2(data_dim, num_classes, latent_dim, networks.hidden_sizes, activation, init)


@functools.partial(jax.jit, static_argnames="model")
def init_params(model: M2, key: Array) -> Params:
  """Fresh parameters of all three networks (compiled once per model)."""
  return model.init(key, jnp.zeros((1, model.data_dim)), jnp.zeros((1,), jnp.int32))


def classify(model: M2, params: Params, x: Array) -> Array:
  """Logits of q(y | x): x [batch, data_dim] -> [batch, num_classes]."""
  return model.apply(params, x, method=M2.classify)


def predict(model: M2, params: Params, x: Array) -> Array:
  """The most probable label under q(y | x): x [batch, data_dim] -> [batch] int32."""
  return jnp.argmax(classify(model, params, x), axis=-1).astype(jnp.int32)


def check_inputs(model: M2, x: Array, y: Array | None = None) -> None:
  chex.assert_rank(x, 2)
  if x.shape[1] != model.data_dim:
    raise ValueError(f"x has {x.shape[1]} features per example, the model {model.data_dim}.")
  if y is not None:
    chex.assert_shape(y, (x.shape[0],))
    if not jnp.issubdtype(y.dtype, jnp.integer):
      raise TypeError(f"labels y must be integers, got {y.dtype}.")


def style_transfer(model: M2, params: Params, x: Array) -> Array:
  """Each example's style, drawn in every class: [n, data_dim] -> [n, K, data_dim].

  The style is the mean of q(z | x, y) at the label the classifier gives x;
  row i, column k is E[x | y = k, z = style_i].
  """
  check_inputs(model, x)
  mean, _ = model.apply(params, x, predict(model, params, x), method=M2.encode)
  labels = jnp.arange(model.num_classes)
  return jax.vmap(
    lambda y: model.apply(params, jnp.full(x.shape[:1], y), mean, method=M2.decode_mean), out_axes=1
  )(labels)
