"""The math of AEVB, per example and in plain `jax.numpy`: log-densities and KL
(`distributions`), reparameterisable families of q(z|x) (`posteriors`) and the
SGVB estimators A, B and their relatives (`estimators`), and those for two
stochastic layers (`two_layers`). Nothing here imports
Flax, optax or any other layer of vae_jax.
"""
