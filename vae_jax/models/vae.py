"""Flax (linen) encoders and decoders of the AEVB paper (its Appendix C).

Every module works on any leading shape: `x: [..., data_dim]`,
`z: [..., latent_dim]`. The likelihood math lives in `vae_jax.math.distributions`;
here the decoders only map z to the parameters of p_theta(x | z).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vae_jax.errors import ConfigError
from vae_jax.math import distributions

Array = jax.Array

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
  "tanh": jnp.tanh,
  "relu": jax.nn.relu,
  "softplus": jax.nn.softplus,
  "elu": jax.nn.elu,
  "gelu": jax.nn.gelu,
  "sigmoid": jax.nn.sigmoid,
}
INITIALIZATIONS = ("paper", "flax", "glorot")
LIKELIHOODS = ("bernoulli", "gaussian", "categorical")
VARIANCE_HEADS = ("logvar", "log_std")
DECODER_BIASES = ("init", "data_mean")
STOCHASTIC_LAYERS = (1, 2)
# The IWAE code clips the training set's mean pixel to this range before
# taking its logit for the initial output bias (`logits_bias_from_data`).
DATA_MEAN_CLIP = 0.001
# The paper samples every parameter from N(0, 0.01^2) (Sec. 5).
PAPER_INIT_STDDEV = 0.01


def check_choice(name: str, value: str, choices: Sequence[str]) -> None:
  """Raises a ConfigError naming `name` unless value is one of `choices`."""
  if value not in choices:
    raise ConfigError(name, f"Unknown {name} {value!r}; choose one of {sorted(choices)}.")


def check_positive_int(name: str, value: int) -> None:
  """Raises a ConfigError naming `name` unless value is a positive int."""
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ConfigError(name, f"{name} must be a positive integer, got {value!r}.")


def check_hidden_sizes(hidden_sizes: Sequence[int], name: str = "hidden_sizes") -> None:
  """Raises a ConfigError naming `name` unless hidden_sizes is a non-empty
  sequence of positive ints."""
  if not hidden_sizes or any(not isinstance(width, int) or width < 1 for width in hidden_sizes):
    raise ConfigError(
      name, f"{name} must be a non-empty sequence of positive integers, got {hidden_sizes!r}."
    )


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """The networks of a VAE, apart from the data's size (see `make_vae`).

  Attributes:
    latent_dim: J, the number of latent dimensions.
    hidden_sizes: widths of the hidden layers of both encoder and decoder
      (the paper: (500,) for MNIST, (200,) for Frey Face).
    activation: one of `ACTIVATIONS` (the paper: tanh).
    init: "paper" (every weight and bias from N(0, 0.01^2)), "glorot"
      (Glorot & Bengio's uniform kernels, zero biases; the IWAE paper) or
      "flax" (LeCun-normal kernels, zero biases).
    likelihood: "bernoulli" (binary or [0, 1] data), "gaussian" (real data,
      e.g. Frey Face) or "categorical" (integers in [0, num_categories)).
    num_categories: K, required for and only for the categorical likelihood.
    min_variance: Gaussian decoder only: variance floor.
    sigmoid_mean: Gaussian decoder only: squash the mean into (0, 1).
    encoder_variance: what q's second head outputs, "logvar" (log sigma^2)
      or "log_std" (log sigma, the IWAE code's sigma = exp(linear(h))); see
      `GaussianEncoder`. With two stochastic layers, the head of all three
      Gaussian networks (q(h1|x), q(h2|h1) and p(h1|h2)), as in the IWAE code.
    decoder_bias: Bernoulli decoder only: the output bias starts as the init
      scheme says ("init") or at the logit of the training set's mean pixel
      ("data_mean", the IWAE code's; `vae_from_config` needs the data then).
    stochastic_layers: 1 (a `VAE`) or 2 (a `TwoLayerVAE`: latent_dim is then
      h1's size, the layer next to x, and the top layer h2 has
      top_latent_dim units, reached from h1 through top_hidden_sizes).
    top_latent_dim, top_hidden_sizes: two stochastic layers only; the IWAE
      paper's 50 and (100, 100).
  """

  latent_dim: int = 20
  hidden_sizes: tuple[int, ...] = (500,)
  activation: str = "tanh"
  init: str = "paper"
  likelihood: str = "bernoulli"
  num_categories: int | None = None
  min_variance: float = 0.0
  sigmoid_mean: bool = True
  encoder_variance: str = "logvar"
  decoder_bias: str = "init"
  stochastic_layers: int = 1
  top_latent_dim: int = 50
  top_hidden_sizes: tuple[int, ...] = (100, 100)

  def __post_init__(self):
    check_positive_int("latent_dim", self.latent_dim)
    check_hidden_sizes(self.hidden_sizes)
    object.__setattr__(self, "hidden_sizes", tuple(self.hidden_sizes))
    check_choice("stochastic_layers", self.stochastic_layers, STOCHASTIC_LAYERS)
    check_positive_int("top_latent_dim", self.top_latent_dim)
    check_hidden_sizes(self.top_hidden_sizes, "top_hidden_sizes")
    object.__setattr__(self, "top_hidden_sizes", tuple(self.top_hidden_sizes))
    check_choice("likelihood", self.likelihood, LIKELIHOODS)
    check_choice("activation", self.activation, tuple(ACTIVATIONS))
    check_choice("init", self.init, INITIALIZATIONS)
    check_choice("encoder_variance", self.encoder_variance, VARIANCE_HEADS)
    check_choice("decoder_bias", self.decoder_bias, DECODER_BIASES)
    if self.decoder_bias != "init" and self.likelihood != "bernoulli":
      raise ConfigError(
        "decoder_bias",
        f"decoder_bias={self.decoder_bias!r} is for the Bernoulli likelihood only, "
        f"not {self.likelihood!r}.",
      )
    if (self.likelihood == "categorical") != (self.num_categories is not None):
      raise ConfigError(
        "num_categories",
        "num_categories is required for the categorical likelihood and only for it; got "
        f"likelihood={self.likelihood!r}, num_categories={self.num_categories!r}.",
      )
    if self.num_categories is not None and self.num_categories < 2:
      raise ConfigError(
        "num_categories", f"num_categories must be >= 2, got {self.num_categories}."
      )
    if not self.min_variance >= 0.0:
      raise ConfigError("min_variance", f"min_variance must be >= 0, got {self.min_variance}.")


def dense(
  features: int, init_scheme: str, name: str | None = None, bias: Sequence[float] | None = None
) -> nn.Dense:
  """A dense layer with the paper's, Glorot & Bengio's or Flax's default
  initialisation; `bias`, if given, is the initial bias instead."""
  inits = {}
  if init_scheme == "paper":
    initializer = nn.initializers.normal(stddev=PAPER_INIT_STDDEV)
    inits = {"kernel_init": initializer, "bias_init": initializer}
  elif init_scheme == "glorot":
    # The IWAE paper's heuristic (Glorot & Bengio 2010): U(-a, a) with
    # a = sqrt(6 / (fan_in + fan_out)); Flax's Dense biases start at zero.
    inits = {"kernel_init": nn.initializers.glorot_uniform()}
  if bias is not None:
    inits["bias_init"] = lambda key, shape, dtype: jnp.asarray(bias, dtype).reshape(shape)
  return nn.Dense(features, name=name, **inits)


class MLP(nn.Module):
  """Hidden layers of a given width and activation. [..., in] -> [..., hidden_sizes[-1]]."""

  hidden_sizes: Sequence[int]
  activation: str = "tanh"
  init_scheme: str = "paper"

  @nn.compact
  def __call__(self, inputs: Array) -> Array:
    activation = ACTIVATIONS[self.activation]
    h = inputs
    for i, width in enumerate(self.hidden_sizes):
      h = activation(dense(width, self.init_scheme, name=f"hidden_{i}")(h))
    return h


class GaussianEncoder(nn.Module):
  """q_phi(z | x) = N(mean(x), diag exp(logvar(x))) from an MLP (App. C.2).

  `variance_head` names what the second linear head outputs (and its
  parameters): "logvar", log sigma^2, or "log_std", log sigma as in the IWAE
  code, doubled here into logvar. Both give the same family of q; they
  differ in optimisation: a step of Adam, whose size does not depend on the
  gradient's scale, moves a log_std head's log sigma^2 twice as far, and
  its initial log sigma^2 is twice as spread.

  __call__: x [..., data_dim] (float) -> (mean, logvar), each [..., latent_dim].
  """

  latent_dim: int
  hidden_sizes: Sequence[int] = (500,)
  activation: str = "tanh"
  init_scheme: str = "paper"
  variance_head: str = "logvar"

  @nn.compact
  def __call__(self, x: Array) -> tuple[Array, Array]:
    h = MLP(self.hidden_sizes, self.activation, self.init_scheme, name="mlp")(x)
    mean_head = dense(self.latent_dim, self.init_scheme, name="mean")
    variance_head = dense(self.latent_dim, self.init_scheme, name=self.variance_head)
    if self.is_initializing():
      mean, variance_output = mean_head(h), variance_head(h)
    else:
      # The two heads as one [hidden, 2 J] product: at small minibatches half
      # the products cost less than the copy of their kernels (BUILD.md).
      params = self.variables["params"]
      heads = (params["mean"], params[self.variance_head])
      kernel = jnp.concatenate([head["kernel"] for head in heads], axis=1)
      bias = jnp.concatenate([head["bias"] for head in heads])
      mean, variance_output = jnp.split(h @ kernel + bias, 2, axis=-1)
    if self.variance_head == "log_std":
      return mean, 2.0 * variance_output
    return mean, variance_output


class BernoulliDecoder(nn.Module):
  """p_theta(x | z) = prod_d Bernoulli(x_d; sigmoid(logits_d(z))) (App. C.1).

  `initial_logits_bias` [data_dim], if set, is where the output bias starts
  (`logits_bias_from_data`), instead of the init scheme's.

  __call__: z [..., latent_dim] -> logits [..., data_dim].
  """

  data_dim: int
  hidden_sizes: Sequence[int] = (500,)
  activation: str = "tanh"
  init_scheme: str = "paper"
  initial_logits_bias: tuple[float, ...] | None = None

  likelihood = "bernoulli"

  @nn.compact
  def __call__(self, z: Array) -> Array:
    h = MLP(self.hidden_sizes, self.activation, self.init_scheme, name="mlp")(z)
    return dense(self.data_dim, self.init_scheme, "logits", self.initial_logits_bias)(h)

  def log_prob(self, z: Array, x: Array) -> Array:
    """log p(x | z): z [..., latent], x [..., data_dim] in [0, 1] -> [...]."""
    return distributions.bernoulli_log_prob(self(z), x)

  def mean(self, z: Array) -> Array:
    """E[x | z] = sigmoid(logits): [..., data_dim]."""
    return jax.nn.sigmoid(self(z))

  def sample(self, z: Array, key: Array) -> Array:
    """x ~ p(x | z) as float32 0/1: [..., data_dim]."""
    return jax.random.bernoulli(key, self.mean(z)).astype(jnp.float32)


class GaussianDecoder(nn.Module):
  """p_theta(x | z) = N(mean(z), diag exp(logvar(z))) (App. C.2).

  The paper squashes the mean through a sigmoid for Frey Face, whose pixels
  are scaled to [0, 1]; `sigmoid_mean=False` gives an unconstrained mean.
  `min_variance > 0` floors the variance (var = exp(raw) + min_variance),
  which stops the likelihood from diverging on near-constant pixels.

  __call__: z [..., latent_dim] -> (mean, logvar), each [..., data_dim].
  """

  data_dim: int
  hidden_sizes: Sequence[int] = (200,)
  activation: str = "tanh"
  init_scheme: str = "paper"
  sigmoid_mean: bool = True
  min_variance: float = 0.0

  likelihood = "gaussian"

  @nn.compact
  def __call__(self, z: Array) -> tuple[Array, Array]:
    h = MLP(self.hidden_sizes, self.activation, self.init_scheme, name="mlp")(z)
    mean = dense(self.data_dim, self.init_scheme, name="mean")(h)
    if self.sigmoid_mean:
      mean = jax.nn.sigmoid(mean)
    logvar = dense(self.data_dim, self.init_scheme, name="logvar")(h)
    if self.min_variance > 0.0:
      logvar = jnp.logaddexp(logvar, math.log(self.min_variance))
    return mean, logvar

  def log_prob(self, z: Array, x: Array) -> Array:
    """log p(x | z): z [..., latent], x [..., data_dim] real -> [...]."""
    mean, logvar = self(z)
    return distributions.gaussian_log_prob(mean, logvar, x)

  def mean(self, z: Array) -> Array:
    """E[x | z]: [..., data_dim]."""
    return self(z)[0]

  def sample(self, z: Array, key: Array) -> Array:
    """x ~ p(x | z): [..., data_dim]."""
    mean, logvar = self(z)
    return distributions.reparameterize(
      mean, logvar, jax.random.normal(key, mean.shape, mean.dtype)
    )


class CategoricalDecoder(nn.Module):
  """p_theta(x | z) = prod_d Categorical(x_d; softmax(logits_d(z))).

  For discrete data with values in [0, num_categories), e.g. quantised grey
  levels. __call__: z [..., latent] -> logits [..., data_dim, num_categories].
  """

  data_dim: int
  num_categories: int
  hidden_sizes: Sequence[int] = (500,)
  activation: str = "tanh"
  init_scheme: str = "paper"

  likelihood = "categorical"

  @nn.compact
  def __call__(self, z: Array) -> Array:
    h = MLP(self.hidden_sizes, self.activation, self.init_scheme, name="mlp")(z)
    logits = dense(self.data_dim * self.num_categories, self.init_scheme, name="logits")(h)
    return logits.reshape(*logits.shape[:-1], self.data_dim, self.num_categories)

  def log_prob(self, z: Array, x: Array) -> Array:
    """log p(x | z): z [..., latent], x [..., data_dim] integer -> [...]."""
    return distributions.categorical_log_prob(self(z), x)

  def mean(self, z: Array) -> Array:
    """E[x | z] = sum_k k * p_k: [..., data_dim] float."""
    probs = jax.nn.softmax(self(z), axis=-1)
    return probs @ jnp.arange(self.num_categories, dtype=probs.dtype)

  def sample(self, z: Array, key: Array) -> Array:
    """x ~ p(x | z) as int32: [..., data_dim]."""
    return jax.random.categorical(key, self(z), axis=-1)


Decoder = BernoulliDecoder | GaussianDecoder | CategoricalDecoder


class VAE(nn.Module):
  """An encoder q_phi(z|x) and a decoder p_theta(x|z) with prior p(z) = N(0, I).

  The methods are meant for `model.apply(params, ..., method=...)`; the pure
  functions in `vae_jax.models.functions` wrap them. `__call__` exists to initialise both
  halves at once: `params = model.init(key, x)`.
  """

  encoder: GaussianEncoder
  decoder: Decoder

  @property
  def latent_dim(self) -> int:
    return self.encoder.latent_dim

  @property
  def data_dim(self) -> int:
    return self.decoder.data_dim

  @property
  def likelihood(self) -> str:
    return self.decoder.likelihood

  @property
  def noise_dim(self) -> int:
    """The standard-normal coordinates that draw one sample of z from q."""
    return self.latent_dim

  def __call__(self, x: Array) -> Array:
    mean, _ = self.encode(x)
    return self.decoder(mean)

  def sample_latent(self, key: Array, num_samples: int) -> Array:
    """z ~ p(z) = N(0, I): [num_samples, latent_dim]."""
    return jax.random.normal(key, (num_samples, self.latent_dim))

  def encode(self, x: Array) -> tuple[Array, Array]:
    """x [..., data_dim] -> (mean, logvar) of q(z|x), each [..., latent_dim]."""
    if self.likelihood == "categorical":
      # Integer levels are fed to the MLP scaled to [0, 1], like grey levels.
      x = x.astype(jnp.float32) / (self.decoder.num_categories - 1)
    return self.encoder(x)

  def decode(self, z: Array):
    """z [..., latent_dim] -> the decoder's distribution parameters."""
    return self.decoder(z)

  def log_likelihood(self, x: Array, z: Array) -> Array:
    """log p_theta(x | z) in nats: x [..., data_dim], z [..., latent] -> [...]."""
    return self.decoder.log_prob(z, x)

  def decode_mean(self, z: Array) -> Array:
    """E[x | z]: z [..., latent_dim] -> [..., data_dim]."""
    return self.decoder.mean(z)

  def decode_sample(self, z: Array, key: Array) -> Array:
    """x ~ p_theta(x | z): z [..., latent_dim] -> [..., data_dim]."""
    return self.decoder.sample(z, key)


class TwoLayerVAE(VAE):
  """The IWAE paper's model with two stochastic layers (its Sec. 5):
  p(h2) = N(0, I), p(h1 | h2) and p(x | h1); q(h1 | x) and q(h2 | h1).

  `encoder` is q(h1 | x) and `decoder` p(x | h1), so every method of `VAE`
  keeps its meaning with z = h1, the latent layer next to x (latent_dim is
  h1's size); `top_encoder` is q(h2 | h1) and `top_decoder` p(h1 | h2), a
  Gaussian MLP as q's are. Only the prior differs: p(h1) is the marginal of
  p(h1 | h2) p(h2), which `sample_latent` draws from. The bounds are in
  `vae_jax.math.two_layers`.
  """

  top_encoder: GaussianEncoder
  top_decoder: GaussianEncoder

  @property
  def top_latent_dim(self) -> int:
    return self.top_encoder.latent_dim

  @property
  def noise_dim(self) -> int:
    """J1 + J2: the first J1 coordinates draw h1, the rest h2."""
    return self.latent_dim + self.top_latent_dim

  def __call__(self, x: Array) -> Array:
    h1, _ = self.encode(x)
    self.top_decode(self.top_encode(h1)[0])
    return self.decoder(h1)

  def top_encode(self, h1: Array) -> tuple[Array, Array]:
    """q(h2 | h1): h1 [..., J1] -> (mean, logvar), each [..., J2]."""
    return self.top_encoder(h1)

  def top_decode(self, h2: Array) -> tuple[Array, Array]:
    """p(h1 | h2): h2 [..., J2] -> (mean, logvar), each [..., J1]."""
    return self.top_decoder(h2)

  def sample_latent(self, key: Array, num_samples: int) -> Array:
    """h1 ~ p(h1): h2 ~ N(0, I), then h1 ~ p(h1 | h2), as the IWAE code draws
    its samples: [num_samples, latent_dim]."""
    top_key, key = jax.random.split(key)
    h2 = jax.random.normal(top_key, (num_samples, self.top_latent_dim))
    mean, logvar = self.top_decode(h2)
    return distributions.reparameterize(mean, logvar, jax.random.normal(key, mean.shape))


def make_vae(
  data_dim: int, latent_dim: int, train_data: np.ndarray | None = None, **settings
) -> VAE:
  """Builds the paper's VAE: mirrored MLP encoder and decoder.

  Args:
    data_dim: D, the flattened size of one example (784 for MNIST).
    latent_dim: J, the number of latent dimensions.
    train_data: [N, D], for decoder_bias="data_mean" only.
    **settings: the other fields of `ModelConfig` (likelihood, hidden_sizes,
      activation, init, num_categories, min_variance, sigmoid_mean,
      encoder_variance, decoder_bias).
  """
  return vae_from_config(data_dim, ModelConfig(latent_dim=latent_dim, **settings), train_data)


def logits_bias_from_data(train_data: np.ndarray) -> tuple[float, ...]:
  """The logit of each pixel's mean over the training set, clipped to
  [DATA_MEAN_CLIP, 1 - DATA_MEAN_CLIP]: the IWAE code's initial output bias,
  with which the decoder starts at the data's average image."""
  mean = np.clip(
    np.mean(np.asarray(train_data, np.float64), axis=0), DATA_MEAN_CLIP, 1 - DATA_MEAN_CLIP
  )
  return tuple(float(b) for b in np.log(mean) - np.log1p(-mean))


def vae_from_config(
  data_dim: int, config: ModelConfig, train_data: np.ndarray | None = None
) -> VAE:
  """The VAE (a `TwoLayerVAE` for config.stochastic_layers = 2) that `config`
  describes, for examples of `data_dim` values; `train_data` [N, data_dim] is
  needed for `decoder_bias="data_mean"` only."""
  check_positive_int("data_dim", data_dim)
  mlp = dict(
    hidden_sizes=config.hidden_sizes, activation=config.activation, init_scheme=config.init
  )
  encoder = GaussianEncoder(
    latent_dim=config.latent_dim, variance_head=config.encoder_variance, **mlp
  )
  if config.likelihood == "bernoulli":
    initial_bias = None
    if config.decoder_bias == "data_mean":
      if train_data is None or np.shape(train_data)[-1:] != (data_dim,):
        raise ConfigError(
          "decoder_bias",
          f'decoder_bias="data_mean" needs the training data [N, {data_dim}] to take its mean.',
        )
      initial_bias = logits_bias_from_data(train_data)
    decoder = BernoulliDecoder(data_dim=data_dim, initial_logits_bias=initial_bias, **mlp)
  elif config.likelihood == "gaussian":
    decoder = GaussianDecoder(
      data_dim=data_dim,
      min_variance=config.min_variance,
      sigmoid_mean=config.sigmoid_mean,
      **mlp,
    )
  else:
    decoder = CategoricalDecoder(data_dim=data_dim, num_categories=config.num_categories, **mlp)
  if config.stochastic_layers == 1:
    return VAE(encoder=encoder, decoder=decoder)
  top_mlp = dict(mlp, hidden_sizes=config.top_hidden_sizes)
  return TwoLayerVAE(
    encoder=encoder,
    decoder=decoder,
    top_encoder=GaussianEncoder(
      latent_dim=config.top_latent_dim, variance_head=config.encoder_variance, **top_mlp
    ),
    # p(h1 | h2) has q's form: the IWAE code builds all three from one class.
    top_decoder=GaussianEncoder(
      latent_dim=config.latent_dim, variance_head=config.encoder_variance, **top_mlp
    ),
  )
