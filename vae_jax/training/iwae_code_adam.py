"""The Adam of the IWAE authors' code, as an optax transformation.

Burda, Grosse & Salakhutdinov (2016) state Adam with beta1 = 0.9, beta2 =
0.999 and epsilon = 1e-4; their code (github.com/yburda/iwae,
`optimizers.py`, the code its README says made the paper's numbers) runs a
variant, and a reproduction of the paper's tables may want either. With the
gradient G of the minibatch's summed objective, t counting updates from 1,
first moments m starting at 0 and second moments v starting at 1 (not 0):

  theta <- theta + lr * sqrt(1 - beta2^t) / (1 - beta1^t) * m / (sqrt(v) + eps)
  m <- beta1 m + (1 - beta1) G
  v <- beta2 v + (1 - beta2) G^2

with beta1 = 0.99 (its default, which the training script does not
override). Theano computes all of one step's updates from the old values, so
the step moves theta by the moments of the gradients before this one: the
first step moves nothing and every gradient acts one step late. Three more
differences from Adam (Kingma & Ba 2015): v's bias correction assumes v
started at 0, so early steps are shorter, by sqrt(1 - beta2^t) while
sqrt(v) is near 1 (a warm-up over the first few thousand steps); epsilon is
added to the uncorrected sqrt(v); and the gradient is of the minibatch's sum,
not its mean, so epsilon and v's start are M times smaller relative to the
gradient than in an Adam of the mean. `gradient_scale` = M restores that
scale for a loss that is a mean over M examples.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

# The code's defaults; its training script overrides only the learning rate.
IWAE_CODE_BETA1 = 0.99
IWAE_CODE_BETA2 = 0.999
IWAE_CODE_EPSILON = 1e-4


class ScaleByIwaeCodeAdamState(NamedTuple):
  count: jax.Array  # int32 scalar: updates so far (t - 1 at the next update)
  mu: optax.Updates  # first moments of the scaled gradients
  nu: optax.Updates  # second moments, starting at 1


def scale_by_iwae_code_adam(
  b1: float = IWAE_CODE_BETA1,
  b2: float = IWAE_CODE_BETA2,
  eps: float = IWAE_CODE_EPSILON,
  gradient_scale: float = 1.0,
) -> optax.GradientTransformation:
  """The IWAE code's Adam direction (the module docstring has the math).

  Chain it with `optax.scale_by_learning_rate` for the full update.
  gradient_scale: multiplies the gradients before the moments see them; the
    batch size M makes a mean loss's gradients the code's summed ones.
  """

  def init_fn(params):
    return ScaleByIwaeCodeAdamState(
      count=jnp.zeros([], jnp.int32),
      mu=jax.tree.map(jnp.zeros_like, params),
      nu=jax.tree.map(jnp.ones_like, params),
    )

  def update_fn(updates, state, params=None):
    del params
    t = (state.count + 1).astype(jnp.float32)
    # 1 - b^t as -expm1(t log b): in float32, 1 - 0.999^t loses a third of its
    # digits at small t.
    step_size = jnp.sqrt(-jnp.expm1(t * math.log(b2))) / -jnp.expm1(t * math.log(b1))
    # From the old moments: the code's one-step lag.
    direction = jax.tree.map(
      lambda m, v: (step_size * m / (jnp.sqrt(v) + eps)).astype(m.dtype), state.mu, state.nu
    )
    scaled = jax.tree.map(lambda g: gradient_scale * g, updates)
    mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, scaled)
    nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * jnp.square(g), state.nu, scaled)
    return direction, ScaleByIwaeCodeAdamState(count=state.count + 1, mu=mu, nu=nu)

  return optax.GradientTransformation(init_fn, update_fn)


def iwae_code_adam(
  learning_rate: optax.ScalarOrSchedule,
  eps: float = IWAE_CODE_EPSILON,
  gradient_scale: float = 1.0,
) -> optax.GradientTransformation:
  """The IWAE code's Adam at `learning_rate` (a float or an optax schedule),
  minimising the loss whose gradients it is given."""
  return optax.chain(
    scale_by_iwae_code_adam(eps=eps, gradient_scale=gradient_scale),
    optax.scale_by_learning_rate(learning_rate),
  )
