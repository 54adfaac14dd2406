"""A linear-Gaussian VAE in which the ELBO, log p(x) and the posterior are analytic.

Model: z ~ N(0, I_k), x | z ~ N(W z + b, s^2 I_D). Then
  log p(x) = log N(x; b, W W^T + s^2 I),
  p(z | x) = N(V W^T (x - b) / s^2, V) with V = (I + W^T W / s^2)^-1,
and for q(z|x) = N(m, diag v) the ELBO is
  -D/2 log(2 pi s^2) - (|x - W m - b|^2 + sum_j v_j |W_:j|^2) / (2 s^2) - KL(q || p(z)).
The encoder is affine, m = A x + a, with a free log-variance vector, so the
exact posterior is reachable when W has orthogonal columns (V diagonal).
"""

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from vae_jax.math import distributions

LATENT_DIM, DATA_DIM, BATCH = 3, 6, 4
NOISE_STD = 0.7


def z_score(num_comparisons: int, false_alarm: float = 1e-3) -> float:
  return float(stats.norm.isf(false_alarm / (2 * num_comparisons)))


def encode_fn(params, x):
  return params["enc_A"] @ x + params["enc_a"], params["enc_logvar"]


def log_likelihood_fn(params, x, z):
  mean = params["W"] @ z + params["b"]
  logvar = jnp.full_like(x, 2.0 * np.log(NOISE_STD))
  return distributions.gaussian_log_prob(mean, logvar, x)


def analytic_elbo(params, x):
  """Exact ELBO per example. x: [batch, D] -> [batch]."""
  mean, logvar = jax.vmap(encode_fn, in_axes=(None, 0))(params, x)
  W, b = params["W"], params["b"]
  residual = x - mean @ W.T - b
  column_norms = jnp.sum(W**2, axis=0)
  expected_log_lik = -0.5 * DATA_DIM * jnp.log(2 * jnp.pi * NOISE_STD**2) - (
    jnp.sum(residual**2, -1) + jnp.exp(logvar) @ column_norms
  ) / (2 * NOISE_STD**2)
  return expected_log_lik - distributions.kl_standard_normal(mean, logvar)


def log_marginal(params, x):
  W, b = np.asarray(params["W"]), np.asarray(params["b"])
  cov = W @ W.T + NOISE_STD**2 * np.eye(DATA_DIM)
  return stats.multivariate_normal(b, cov).logpdf(np.asarray(x))


def orthogonal_decoder(rng):
  q, _ = np.linalg.qr(rng.normal(size=(DATA_DIM, LATENT_DIM)))
  return q * np.array([2.0, 1.0, 0.5]), rng.normal(size=DATA_DIM)


def random_params(rng):
  W, b = orthogonal_decoder(rng)
  return {
    "W": jnp.asarray(W),
    "b": jnp.asarray(b),
    "enc_A": jnp.asarray(rng.normal(0.0, 0.3, size=(LATENT_DIM, DATA_DIM))),
    "enc_a": jnp.asarray(rng.normal(0.0, 0.3, size=LATENT_DIM)),
    "enc_logvar": jnp.asarray(rng.normal(-1.0, 0.3, size=LATENT_DIM)),
  }


def exact_posterior_params(rng):
  W, b = orthogonal_decoder(rng)
  posterior_var = 1.0 / (1.0 + np.sum(W**2, axis=0) / NOISE_STD**2)
  gain = (posterior_var[:, None] * W.T) / NOISE_STD**2
  return {
    "W": jnp.asarray(W),
    "b": jnp.asarray(b),
    "enc_A": jnp.asarray(gain),
    "enc_a": jnp.asarray(-gain @ b),
    "enc_logvar": jnp.asarray(np.log(posterior_var)),
  }


def data(rng):
  return jnp.asarray(rng.normal(size=(BATCH, DATA_DIM)))


def log_marginal_jax(params, x):
  """log p(x) in jnp, differentiable in the decoder's W and b. x: [batch, D]."""
  W, b = params["W"], params["b"]
  cov = W @ W.T + NOISE_STD**2 * jnp.eye(DATA_DIM)
  return jax.scipy.stats.multivariate_normal.logpdf(x, b, cov)
