"""The SGVB estimators of the per-example lower bound (AEVB paper, Sec. 2.3).

Each estimator is written once, for ONE example and the noise of its L
samples, in terms of two pure functions supplied by the caller:

  encode_fn(params, x) -> (mean, logvar)      x: [data_dim] -> 2 x [latent_dim]
  log_likelihood_fn(params, x, z) -> scalar    log p_theta(x | z) in nats

`batch_bound` vmaps a per-example estimator over the batch; inside, the
decoder is vmapped over the L samples. Nothing here knows about Flax or
training: `vae_jax.inference.bounds.make_elbo` binds these to a Flax model.

Per example, with z_l = mu(x) + sigma(x) * eps_l and eps_l ~ N(0, I) (or
the standardised noise of another family of `vae_jax.math.posteriors`, whose
log-density every estimator but B takes as `log_q`):
  A (eq. 6):  (1/L) sum_l [log p(x, z_l) - log q(z_l | x)]
  B (eq. 7):  -KL(q(z|x) || p(z)) + (1/L) sum_l log p(x | z_l)
  IWAE:       log (1/L) sum_l p(x, z_l) / q(z_l | x)   (Burda et al., 2016)
All are in nats; A and B are unbiased for the ELBO, IWAE is a tighter bound
that is biased for it. Three more objectives share A's value and differ only
in their gradients: "sticking the landing" and the score-function (REINFORCE)
estimator with and without a baseline. Four share IWAE's value and its
decoder gradient and differ in the encoder's (w~_l: the normalised weights):
  dreg:      sum_l w~_l^2 dlog w_l/dz_l dz_l/dphi   (Tucker et al., 2019; unbiased)
  iwae_stl:  sum_l w~_l   dlog w_l/dz_l dz_l/dphi   (Roeder et al., 2017; biased, k > 1)
  rws:       sum_l w~_l grad_phi log q(z_l|x)       (Bornschein & Bengio, 2015: q's wake phase)
  rws_dreg:  sum_l (w~_l - w~_l^2) dlog w_l/dz_l dz_l/dphi   (the same expectation as rws)
Three objectives of Rainforth et al. (2018) take a setting, so they are made
by factories (`make_estimator` names them): miwae and piwae split the L
samples into M = `num_groups` groups of K = L / M, ciwae weights the ELBO by
`ciwae_beta`.
`per_example_gradients` returns any estimator's gradient for each example
separately, for variance studies.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Protocol

import chex
import jax
import jax.numpy as jnp

from vae_jax.errors import ConfigError
from vae_jax.math import distributions

Array = jax.Array
Params = Any
EncodeFn = Callable[[Params, Array], tuple[Array, Array]]
LogLikelihoodFn = Callable[[Params, Array, Array], Array]
# log q(z | x) from the encoder's outputs: (mean, logvar, z) [..., latent] -> [...].
LogPosteriorFn = Callable[[Array, Array, Array], Array]
GAUSSIAN_LOG_Q = distributions.gaussian_log_prob


class PerExampleEstimator(Protocol):
  def __call__(
    self,
    encode_fn: EncodeFn,
    log_likelihood_fn: LogLikelihoodFn,
    params: Params,
    x: Array,
    eps: Array,
  ) -> Array: ...


def _posterior_samples(
  encode_fn: EncodeFn,
  log_likelihood_fn: LogLikelihoodFn,
  params: Params,
  x: Array,
  eps: Array,
) -> tuple[Array, Array, Array, Array]:
  """Encodes x, reparameterises, decodes each sample.

  Returns (mean [latent], logvar [latent], z [L, latent], log p(x|z_l) [L]).
  """
  mean, logvar = encode_fn(params, x)
  z = distributions.reparameterize(mean, logvar, eps)
  return mean, logvar, z, log_likelihood_over_samples(log_likelihood_fn, params, x, z)


def log_likelihood_over_samples(
  log_likelihood_fn: LogLikelihoodFn, params: Params, x: Array, z: Array
) -> Array:
  """log p(x | z_l) [L] for one example x and its samples z [L, latent].

  At L = 1 the decoder is called on the one sample rather than vmapped over
  a sample axis of size 1: vmapped again over the batch, a vmap over samples
  leaves [batch, 1, ...] arrays whose weight gradients XLA computes with a
  transposed copy of the decoder's output gradient (BUILD.md), the same
  values for more time.
  """
  if z.shape[0] == 1:
    return log_likelihood_fn(params, x, z[0])[None]
  return jax.vmap(log_likelihood_fn, in_axes=(None, None, 0))(params, x, z)


def _log_weight(
  log_px_given_z: Array,
  z: Array,
  mean: Array,
  logvar: Array,
  kl_weight: float = 1.0,
  log_q: LogPosteriorFn = GAUSSIAN_LOG_Q,
) -> Array:
  """log p(x|z) + beta * (log p(z) - log q(z|x)) for z [..., latent] -> [...].

  beta = `kl_weight`; at 1 (the log importance weight) the products are
  exact, so the value is bit for bit the unweighted one.
  """
  return (
    log_px_given_z
    + kl_weight * distributions.standard_normal_log_prob(z)
    - kl_weight * log_q(mean, logvar, z)
  )


def log_importance_weights(
  encode_fn: EncodeFn,
  log_likelihood_fn: LogLikelihoodFn,
  params: Params,
  x: Array,
  eps: Array,
  kl_weight: float = 1.0,
  log_q: LogPosteriorFn = GAUSSIAN_LOG_Q,
) -> Array:
  """log w_l = log p(x, z_l) - log q(z_l | x) for one example.

  Args:
    encode_fn, log_likelihood_fn: see the module docstring.
    params: the pytree both functions take.
    x: [data_dim] one example.
    eps: [L, latent_dim] standardised noise of q's family (standard normal
      for the Gaussian q).
    kl_weight: beta; other than 1, log p(z_l) - log q(z_l|x) is scaled by it
      (beta-VAE) and the result is no longer a log importance weight.
    log_q: q's log-density (`vae_jax.math.posteriors.Posterior.log_prob`).

  Returns:
    [L] log-weights in nats.
  """
  mean, logvar, z, log_px_given_z = _posterior_samples(encode_fn, log_likelihood_fn, params, x, eps)
  return _log_weight(log_px_given_z, z, mean, logvar, kl_weight, log_q)


def estimator_a(
  encode_fn: EncodeFn,
  log_likelihood_fn: LogLikelihoodFn,
  params: Params,
  x: Array,
  eps: Array,
  kl_weight: float = 1.0,
  log_q: LogPosteriorFn = GAUSSIAN_LOG_Q,
) -> Array:
  """SGVB estimator A (eq. 6) for one example. x: [data_dim], eps: [L, latent].

  With kl_weight = beta != 1 it is the beta-VAE objective (Higgins et al.,
  2017), (1/L) sum_l [log p(x|z_l) + beta (log p(z_l) - log q(z_l|x))], an
  unbiased estimate of E_q log p(x|z) - beta KL(q || p), like B's.
  """
  return jnp.mean(
    log_importance_weights(encode_fn, log_likelihood_fn, params, x, eps, kl_weight, log_q)
  )


def estimator_b(
  encode_fn: EncodeFn,
  log_likelihood_fn: LogLikelihoodFn,
  params: Params,
  x: Array,
  eps: Array,
  kl_weight: float = 1.0,
) -> Array:
  """SGVB estimator B (eq. 7) for one example: analytic KL + MC likelihood.

  kl_weight = beta scales the KL: E_q log p(x|z) - beta KL(q || p), the
  beta-VAE objective (Higgins et al., 2017); beta = 1 is the ELBO.
  """
  mean, logvar, _, log_px_given_z = _posterior_samples(encode_fn, log_likelihood_fn, params, x, eps)
  return -kl_weight * distributions.kl_standard_normal(mean, logvar) + jnp.mean(log_px_given_z)


def iwae_bound(
  encode_fn: EncodeFn,
  log_likelihood_fn: LogLikelihoodFn,
  params: Params,
  x: Array,
  eps: Array,
  log_q: LogPosteriorFn = GAUSSIAN_LOG_Q,
) -> Array:
  """The importance-weighted bound with k = L samples, for one example.

  log (1/k) sum_l w_l, computed with logsumexp; for k = 1 it equals A.
  """
  log_w = log_importance_weights(encode_fn, log_likelihood_fn, params, x, eps, log_q=log_q)
  return jax.nn.logsumexp(log_w) - math.log(log_w.shape[0])


def estimator_stl(
  encode_fn: EncodeFn,
  log_likelihood_fn: LogLikelihoodFn,
  params: Params,
  x: Array,
  eps: Array,
  log_q: LogPosteriorFn = GAUSSIAN_LOG_Q,
) -> Array:
  """ "Sticking the landing" (Roeder et al., 2017): A with q's score term stopped.

  The value equals estimator A's. In the gradient, log q(z|x) is
  differentiated only through z, not through q's parameters; that drops a
  term whose expectation is zero, so the gradient stays unbiased and its
  variance vanishes as q approaches the exact posterior.
  """
  mean, logvar, z, log_px_given_z = _posterior_samples(encode_fn, log_likelihood_fn, params, x, eps)
  frozen_mean, frozen_logvar = jax.lax.stop_gradient((mean, logvar))
  return jnp.mean(_log_weight(log_px_given_z, z, frozen_mean, frozen_logvar, log_q=log_q))


def _score_function(
  encode_fn: EncodeFn,
  log_likelihood_fn: LogLikelihoodFn,
  params: Params,
  x: Array,
  eps: Array,
  use_baseline: bool,
  log_q: LogPosteriorFn,
) -> Array:
  """Surrogate whose value is A's and whose gradient is REINFORCE's.

  z is sampled but not differentiated through. The encoder's gradient is
  (1/L) sum_l (log w_l - b) grad log q(z_l|x) + grad(-log q(z_l|x)); the
  decoder's is (1/L) sum_l grad log p(x|z_l). The baseline b, when used, is
  log w at z = mean(x): it does not depend on the sampled z_l, so it leaves
  the estimator unbiased and removes most of the scale of log w.
  """
  mean, logvar = encode_fn(params, x)
  z = jax.lax.stop_gradient(distributions.reparameterize(mean, logvar, eps))
  log_px_given_z = log_likelihood_over_samples(log_likelihood_fn, params, x, z)
  log_w = _log_weight(log_px_given_z, z, mean, logvar, log_q=log_q)
  baseline = None
  if use_baseline:
    baseline = _log_weight(log_likelihood_fn(params, x, mean), mean, mean, logvar, log_q=log_q)
  return score_function_surrogate(log_w, log_q(mean, logvar, z), baseline)


def score_function_surrogate(log_w: Array, log_q: Array, baseline: Array | None = None) -> Array:
  """The scalar whose value is mean(log_w) and whose gradient is REINFORCE's.

  Args:
    log_w: [L] log importance weights at samples z_l that are not
      differentiated through, as functions of the parameters.
    log_q: [L] log q(z_l | x) at those samples, a function of q's parameters.
    baseline: a scalar b that does not depend on the z_l, or None (b = 0).

  The gradient is (1/L) sum_l [grad log w_l + (log w_l - b) grad log q(z_l|x)];
  b leaves it unbiased since E_q[grad log q] = 0.
  """
  signal = log_w if baseline is None else log_w - baseline
  score_term = jax.lax.stop_gradient(signal) * log_q
  return jnp.mean(log_w + score_term - jax.lax.stop_gradient(score_term))


def score_function(
  encode_fn: EncodeFn,
  log_likelihood_fn: LogLikelihoodFn,
  params: Params,
  x: Array,
  eps: Array,
  log_q: LogPosteriorFn = GAUSSIAN_LOG_Q,
) -> Array:
  """The naive score-function (REINFORCE) estimator, as a surrogate (value: A)."""
  return _score_function(
    encode_fn, log_likelihood_fn, params, x, eps, use_baseline=False, log_q=log_q
  )


def score_function_baseline(
  encode_fn: EncodeFn,
  log_likelihood_fn: LogLikelihoodFn,
  params: Params,
  x: Array,
  eps: Array,
  log_q: LogPosteriorFn = GAUSSIAN_LOG_Q,
) -> Array:
  """Score-function estimator with the baseline log w(mean(x)) (value: A)."""
  return _score_function(
    encode_fn, log_likelihood_fn, params, x, eps, use_baseline=True, log_q=log_q
  )


def _iwae_gradient(log_w: Array, surrogate: Array) -> Array:
  """The IWAE bound of `log_w` [L] in value, `surrogate`'s gradient."""
  value = jax.nn.logsumexp(log_w) - math.log(log_w.shape[0])
  return jax.lax.stop_gradient(value) + surrogate - jax.lax.stop_gradient(surrogate)


def _split_log_weights(
  encode_fn: EncodeFn,
  log_likelihood_fn: LogLikelihoodFn,
  params: Params,
  x: Array,
  eps: Array,
  log_q: LogPosteriorFn,
  path: bool,
) -> tuple[Array, Array, Array | None]:
  """log w_l [L] three ways, equal in value and differing in what they differentiate:

  decoder_log_w: through p's parameters only (z and q stopped);
  score: log q(z_l | x) at the stopped z_l, through q's parameters only;
  path_log_w (if `path`, else None): only along z_l's path through the
    encoder, p's parameters and q's density parameters stopped: its
    gradient is d log w_l / dz_l dz_l / dphi. It costs a second decoder pass.
  """
  mean, logvar = encode_fn(params, x)
  z = distributions.reparameterize(mean, logvar, eps)
  frozen_z, frozen_mean, frozen_logvar = jax.lax.stop_gradient((z, mean, logvar))
  log_px = log_likelihood_over_samples(log_likelihood_fn, params, x, frozen_z)
  decoder_log_w = _log_weight(log_px, frozen_z, frozen_mean, frozen_logvar, log_q=log_q)
  path_log_w = None
  if path:
    path_log_px = log_likelihood_over_samples(
      log_likelihood_fn, jax.lax.stop_gradient(params), x, z
    )
    path_log_w = _log_weight(path_log_px, z, frozen_mean, frozen_logvar, log_q=log_q)
  return decoder_log_w, log_q(mean, logvar, frozen_z), path_log_w


def iwae_dreg(
  encode_fn: EncodeFn,
  log_likelihood_fn: LogLikelihoodFn,
  params: Params,
  x: Array,
  eps: Array,
  log_q: LogPosteriorFn = GAUSSIAN_LOG_Q,
) -> Array:
  """The IWAE bound with the doubly reparameterised encoder gradient (DReG;
  Tucker, Lawson, Gu & Maddison, ICLR 2019, eq. 5), for one example.

  Value: the IWAE bound of k = L samples. Gradient: the decoder's is IWAE's,
  sum_l w~_l grad_theta log w_l; the encoder's is
  sum_l w~_l^2 (d log w_l / dz_l)(dz_l / dphi), with w~ the normalised
  weights and log q's parameters held fixed in d log w_l / dz_l. Both are
  unbiased for the IWAE bound's gradient; the encoder's signal-to-noise ratio
  grows with k instead of falling like k^(-1/2) (Rainforth et al., 2018).
  """
  decoder_log_w, _, path_log_w = _split_log_weights(
    encode_fn, log_likelihood_fn, params, x, eps, log_q, path=True
  )
  weights = jax.lax.stop_gradient(jax.nn.softmax(decoder_log_w))
  surrogate = jnp.sum(weights * decoder_log_w + weights**2 * path_log_w)
  return _iwae_gradient(decoder_log_w, surrogate)


def iwae_stl(
  encode_fn: EncodeFn,
  log_likelihood_fn: LogLikelihoodFn,
  params: Params,
  x: Array,
  eps: Array,
  log_q: LogPosteriorFn = GAUSSIAN_LOG_Q,
) -> Array:
  """The IWAE bound with q's score term dropped from its gradient (the IWAE
  form of "sticking the landing", Roeder, Wu & Duvenaud, 2017), for one example.

  Value: the IWAE bound. Gradient: log q(z_l | x) differentiated only through
  z_l, as in `estimator_stl`. For k > 1 the dropped term's expectation is
  not zero (it is weighted by w~_l, which depends on z_l), so the encoder's
  gradient is BIASED for the IWAE bound's (Tucker et al., 2019, Sec. 4);
  at k = 1 it is `estimator_stl`.
  """
  mean, logvar, z, log_px_given_z = _posterior_samples(encode_fn, log_likelihood_fn, params, x, eps)
  frozen_mean, frozen_logvar = jax.lax.stop_gradient((mean, logvar))
  log_w = _log_weight(log_px_given_z, z, frozen_mean, frozen_logvar, log_q=log_q)
  return jax.nn.logsumexp(log_w) - math.log(log_w.shape[0])


def reweighted_wake_sleep(
  encode_fn: EncodeFn,
  log_likelihood_fn: LogLikelihoodFn,
  params: Params,
  x: Array,
  eps: Array,
  log_q: LogPosteriorFn = GAUSSIAN_LOG_Q,
) -> Array:
  """Reweighted wake-sleep (Bornschein & Bengio, ICLR 2015), wake phases
  only, for one example.

  Value: the IWAE bound. Gradient: the decoder's is IWAE's (the wake phase
  of p); the encoder's is the wake phase of q, sum_l w~_l grad_phi log q(z_l | x)
  at the sampled z_l: a self-normalised estimate of
  E_p(z|x)[grad_phi log q(z | x)], which moves q towards the posterior
  (it descends KL(p(z|x) || q(z|x)), not the bound). It is zero in
  expectation when q is the exact posterior.
  """
  decoder_log_w, score, _ = _split_log_weights(
    encode_fn, log_likelihood_fn, params, x, eps, log_q, path=False
  )
  weights = jax.lax.stop_gradient(jax.nn.softmax(decoder_log_w))
  return _iwae_gradient(decoder_log_w, jnp.sum(weights * (decoder_log_w + score)))


def reweighted_wake_sleep_dreg(
  encode_fn: EncodeFn,
  log_likelihood_fn: LogLikelihoodFn,
  params: Params,
  x: Array,
  eps: Array,
  log_q: LogPosteriorFn = GAUSSIAN_LOG_Q,
) -> Array:
  """Reweighted wake-sleep with the doubly reparameterised wake-phase update
  of q (Tucker et al., 2019, eq. 6), for one example.

  As `reweighted_wake_sleep`, but the encoder's gradient is
  sum_l (w~_l - w~_l^2)(d log w_l / dz_l)(dz_l / dphi): the same expectation
  (reparameterising the score term), lower variance.
  """
  decoder_log_w, _, path_log_w = _split_log_weights(
    encode_fn, log_likelihood_fn, params, x, eps, log_q, path=True
  )
  weights = jax.lax.stop_gradient(jax.nn.softmax(decoder_log_w))
  surrogate = jnp.sum(weights * decoder_log_w + (weights - weights**2) * path_log_w)
  return _iwae_gradient(decoder_log_w, surrogate)


def _check_num_groups(num_groups: int) -> None:
  if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1:
    raise ConfigError("num_groups", f"num_groups (M) must be an int >= 1, got {num_groups!r}.")


def _grouped(log_w: Array, num_groups: int) -> Array:
  """log w [L] as [M, K]: M groups of K = L / M consecutive samples."""
  check_group_size(log_w.shape[0], num_groups)
  return log_w.reshape(num_groups, -1)


def _mean_of_group_bounds(log_w: Array, num_groups: int) -> Array:
  """(1/M) sum_m log (1/K) sum_k w_mk: MIWAE(M, K) of log w [L]."""
  groups = _grouped(log_w, num_groups)
  return jnp.mean(jax.nn.logsumexp(groups, axis=1)) - math.log(groups.shape[1])


def make_miwae(num_groups: int) -> PerExampleEstimator:
  """MIWAE(M, K) (Rainforth et al., "Tighter variational bounds are not
  necessarily better", ICML 2018): the mean of M IWAE bounds of K samples
  each, (1/M) sum_m log (1/K) sum_k w_mk, over L = M K samples (M =
  `num_groups`; the l-th sample is in group l // K). M = 1 is the IWAE bound
  of L samples, K = 1 (M = L) estimator A. A bound between the two, which
  trades the encoder's gradient signal-to-noise ratio (it grows with M)
  against the bound's tightness (it grows with K)."""
  _check_num_groups(num_groups)

  def miwae(encode_fn, log_likelihood_fn, params, x, eps, log_q=GAUSSIAN_LOG_Q):
    log_w = log_importance_weights(encode_fn, log_likelihood_fn, params, x, eps, log_q=log_q)
    return _mean_of_group_bounds(log_w, num_groups)

  return miwae


def make_ciwae(beta: float) -> PerExampleEstimator:
  """CIWAE(beta) (Rainforth et al., 2018): beta ELBO + (1 - beta) IWAE on the
  same L samples, beta (1/L) sum_l log w_l + (1 - beta) log (1/L) sum_l w_l.
  beta = 1 is estimator A, beta = 0 the IWAE bound; every beta in [0, 1]
  gives a lower bound on log p(x)."""
  if not 0.0 <= beta <= 1.0:
    raise ConfigError(
      "ciwae_beta", f"ciwae_beta (CIWAE's weight of the ELBO) must be in [0, 1], got {beta}."
    )

  def ciwae(encode_fn, log_likelihood_fn, params, x, eps, log_q=GAUSSIAN_LOG_Q):
    log_w = log_importance_weights(encode_fn, log_likelihood_fn, params, x, eps, log_q=log_q)
    iwae = jax.nn.logsumexp(log_w) - math.log(log_w.shape[0])
    return beta * jnp.mean(log_w) + (1.0 - beta) * iwae

  return ciwae


def make_piwae(num_groups: int) -> PerExampleEstimator:
  """PIWAE(M, K) (Rainforth et al., 2018): the decoder trained on the IWAE
  bound of all L = M K samples, the encoder on MIWAE(M, K) of the same
  samples. Value: the IWAE bound of the L samples (the decoder's objective).
  The encoder's part takes a second decoder pass with p's parameters
  stopped."""
  _check_num_groups(num_groups)

  def piwae(encode_fn, log_likelihood_fn, params, x, eps, log_q=GAUSSIAN_LOG_Q):
    decoder_log_w, score, path_log_w = _split_log_weights(
      encode_fn, log_likelihood_fn, params, x, eps, log_q, path=True
    )
    # log w through all of q: its path through z and, at the stopped z, -log q's density.
    encoder_log_w = path_log_w - (score - jax.lax.stop_gradient(score))
    decoder_bound = jax.nn.logsumexp(decoder_log_w) - math.log(decoder_log_w.shape[0])
    return _iwae_gradient(
      decoder_log_w, decoder_bound + _mean_of_group_bounds(encoder_log_w, num_groups)
    )

  return piwae


def reconstruction_at_mean(
  encode_fn: EncodeFn,
  log_likelihood_fn: LogLikelihoodFn,
  params: Params,
  x: Array,
) -> Array:
  """log p(x | z = mean(x)) for one example x [data_dim]: a scalar in nats.

  The deterministic autoencoder's objective: the same encoder mean and
  decoder with no noise and no KL. For a Bernoulli decoder it is the negated
  cross-entropy; for a Gaussian one a squared error weighted by the learned
  variance. It is not a bound on log p(x).
  """
  mean, _ = encode_fn(params, x)
  return log_likelihood_fn(params, x, mean)


# The estimators that take `kl_weight` (beta-VAE): those whose value splits
# into a reconstruction term and a KL term. IWAE's log-mean-exp does not split,
# and A's gradient variants would need beta in their own surrogate terms.
KL_WEIGHTED_ESTIMATORS = ("A", "B")

# Every entry is a per-example objective: its value estimates a bound and its
# gradient is the named gradient estimator.
ESTIMATORS: dict[str, PerExampleEstimator] = {
  "A": estimator_a,
  "B": estimator_b,
  "iwae": iwae_bound,
  "stl": estimator_stl,
  "score": score_function,
  "score_baseline": score_function_baseline,
  "dreg": iwae_dreg,
  "iwae_stl": iwae_stl,
  "rws": reweighted_wake_sleep,
  "rws_dreg": reweighted_wake_sleep_dreg,
}


# The estimators made from a setting (`make_estimator`): their factories, and
# the setting each takes (its keyword in `make_elbo`, `TrainConfig`, the flags).
ESTIMATOR_FACTORIES: dict[str, Callable[..., PerExampleEstimator]] = {
  "miwae": make_miwae,
  "ciwae": make_ciwae,
  "piwae": make_piwae,
}
ESTIMATOR_SETTINGS: dict[str, str] = {
  "miwae": "num_groups",
  "ciwae": "ciwae_beta",
  "piwae": "num_groups",
}

ESTIMATOR_NAMES: tuple[str, ...] = (*ESTIMATORS, *ESTIMATOR_FACTORIES)


def make_estimator(
  name: str, num_groups: int = 1, ciwae_beta: float | None = None
) -> PerExampleEstimator:
  """The per-example estimator called `name`, one of `ESTIMATOR_NAMES`.

  num_groups: M of "miwae" and "piwae" (the L samples form M groups of
  K = L / M); 1 for every other estimator. ciwae_beta: beta in [0, 1] of
  "ciwae", which needs it; None for every other estimator. A setting given
  to an estimator that does not take it is refused rather than ignored.
  """
  if name not in ESTIMATOR_NAMES:
    raise ConfigError(
      "estimator", f"Unknown estimator {name!r}; choose one of {sorted(ESTIMATOR_NAMES)}."
    )
  takes = ESTIMATOR_SETTINGS.get(name)
  if num_groups != 1 and takes != "num_groups":
    raise ConfigError(
      "num_groups",
      f"num_groups = {num_groups} splits the samples of miwae and piwae only, not of "
      f"{name!r}; use 1.",
    )
  if ciwae_beta is not None and takes != "ciwae_beta":
    raise ConfigError(
      "ciwae_beta", f"ciwae_beta = {ciwae_beta} is a setting of ciwae only, not of {name!r}."
    )
  if takes is None:
    return ESTIMATORS[name]
  setting = {"num_groups": num_groups, "ciwae_beta": ciwae_beta}[takes]
  if setting is None:
    raise ConfigError(
      "ciwae_beta", "ciwae needs ciwae_beta, its weight of the ELBO in [0, 1] (0 is iwae)."
    )
  return ESTIMATOR_FACTORIES[name](setting)


def check_group_size(num_samples: int, num_groups: int) -> None:
  """Raises a ConfigError unless the L samples split into M groups of
  K = L / M >= 1 (MIWAE and PIWAE)."""
  _check_num_groups(num_groups)
  if num_samples % num_groups:
    raise ConfigError(
      "num_groups",
      f"num_samples L = {num_samples} is not a multiple of num_groups M = {num_groups}: "
      "each of the M groups takes K = L / M >= 1 samples.",
    )


def over_batch(per_example, params: Params, x: Array, eps: Array):
  """vmaps per_example(params, x_i [data_dim], eps_i [L, latent]) over x
  [batch, data_dim] and eps [L, batch, latent]."""
  chex.assert_rank([x, eps], [2, 3])
  chex.assert_equal(eps.shape[1], x.shape[0])
  return jax.vmap(per_example, in_axes=(None, 0, 1))(params, x, eps)


def batch_bound(
  estimator: PerExampleEstimator,
  encode_fn: EncodeFn,
  log_likelihood_fn: LogLikelihoodFn,
  params: Params,
  x: Array,
  eps: Array,
) -> Array:
  """A per-example estimator vmapped over the batch.

  Args:
    estimator: one of `ESTIMATORS`' values.
    encode_fn, log_likelihood_fn, params: see the module docstring.
    x: [batch, data_dim].
    eps: [L, batch, latent_dim] standard-normal noise.

  Returns:
    [batch] per-example bound estimates in nats.
  """
  return over_batch(
    lambda p, x_i, eps_i: estimator(encode_fn, log_likelihood_fn, p, x_i, eps_i),
    params,
    x,
    eps,
  )


def per_example_gradients(
  estimator: PerExampleEstimator,
  encode_fn: EncodeFn,
  log_likelihood_fn: LogLikelihoodFn,
  params: Params,
  x: Array,
  eps: Array,
) -> tuple[Array, Params]:
  """Each example's bound estimate and its gradient: vmap of value_and_grad.

  Args:
    estimator, encode_fn, log_likelihood_fn, params: as for `batch_bound`.
    x: [batch, data_dim].
    eps: [L, batch, latent_dim].

  Returns:
    (bounds [batch], gradients: a pytree like params with a leading [batch]).
  """
  return over_batch(
    jax.value_and_grad(
      lambda p, x_i, eps_i: estimator(encode_fn, log_likelihood_fn, p, x_i, eps_i)
    ),
    params,
    x,
    eps,
  )


def gaussian_weight_log_prior(params: Params, stddev: float = 1.0) -> Array:
  """log N(params; 0, stddev^2 I) summed over every leaf of a pytree.

  The paper's MAP term log p(theta) (its experiments use N(0, I), which acts
  as weight decay). It is a term of the whole data set's objective, so a
  minibatch objective per example adds it as `log_prior / num_train`
  (eq. 8 divided by N); see `vae_jax.training.objectives.with_weight_prior`.
  """
  leaves = jax.tree_util.tree_leaves(params)
  sum_squares = sum(jnp.sum(jnp.square(leaf)) for leaf in leaves)
  count = sum(leaf.size for leaf in leaves)
  return -0.5 * sum_squares / stddev**2 - count * (0.5 * math.log(2.0 * math.pi) + math.log(stddev))
