"""The benchmark's reference: the same work in minimal plain JAX.

What a competent JAX user writes in an afternoon, no vae-jax: tanh MLPs as
lists of (weight, bias) arrays, the loss written inline (estimator B, L = 1:
the analytic KL and one decoder pass), optax, and the whole epoch one jitted
`lax.scan` over minibatches gathered from the on-device data set by a fresh
permutation; for evaluation, all k samples of a few examples at once and a
`logsumexp` over k. `experiments/benchmark.py` times it beside the library.
"""

import jax
import jax.numpy as jnp
import optax


def init_mlp(key, sizes):
  keys = jax.random.split(key, len(sizes) - 1)
  return [
    (jax.random.normal(k, (m, n)) * jnp.sqrt(1.0 / m), jnp.zeros(n))
    for k, m, n in zip(keys, sizes[:-1], sizes[1:], strict=True)
  ]


def mlp(layers, x):
  for w, b in layers[:-1]:
    x = jnp.tanh(x @ w + b)
  w, b = layers[-1]
  return x @ w + b


def init(key, data_dim, hidden_sizes, latent_dim):
  encoder_key, decoder_key = jax.random.split(key)
  sizes = [data_dim, *hidden_sizes]
  return {
    "encoder": init_mlp(encoder_key, [*sizes, 2 * latent_dim]),
    "decoder": init_mlp(decoder_key, [latent_dim, *sizes[::-1]]),
  }


def log_joint_terms(params, x, eps):
  """(log p(x|z) [..., n], KL [n]) for x [n, D] and noise eps [..., n, J]."""
  mean, logvar = jnp.split(mlp(params["encoder"], x), 2, axis=-1)
  z = mean + jnp.exp(0.5 * logvar) * eps
  logits = mlp(params["decoder"], z)
  log_px = jnp.sum(x * logits - jnp.logaddexp(0.0, logits), axis=-1)
  return log_px, mean, logvar, z


def elbo(params, x, key):
  eps = jax.random.normal(key, (x.shape[0], params["decoder"][0][0].shape[0]))
  log_px, mean, logvar, _ = log_joint_terms(params, x, eps)
  kl = 0.5 * jnp.sum(jnp.exp(logvar) + mean**2 - 1.0 - logvar, axis=-1)
  return jnp.mean(log_px - kl)


def make_epoch(optimizer, batch_size):
  def epoch(params, opt_state, data, key):
    order_key, key = jax.random.split(key)
    num_batches = data.shape[0] // batch_size
    order = jax.random.permutation(order_key, data.shape[0])[: num_batches * batch_size]

    def step(carry, inputs):
      params, opt_state = carry
      indices, step_key = inputs
      bound, grads = jax.value_and_grad(lambda p: -elbo(p, data[indices], step_key))(params)
      updates, opt_state = optimizer.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), -bound

    inputs = (order.reshape(num_batches, batch_size), jax.random.split(key, num_batches))
    (params, opt_state), bounds = jax.lax.scan(step, (params, opt_state), inputs)
    return params, opt_state, bounds

  return jax.jit(epoch, donate_argnums=(0, 1))


def make_log_likelihood(num_samples, examples_at_once):
  """log p(x) estimated with k = num_samples importance samples, examples_at_once
  examples (a divisor of the number evaluated) and all their samples per pass."""

  def log_likelihood(params, data, key):
    def chunk(inputs):
      x, chunk_key = inputs
      latent_dim = params["decoder"][0][0].shape[0]
      eps = jax.random.normal(chunk_key, (num_samples, x.shape[0], latent_dim))
      log_px, mean, logvar, z = log_joint_terms(params, x, eps)
      log_prior = -0.5 * jnp.sum(z**2 + jnp.log(2 * jnp.pi), axis=-1)
      log_q = -0.5 * jnp.sum(eps**2 + logvar + jnp.log(2 * jnp.pi), axis=-1)
      return jax.nn.logsumexp(log_px + log_prior - log_q, axis=0) - jnp.log(num_samples)

    chunks = data.reshape(-1, examples_at_once, data.shape[-1])
    keys = jax.random.split(key, chunks.shape[0])
    return jax.lax.map(chunk, (chunks, keys)).reshape(-1)

  return jax.jit(log_likelihood)
