"""The IWAE code's Adam against its update equations, written out in NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vae_jax.training import TrainConfig, make_optimizer


def _iwae_code_steps(loss_grads, rates, batch_size, eps, b1=0.99, b2=0.999):
  """The parameters' steps under the code's update (yburda/iwae optimizers.py),
  in float64: it ascends the minibatch's summed objective, whose gradient is
  -batch_size times a mean loss's, and all of a step's updates read the old
  values (Theano's updates)."""
  theta = np.zeros_like(loss_grads[0])
  m, v = np.zeros_like(theta), np.ones_like(theta)
  path = [theta]
  for t, (g, rate) in enumerate(zip(loss_grads, rates, strict=True), start=1):
    objective_grad = -batch_size * g
    alpha = rate * np.sqrt(1 - b2**t) / (1 - b1**t)
    theta, m, v = (
      theta + alpha * m / (np.sqrt(v) + eps),
      b1 * m + (1 - b1) * objective_grad,
      b2 * v + (1 - b2) * objective_grad**2,
    )
    path.append(theta)
  return np.diff(path, axis=0)


@pytest.mark.parametrize("eps", [1e-4, 1.0])
def test_iwae_code_adam_follows_the_code_through_a_stage_change(eps):
  # num_train = 2 M: two steps per epoch, so the IWAE schedule's stage 1
  # starts at the third step and stage 2 at the ninth.
  batch_size = 4
  config = TrainConfig(
    batch_size=batch_size,
    optimizer="iwae_code_adam",
    learning_rate=0.1,
    learning_rate_schedule="iwae",
    adam_epsilon=eps,
  )
  optimizer = make_optimizer(config, num_train=2 * batch_size)
  loss_grads = np.random.default_rng(0).normal(scale=[1e-3, 0.1, 3.0], size=(10, 3))
  rates = 0.1 * 10.0 ** (-np.array([0, 0, 1, 1, 1, 1, 1, 1, 2, 2]) / 7)
  opt_state = optimizer.init({"w": jnp.zeros(3)})
  update = jax.jit(optimizer.update)
  steps = []
  for g in loss_grads:
    updates, opt_state = update({"w": jnp.asarray(g, jnp.float32)}, opt_state)
    steps.append(np.asarray(updates["w"]))
  assert np.all(steps[0] == 0)  # the first step moves nothing: the one-step lag
  np.testing.assert_allclose(steps, _iwae_code_steps(loss_grads, rates, batch_size, eps), rtol=1e-5)


def test_iwae_code_adam_checkpoints_as_arrays_and_keeps_the_dtype():
  optimizer = make_optimizer(TrainConfig(optimizer="iwae_code_adam", learning_rate=1e-3))
  params = {"b": jnp.zeros(2, jnp.bfloat16), "w": jnp.zeros((2, 2))}
  state = optimizer.init(params)
  updates, state = optimizer.update(jax.tree.map(jnp.ones_like, params), state)
  updates, state = optimizer.update(jax.tree.map(jnp.ones_like, params), state)
  assert jax.tree.map(lambda u: u.dtype, updates) == jax.tree.map(lambda p: p.dtype, params)
  assert all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(state))
