"""Bounds and inference algorithms on a model, as pure functions of (params, x, key):
`bounds` (make_elbo, the k-sample log-likelihood, the autoencoder objective),
`wake_sleep`, `hmc`, `marginal_likelihood` (App. D), `semi_supervised` (M2's
bounds and objective) and `variance` (estimator moments). Imports
`vae_jax.math` and `vae_jax.models`.
"""
