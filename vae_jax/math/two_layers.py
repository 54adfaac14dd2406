"""Two stochastic layers (Burda, Grosse & Salakhutdinov 2016, Sec. 5): the
per-example log importance weight and the estimators that apply to it.

The model and its proposal, for one example x:

  p(h2) = N(0, I)          p(h1 | h2) = N(mu_p(h2), diag sigma_p^2(h2))     p(x | h1)
  q(h1 | x) = N(mu_1(x), diag sigma_1^2(x))     q(h2 | h1) = N(mu_2(h1), diag sigma_2^2(h1))

h1 ~ q(h1 | x), then h2 ~ q(h2 | h1), both reparameterised (h = mu + sigma *
eps), give the log importance weight

  log w = log p(x | h1) + log p(h1 | h2) + log p(h2) - log q(h1 | x) - log q(h2 | h1),

the ratio p(x, h1, h2) / q(h1, h2 | x) of the IWAE paper's eq. 5 with the
layers written out. As for one layer (`vae_jax.math.estimators`), every
estimator is written for ONE example x [data_dim] and its noise eps
[L, J1 + J2] (the first J1 coordinates draw h1, the other J2 draw h2), in
terms of the pure functions in `TwoLayerFunctions`; nothing here knows about
Flax. `vae_jax.inference.bounds.make_elbo` binds them to a `TwoLayerVAE`.

Estimators (`ESTIMATORS`; the names and meanings of the one-layer ones):
  A               (1/L) sum_l log w_l, unbiased for the ELBO
  iwae            log (1/L) sum_l w_l, the IWAE bound with k = L
  stl             A's value; log q differentiated only through h1 and h2
                  (q's parameters held fixed; Roeder et al. 2017)
  score           A's value; the score-function (REINFORCE) gradient
  score_baseline  the same with the baseline log w at eps = 0 (h1 = mu_1(x),
                  h2 = mu_2(h1)), the one-layer baseline's z = mean(x)
Estimator B has no counterpart: it needs KL(q(h1 | x) || p(h1)) in closed
form, and p(h1) = integral of p(h1 | h2) p(h2) over h2 is no Gaussian.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from vae_jax.math import distributions
from vae_jax.math.estimators import (
  EncodeFn,
  LogLikelihoodFn,
  Params,
  log_likelihood_over_samples,
  score_function_surrogate,
)

Array = jax.Array


class TwoLayerFunctions(NamedTuple):
  """The per-example functions of a two-layer model, each on one example.

  Attributes:
    encode_fn: q(h1 | x): (params, x [data_dim]) -> (mean, logvar), [J1] each.
    top_encode_fn: q(h2 | h1): (params, h1 [J1]) -> (mean, logvar), [J2] each.
    top_decode_fn: p(h1 | h2): (params, h2 [J2]) -> (mean, logvar), [J1] each.
    log_likelihood_fn: log p(x | h1): (params, x [data_dim], h1 [J1]) -> scalar.
  """

  encode_fn: EncodeFn
  top_encode_fn: EncodeFn
  top_decode_fn: EncodeFn
  log_likelihood_fn: LogLikelihoodFn


def _over_samples(fn: EncodeFn, params: Params, h: Array) -> tuple[Array, Array]:
  """fn(params, h_l) for every sample h [L, J] -> ([L, J'], [L, J'])."""
  return jax.vmap(fn, in_axes=(None, 0))(params, h)


def sample_latents(
  functions: TwoLayerFunctions, params: Params, x: Array, eps: Array
) -> tuple[tuple[Array, Array], tuple[Array, Array], tuple[Array, Array]]:
  """h1 ~ q(h1 | x) and h2 ~ q(h2 | h1), reparameterised, for one example.

  Args:
    functions, params: the model.
    x: [data_dim].
    eps: [L, J1 + J2] standard-normal noise; the first J1 columns draw h1.

  Returns:
    ((h1 [L, J1], h2 [L, J2]), q(h1 | x)'s (mean, logvar) [J1], and
    q(h2 | h1)'s (mean, logvar) [L, J2] at each h1).
  """
  mean1, logvar1 = functions.encode_fn(params, x)
  eps1, eps2 = jnp.split(eps, [mean1.shape[-1]], axis=-1)
  h1 = distributions.reparameterize(mean1, logvar1, eps1)
  mean2, logvar2 = _over_samples(functions.top_encode_fn, params, h1)
  h2 = distributions.reparameterize(mean2, logvar2, eps2)
  return (h1, h2), (mean1, logvar1), (mean2, logvar2)


def log_joint(
  functions: TwoLayerFunctions, params: Params, x: Array, h1: Array, h2: Array
) -> Array:
  """log p(x, h1, h2) = log p(x | h1) + log p(h1 | h2) + log p(h2): [L]."""
  prior_mean, prior_logvar = _over_samples(functions.top_decode_fn, params, h2)
  return (
    log_likelihood_over_samples(functions.log_likelihood_fn, params, x, h1)
    + distributions.gaussian_log_prob(prior_mean, prior_logvar, h1)
    + distributions.standard_normal_log_prob(h2)
  )


def log_posterior(
  functions: TwoLayerFunctions, params: Params, x: Array, h1: Array, h2: Array
) -> Array:
  """log q(h1, h2 | x) = log q(h1 | x) + log q(h2 | h1) at given samples: [L]."""
  q1 = functions.encode_fn(params, x)
  return _log_q(q1, _over_samples(functions.top_encode_fn, params, h1), h1, h2)


def _log_q(q1: tuple[Array, Array], q2: tuple[Array, Array], h1: Array, h2: Array) -> Array:
  """log q(h1 | x) + log q(h2 | h1) from each layer's (mean, logvar): [L]."""
  return distributions.gaussian_log_prob(*q1, h1) + distributions.gaussian_log_prob(*q2, h2)


def log_importance_weights(
  functions: TwoLayerFunctions, params: Params, x: Array, eps: Array
) -> Array:
  """log w_l = log p(x, h1_l, h2_l) - log q(h1_l, h2_l | x) for one example: [L]."""
  (h1, h2), q1, q2 = sample_latents(functions, params, x, eps)
  return log_joint(functions, params, x, h1, h2) - _log_q(q1, q2, h1, h2)


def estimator_a(functions: TwoLayerFunctions, params: Params, x: Array, eps: Array) -> Array:
  """(1/L) sum_l log w_l: the ELBO's Monte-Carlo estimate (the one-layer eq. 6)."""
  return jnp.mean(log_importance_weights(functions, params, x, eps))


def iwae_bound(functions: TwoLayerFunctions, params: Params, x: Array, eps: Array) -> Array:
  """log (1/k) sum_l w_l with k = L (the IWAE paper's eq. 8); at k = 1, A."""
  log_w = log_importance_weights(functions, params, x, eps)
  return jax.nn.logsumexp(log_w) - math.log(log_w.shape[0])


def estimator_stl(functions: TwoLayerFunctions, params: Params, x: Array, eps: Array) -> Array:
  """ "Sticking the landing" (Roeder et al. 2017) for both layers: A's value,
  with log q(h1, h2 | x) evaluated at q's parameters held fixed, so that it
  is differentiated only through the samples h1 and h2 (the path
  derivative). The term dropped, the score of q at fixed samples, has zero
  expectation, so the gradient stays unbiased."""
  (h1, h2), _, _ = sample_latents(functions, params, x, eps)
  frozen = jax.lax.stop_gradient(params)
  return jnp.mean(
    log_joint(functions, params, x, h1, h2) - log_posterior(functions, frozen, x, h1, h2)
  )


def _score_function(
  functions: TwoLayerFunctions, params: Params, x: Array, eps: Array, use_baseline: bool
) -> Array:
  """A's value with the score-function gradient: the samples are drawn but
  not differentiated through (`estimators.score_function_surrogate`)."""
  (h1, h2), _, _ = jax.lax.stop_gradient(sample_latents(functions, params, x, eps))
  log_q = log_posterior(functions, params, x, h1, h2)
  log_w = log_joint(functions, params, x, h1, h2) - log_q
  baseline = None
  if use_baseline:
    baseline = log_importance_weights(functions, params, x, jnp.zeros_like(eps[:1]))[0]
  return score_function_surrogate(log_w, log_q, baseline)


def score_function(functions: TwoLayerFunctions, params: Params, x: Array, eps: Array) -> Array:
  """The naive score-function (REINFORCE) estimator, as a surrogate (value: A)."""
  return _score_function(functions, params, x, eps, use_baseline=False)


def score_function_baseline(
  functions: TwoLayerFunctions, params: Params, x: Array, eps: Array
) -> Array:
  """Score-function estimator with the baseline log w at eps = 0 (value: A)."""
  return _score_function(functions, params, x, eps, use_baseline=True)


ESTIMATORS = {
  "A": estimator_a,
  "iwae": iwae_bound,
  "stl": estimator_stl,
  "score": score_function,
  "score_baseline": score_function_baseline,
}
