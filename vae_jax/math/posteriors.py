"""Reparameterisable families for the approximate posterior q(z|x), plain jnp.

Every family is a location-scale family over each latent coordinate:
z = loc + scale * eps with eps drawn from the family's standardised
distribution, loc = the encoder's "mean" output and scale =
exp(logvar / 2) from its "logvar" output. So `distributions.reparameterize`
maps noise to z for every family, and only the noise and the log-density
differ. For the Gaussian, loc and scale^2 are the mean and variance; for the
others they are location and squared scale (see each family's moments).

Families (`POSTERIORS`):
  gaussian    N(0, 1) noise: the paper's q, and the only one with a
              closed-form KL to N(0, I) (estimator B).
  laplace     Laplace(0, 1), heavier (exponential) tails.
  logistic    Logistic(0, 1).
  student_t   Student's t with a fixed number of degrees of freedom.
  gumbel      Gumbel(0, 1) by inverse CDF, eps = -log(-log u), u ~ U(0, 1):
              a skewed family on the whole real line, so that the N(0, I)
              prior keeps its support (an Exponential q would need a prior on
              z > 0, under which N(0, I) is not a density).
  johnson_su  a composition, eps = sinh(n) with n ~ N(0, 1) (Johnson's S_U
              with a = 0, b = 1): heavy-tailed on the real line. A log-normal
              (eps = exp(n)) is the obvious composition but lives on z > loc,
              where the N(0, I) prior cannot be matched; sinh keeps R.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.scipy.special import gammaln

from vae_jax.errors import ConfigError
from vae_jax.math import distributions

Array = jax.Array

EULER_GAMMA = 0.5772156649015329


@dataclasses.dataclass(frozen=True)
class Posterior:
  """A location-scale family for q(z|x).

  Attributes:
    name: one of `POSTERIORS`.
    sample_noise: (key, shape, dtype) -> eps [shape], standardised draws.
    log_prob: (loc [..., J], logvar [..., J], z [..., J]) -> [...], log q(z)
      summed over the last axis, in nats.
    noise_mean, noise_variance: moments of one standardised coordinate; z
      has mean loc + scale * noise_mean and variance scale^2 * noise_variance.
    analytic_kl: whether KL(q || N(0, I)) has a closed form (estimator B).
  """

  name: str
  sample_noise: Callable[[Array, tuple[int, ...], jnp.dtype], Array]
  log_prob: Callable[[Array, Array, Array], Array]
  noise_mean: float
  noise_variance: float
  analytic_kl: bool = False


def _location_scale_log_prob(
  standard_log_prob: Callable[[Array], Array],
) -> Callable[[Array, Array, Array], Array]:
  """log q(z) = sum_j [log f((z_j - loc_j) / scale_j) - log scale_j] for the
  elementwise standardised log-density f."""

  def log_prob(loc: Array, logvar: Array, z: Array) -> Array:
    standardized = (z - loc) * jnp.exp(-0.5 * logvar)
    return jnp.sum(standard_log_prob(standardized) - 0.5 * logvar, axis=-1)

  return log_prob


def _gumbel_noise(key: Array, shape, dtype) -> Array:
  # Inverse CDF of Gumbel(0, 1); u > 0 keeps -log(u) finite, u < 1 (maxval
  # is exclusive) keeps it positive.
  u = jax.random.uniform(key, shape, dtype, minval=jnp.finfo(dtype).tiny, maxval=1.0)
  return -jnp.log(-jnp.log(u))


def _standard_normal_log_density(n: Array) -> Array:
  return -0.5 * (math.log(2.0 * math.pi) + jnp.square(n))


def student_t(dof: float) -> Posterior:
  """Student's t location-scale family with `dof` > 0 degrees of freedom
  (finite variance dof / (dof - 2) needs dof > 2; it is inf otherwise)."""
  if not dof > 0:
    raise ConfigError("student_t_dof", f"student_t_dof must be > 0, got {dof}.")
  log_norm = gammaln((dof + 1) / 2) - gammaln(dof / 2) - 0.5 * math.log(dof * math.pi)
  return Posterior(
    name="student_t",
    sample_noise=lambda key, shape, dtype: jax.random.t(key, dof, shape, dtype),
    log_prob=_location_scale_log_prob(
      lambda u: log_norm - 0.5 * (dof + 1) * jnp.log1p(jnp.square(u) / dof)
    ),
    noise_mean=0.0,
    noise_variance=dof / (dof - 2) if dof > 2 else math.inf,
  )


GAUSSIAN = Posterior(
  name="gaussian",
  sample_noise=lambda key, shape, dtype: jax.random.normal(key, shape, dtype),
  log_prob=distributions.gaussian_log_prob,
  noise_mean=0.0,
  noise_variance=1.0,
  analytic_kl=True,
)

_FIXED = {
  "gaussian": GAUSSIAN,
  "laplace": Posterior(
    name="laplace",
    sample_noise=lambda key, shape, dtype: jax.random.laplace(key, shape, dtype),
    log_prob=_location_scale_log_prob(lambda u: -jnp.abs(u) - math.log(2.0)),
    noise_mean=0.0,
    noise_variance=2.0,
  ),
  "logistic": Posterior(
    name="logistic",
    sample_noise=lambda key, shape, dtype: jax.random.logistic(key, shape, dtype),
    log_prob=_location_scale_log_prob(lambda u: -u - 2.0 * jax.nn.softplus(-u)),
    noise_mean=0.0,
    noise_variance=math.pi**2 / 3.0,
  ),
  "gumbel": Posterior(
    name="gumbel",
    sample_noise=_gumbel_noise,
    log_prob=_location_scale_log_prob(lambda u: -(u + jnp.exp(-u))),
    noise_mean=EULER_GAMMA,
    noise_variance=math.pi**2 / 6.0,
  ),
  "johnson_su": Posterior(
    name="johnson_su",
    sample_noise=lambda key, shape, dtype: jnp.sinh(jax.random.normal(key, shape, dtype)),
    # Change of variables u = sinh(n): log phi(asinh u) - log sqrt(1 + u^2).
    log_prob=_location_scale_log_prob(
      lambda u: _standard_normal_log_density(jnp.arcsinh(u)) - 0.5 * jnp.log1p(jnp.square(u))
    ),
    noise_mean=0.0,
    noise_variance=(math.e**2 - 1.0) / 2.0,
  ),
}

POSTERIORS = (*_FIXED, "student_t")


def make_posterior(name: str, student_t_dof: float = 5.0) -> Posterior:
  """The family `name` (one of `POSTERIORS`); `student_t_dof` is used by
  "student_t" only."""
  if name == "student_t":
    return student_t(student_t_dof)
  if name not in _FIXED:
    raise ConfigError("posterior", f"Unknown posterior {name!r}; choose one of {list(POSTERIORS)}.")
  return _FIXED[name]
