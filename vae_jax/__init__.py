"""vae-jax: Auto-Encoding Variational Bayes (Kingma & Welling, 2014) in JAX/Flax.

The math is in `vae_jax.distributions` (log-densities, KL, sampling),
`vae_jax.posteriors` (families of q(z|x)) and `vae_jax.estimators` (SGVB
estimators A and B, IWAE); the Flax networks in `vae_jax.models`; the pure
entry points below in `vae_jax.api`.
"""

from vae_jax.api import (
    check_data,
    decode,
    decode_mean,
    encode,
    init_params,
    kl_divergence,
    make_elbo,
    make_log_likelihood_estimate,
    make_marginal_likelihood_estimate,
    sample,
)
from vae_jax.models import VAE, make_vae

__all__ = [
    "VAE",
    "check_data",
    "decode",
    "decode_mean",
    "encode",
    "init_params",
    "kl_divergence",
    "make_elbo",
    "make_log_likelihood_estimate",
    "make_marginal_likelihood_estimate",
    "make_vae",
    "sample",
]
__version__ = "0.1.0"
