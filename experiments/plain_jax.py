"""The benchmark's reference: the same work in minimal plain JAX.

What a competent JAX user writes in an afternoon, no vae-jax: tanh MLPs as
lists of (weight, bias) arrays, the loss written inline (estimator B, L = 1:
the analytic KL and one decoder pass), optax, and the whole epoch one jitted
`lax.scan` over minibatches of the on-device data set in a fresh permutation;
for evaluation, all k samples of a few examples at once (or in passes of a
few samples) and a `logsumexp` over k. `experiments/benchmark.py` times it
beside the library.

Each has the simple forms a user might pick, so that the benchmark can hold
the library to the fastest (BUILD.md has their measurements):
  epoch gathers: "step"  each minibatch `data[indices]` inside the scan's step;
                 "epoch" the whole permuted epoch with one `jnp.take` before
                         the scan, which then walks [N // M, M, D];
  estimate:      examples_at_once examples per `lax.map` step, their k
                 samples all at once or `samples_per_pass` at a time.
"""

import jax
import jax.numpy as jnp
import optax

GATHERS = ("step", "epoch")


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


def make_epoch(optimizer, batch_size, gather="step"):
  """A jitted `epoch(params, opt_state, data, key)`; `gather` one of GATHERS."""
  if gather not in GATHERS:
    raise ValueError(f"gather must be one of {GATHERS}, not {gather!r}.")

  def epoch(params, opt_state, data, key):
    order_key, key = jax.random.split(key)
    num_batches = data.shape[0] // batch_size
    order = jax.random.permutation(order_key, data.shape[0])[: num_batches * batch_size]
    order = order.reshape(num_batches, batch_size)
    batches = order if gather == "step" else jnp.take(data, order, axis=0)

    def step(carry, inputs):
      params, opt_state = carry
      batch, step_key = inputs
      x = data[batch] if gather == "step" else batch
      bound, grads = jax.value_and_grad(lambda p: -elbo(p, x, step_key))(params)
      updates, opt_state = optimizer.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), -bound

    inputs = (batches, jax.random.split(key, num_batches))
    (params, opt_state), bounds = jax.lax.scan(step, (params, opt_state), inputs)
    return params, opt_state, bounds

  return jax.jit(epoch, donate_argnums=(0, 1))


def make_log_likelihood(num_samples, examples_at_once, samples_per_pass=None):
  """log p(x) estimated with k = num_samples importance samples,
  examples_at_once examples (a divisor of the number evaluated) per step of a
  `lax.map`, and their samples all at once or, with samples_per_pass (a
  divisor of k), that many at a time."""
  samples_per_pass = samples_per_pass or num_samples
  if num_samples % samples_per_pass:
    raise ValueError(f"samples_per_pass {samples_per_pass} must divide k = {num_samples}.")

  def log_likelihood(params, data, key):
    latent_dim = params["decoder"][0][0].shape[0]

    def log_weights(x, pass_key):
      eps = jax.random.normal(pass_key, (samples_per_pass, x.shape[0], latent_dim))
      log_px, _, logvar, z = log_joint_terms(params, x, eps)
      log_prior = -0.5 * jnp.sum(z**2 + jnp.log(2 * jnp.pi), axis=-1)
      log_q = -0.5 * jnp.sum(eps**2 + logvar + jnp.log(2 * jnp.pi), axis=-1)
      return log_px + log_prior - log_q

    def chunk(inputs):
      x, chunk_key = inputs
      pass_keys = jax.random.split(chunk_key, num_samples // samples_per_pass)
      weights = jax.lax.map(lambda k: log_weights(x, k), pass_keys)
      return jax.nn.logsumexp(weights.reshape(num_samples, -1), axis=0) - jnp.log(num_samples)

    chunks = data.reshape(-1, examples_at_once, data.shape[-1])
    keys = jax.random.split(key, chunks.shape[0])
    return jax.lax.map(chunk, (chunks, keys)).reshape(-1)

  return jax.jit(log_likelihood)
