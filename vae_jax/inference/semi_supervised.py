"""The semi-supervised VAE "M2" (Kingma, Rezende, Mohamed & Welling, 2014).

A discrete label y and a continuous style z generate x:

  p(y) = Cat(1/K),  p(z) = N(0, I),  p_theta(x | y, z) = Bernoulli(f(y, z));
  q_phi(y | x) = Cat(pi(x)) (the classifier),  q_phi(z | x, y) = N(mu(x, y), diag sigma^2(x, y)).

The bounds (their eqs. 6-7, with L and U the negatives of their losses):

  labelled (x, y):  L(x, y) = E_q(z|x,y)[log p(x|y,z) + log p(z) - log q(z|x,y)] + log p(y)
  unlabelled x:     U(x) = sum_y q(y|x) L(x, y) + H(q(y|x)) <= log p(x)

L(x, y) is one of `vae_jax.math.estimators`' per-example bounds (A, B, ...) run on
the y-conditioned encoder and decoder, plus log p(y): the estimators are not
written again. U enumerates the K labels (the paper's choice: exact in y, so
its gradients have no score-function noise), or, with `label_inference=
"sample"`, draws one y ~ q(y|x) and estimates U by L(x, y) - log q(y|x), whose
gradient for the classifier is the score-function (REINFORCE) one, with the
rest of the minibatch as its baseline.

The objective for a labelled set of N_l and an unlabelled set of N_u examples
(N = N_l + N_u), per example, to maximise:

  J_alpha / N = (N_l / N) mean_l L(x, y) + (N_u / N) mean_u U(x)
                - alpha * mean_l[-log q(y | x)]

where `alpha` is the paper's alpha divided by N (the paper: alpha = 0.1 N, so
0.1 here): the classifier also learns from the labels directly, as the bounds
alone train q(y|x) only through the unlabelled term.

The networks are `vae_jax.models.m2`'s.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from vae_jax.errors import ConfigError
from vae_jax.inference.bounds import check_estimator
from vae_jax.math import estimators
from vae_jax.models.m2 import M2, check_inputs, classify

Array = jax.Array
Params = Any

LABEL_INFERENCES = ("enumerate", "sample")


def _labelled_per_example(model: M2, estimator: str) -> Callable[..., Array]:
  """L(x, y) for one example: (params, x [data_dim], y [] int, eps [L, latent]) -> nats."""
  per_example = estimators.make_estimator(estimator)
  log_prior_y = -math.log(model.num_classes)

  def bound(params: Params, x: Array, y: Array, eps: Array) -> Array:
    encode_fn = lambda p, x: model.apply(p, x, y, method=M2.encode)
    log_likelihood_fn = lambda p, x, z: model.apply(p, x, y, z, method=M2.log_likelihood)
    return per_example(encode_fn, log_likelihood_fn, params, x, eps) + log_prior_y

  return bound


def _unlabelled_per_example(model: M2, estimator: str, label_inference: str):
  """U(x) for one example: (params, x [data_dim], eps [L, latent], key) ->
  (value, log q(y|x) of the drawn y, or 0 when y is enumerated), nats."""
  labelled = _labelled_per_example(model, estimator)
  labels = jnp.arange(model.num_classes)

  def enumerated(params, x, eps, key):
    del key  # exact in y
    log_q_y = jax.nn.log_softmax(model.apply(params, x, method=M2.classify))
    # The same eps for every y: common random numbers across the K terms.
    bounds = jax.vmap(labelled, in_axes=(None, None, 0, None))(params, x, labels, eps)
    return jnp.sum(jnp.exp(log_q_y) * (bounds - log_q_y)), jnp.zeros(())

  def sampled(params, x, eps, key):
    log_q_y = jax.nn.log_softmax(model.apply(params, x, method=M2.classify))
    y = jax.random.categorical(key, jax.lax.stop_gradient(log_q_y))
    return labelled(params, x, y, eps) - log_q_y[y], log_q_y[y]

  return enumerated if label_inference == "enumerate" else sampled


def _with_score_function(values: Array, log_q_y: Array) -> Array:
  """values [batch] of U(x) at drawn labels, plus the score-function term the
  draws need: same values, gradient grad(values_i) + (values_i - b_i) *
  grad(log q(y_i | x_i)).

  b_i, the mean of the other examples' values, is a baseline that does not
  depend on y_i, so the gradient stays unbiased; without it the score term's
  variance (values of about -100 nats) drowns the classifier's signal.
  """
  batch = values.shape[0]
  fixed = jax.lax.stop_gradient(values)
  baseline = (jnp.sum(fixed) - fixed) / (batch - 1) if batch > 1 else jnp.zeros_like(fixed)
  return values + (fixed - baseline) * (log_q_y - jax.lax.stop_gradient(log_q_y))


def _noise(model: M2, key: Array, batch: int, num_samples: int) -> Array:
  """eps [batch, L, latent_dim] ~ N(0, I)."""
  return jax.random.normal(key, (batch, num_samples, model.latent_dim))


def _check_settings(estimator: str, num_samples: int, label_inference: str) -> None:
  check_estimator(estimator, num_samples)
  if label_inference not in LABEL_INFERENCES:
    raise ConfigError(
      "label_inference",
      f"Unknown label_inference {label_inference!r}; choose one of {list(LABEL_INFERENCES)}.",
    )


def make_labelled_bound(
  model: M2, estimator: str = "B", num_samples: int = 1
) -> Callable[[Params, Array, Array, Array], Array]:
  """Returns `bound(params, x [batch, data_dim], y [batch] int, key) -> [batch]`,
  L(x, y) in nats, a lower bound on log p(x, y), by `estimator` with L =
  `num_samples` draws of z per example."""
  check_estimator(estimator, num_samples)
  per_example = _labelled_per_example(model, estimator)

  def bound(params: Params, x: Array, y: Array, key: Array) -> Array:
    check_inputs(model, x, y)
    eps = _noise(model, key, x.shape[0], num_samples)
    return jax.vmap(per_example, in_axes=(None, 0, 0, 0))(params, x, y, eps)

  return bound


def make_unlabelled_bound(
  model: M2,
  estimator: str = "B",
  num_samples: int = 1,
  label_inference: str = "enumerate",
) -> Callable[[Params, Array, Array], Array]:
  """Returns `bound(params, x [batch, data_dim], key) -> [batch]`, U(x) in
  nats, a lower bound on log p(x): exact in y ("enumerate") or with one
  y ~ q(y|x) per example ("sample", unbiased for the enumerated value, and
  so is its gradient: see `_with_score_function`)."""
  _check_settings(estimator, num_samples, label_inference)
  per_example = _unlabelled_per_example(model, estimator, label_inference)

  def bound(params: Params, x: Array, key: Array) -> Array:
    check_inputs(model, x)
    noise_key, label_key = jax.random.split(key)
    eps = _noise(model, noise_key, x.shape[0], num_samples)
    label_keys = jax.random.split(label_key, x.shape[0])
    values, log_q_y = jax.vmap(per_example, in_axes=(None, 0, 0, 0))(params, x, eps, label_keys)
    if label_inference == "sample":
      return _with_score_function(values, log_q_y)
    return values

  return bound


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
  """The M2 objective's settings.

  Attributes:
    estimator: the per-example bound of L(x, y), from `estimators.ESTIMATOR_NAMES`
      (with their default settings: miwae and piwae of one group are iwae).
    num_samples: draws of z per example and label.
    alpha: weight of the labelled examples' classification loss, per example
      of the whole data set: the paper's alpha / N (the paper: 0.1).
    label_inference: "enumerate" y in U(x) (the paper), or "sample" one y.
  """

  estimator: str = "B"
  num_samples: int = 1
  alpha: float = 0.1
  label_inference: str = "enumerate"

  def __post_init__(self):
    _check_settings(self.estimator, self.num_samples, self.label_inference)
    if not self.alpha >= 0:
      raise ConfigError("alpha", f"alpha must be >= 0, got {self.alpha}.")


def make_objective(
  model: M2, config: ObjectiveConfig, num_labelled: int, num_unlabelled: int
) -> Callable[[Params, Array, Array, Array, Array], tuple[Array, dict[str, Array]]]:
  """Returns `objective(params, x_labelled, y_labelled, x_unlabelled, key) ->
  (J_alpha / N, aux)`, to maximise (see the module docstring).

  x_labelled: [B_l, data_dim], y_labelled: [B_l] int, x_unlabelled: [B_u,
  data_dim]: minibatches of the two sets, whose sizes N_l, N_u weight the
  terms so that the value is unbiased for J_alpha / N. With num_unlabelled =
  0 the unlabelled term is left out (x_unlabelled is not read): the
  classifier then learns from the labels alone, the supervised baseline. aux:
  the batch means "labelled_bound", "unlabelled_bound" (nats; absent without
  unlabelled examples) and "classification_loss" (nats) that make it up.
  """
  if num_labelled < 1 or num_unlabelled < 0:
    raise ValueError(
      f"Need num_labelled >= 1 and num_unlabelled >= 0, got {num_labelled}, {num_unlabelled}."
    )
  labelled_bound = make_labelled_bound(model, config.estimator, config.num_samples)
  unlabelled_bound = make_unlabelled_bound(
    model, config.estimator, config.num_samples, config.label_inference
  )
  total = num_labelled + num_unlabelled

  def objective(params, x_labelled, y_labelled, x_unlabelled, key):
    labelled_key, unlabelled_key = jax.random.split(key)
    labelled = jnp.mean(labelled_bound(params, x_labelled, y_labelled, labelled_key))
    log_q_y = jax.nn.log_softmax(classify(model, params, x_labelled))
    classification_loss = -jnp.mean(jnp.take_along_axis(log_q_y, y_labelled[:, None], 1))
    value = (num_labelled / total) * labelled - config.alpha * classification_loss
    aux = {"labelled_bound": labelled, "classification_loss": classification_loss}
    if num_unlabelled:
      aux["unlabelled_bound"] = jnp.mean(unlabelled_bound(params, x_unlabelled, unlabelled_key))
      value += (num_unlabelled / total) * aux["unlabelled_bound"]
    return value, aux

  return objective
