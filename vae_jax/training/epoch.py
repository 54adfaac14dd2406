"""One epoch of any training algorithm as a single compiled `lax.scan`, and
the AEVB / wake-sleep / autoencoder step it scans.

Knows nothing of flags or files. The data set is an on-device array
`[num_examples, data_dim]`; one epoch (shuffle, optional dynamic
binarisation, every minibatch step) is one compiled program, so Python is not
in the inner loop. `make_epoch` is that program for any step function: AEVB
(`make_train_epoch`), MCEM (`vae_jax.training.mcem`) and M2
(`vae_jax.training.semi_supervised`) each write only their step.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from vae_jax.data.transforms import binarize
from vae_jax.inference import bounds
from vae_jax.models.vae import VAE
from vae_jax.training.objectives import training_objective, with_weight_prior
from vae_jax.training.parallel import BATCH_AXIS
from vae_jax.training.state import TrainConfig, TrainState, apply_gradients, make_optimizer

Array = jax.Array
# A pytree that carries its run's PRNG key as `key` and replaces it with
# `with_key(key)`: `TrainState`, `mcem.MCEMState`.
State = TypeVar("State")
EpochFn = Callable[..., tuple[Any, Any]]


def make_train_step(
  model: VAE, config: TrainConfig, num_train: int, learning_rate: Any = None
) -> Callable[[TrainState, Array, Array], tuple[TrainState, Array]]:
  """Returns `train_step(state, batch, key) -> (state, mean bound)`.

  batch: [M, data_dim]; the mean bound (nats per example, `config.estimator`)
  is of the batch before the update, without the weight prior. Whatever the
  algorithm or kl_weight, it is the bound (the ELBO for A and B).
  learning_rate: in place of `config.learning_rate` (see `make_optimizer`).
  """
  elbo = bounds.make_elbo(
    model,
    config.estimator,
    config.num_samples,
    posterior=config.posterior_family,
    **config.estimator_settings,
  )
  objective_fn = training_objective(model, config)
  optimizer = make_optimizer(config, num_train, learning_rate)

  def loss_fn(params, batch, key):
    bounds = elbo(params, batch, key)
    per_example = bounds
    if objective_fn is not None:
      bounds = jax.lax.stop_gradient(bounds)  # reported only: no backward pass
      # The same key: where the objective shares the bound's noise, XLA
      # computes the shared passes once.
      per_example = objective_fn(params, batch, key)
    objective = with_weight_prior(jnp.mean(per_example), params, num_train, config)
    return -objective, jnp.mean(bounds)

  # The named scopes label the ops in profiles (experiments/benchmark.py --profile_dir).
  def train_step(state: TrainState, batch: Array, key: Array):
    with jax.named_scope("bound_and_gradient"):
      grads, bound = jax.grad(loss_fn, has_aux=True)(state.params, batch, key)
    with jax.named_scope("optimizer_update"):
      state = apply_gradients(state, grads, optimizer)
    return state, bound

  return train_step


class Minibatch(NamedTuple):
  """One step's share of an epoch, as `make_epoch` hands it to the step."""

  indices: Array  # [M] int: the rows of the epoch's data set in this minibatch
  x: Array  # [M, data_dim]: those rows, binarised anew if `config.dynamic_binarization`
  key: Array  # the step's own PRNG key


# How many examples an epoch gathers and binarises at once: PRNG draws of
# 1,000 rows cost about a third per number of 20-row draws on a 2-core CPU
# (BUILD.md), while a chunk's [rows, data_dim] stays small.
EXAMPLES_PER_CHUNK = 1000


class EpochPlan(NamedTuple):
  """What an epoch draws before its first step: its N // M steps in C
  chunks of K consecutive steps (K, `steps_per_chunk`, divides N // M)."""

  indices: Array  # [C, K, M] int: the minibatches' rows, a fresh random order
  binarize_keys: Array  # [C] keys: each chunk's binarisation (if dynamic)
  step_keys: Array  # [C, K] keys: each step's own noise


def steps_per_chunk(num_batches: int, batch_size: int) -> int:
  """K: the most consecutive steps, a divisor of num_batches, whose
  minibatches hold at most EXAMPLES_PER_CHUNK examples (at least one step)."""
  limit = max(1, EXAMPLES_PER_CHUNK // batch_size)
  return max(k for k in range(1, min(limit, num_batches) + 1) if num_batches % k == 0)


def plan_epoch(key: Array, num_examples: int, config: TrainConfig) -> tuple[Array, EpochPlan]:
  """Draws one epoch's order and keys from the run key: returns (the run's
  next key, the plan). The last N % M examples of the order sit the epoch out."""
  next_key, shuffle_key, binarize_key, step_key = jax.random.split(key, 4)
  num_batches = num_examples // config.batch_size
  chunk = steps_per_chunk(num_batches, config.batch_size)
  with jax.named_scope("shuffle_and_binarize"):
    order = jax.random.permutation(shuffle_key, num_examples)
    indices = order[: num_batches * config.batch_size]
  return next_key, EpochPlan(
    indices.reshape(num_batches // chunk, chunk, config.batch_size),
    jax.random.split(binarize_key, num_batches // chunk),
    jax.random.split(step_key, num_batches).reshape(num_batches // chunk, chunk),
  )


def gather_minibatches(
  data: Array, indices: Array, binarize_key: Array, config: TrainConfig
) -> Array:
  """data[indices] [K, M, data_dim] for one chunk's indices [K, M],
  binarised with binarize_key if `config.dynamic_binarization`. Gathered a
  chunk at a time inside the epoch's loop, so that no shuffled copy of the
  whole data set is made (it would double the data set's memory, and its
  gather costs more time than the chunks', which stay in cache)."""
  with jax.named_scope("shuffle_and_binarize"):
    x = data[indices]
    return binarize(binarize_key, x) if config.dynamic_binarization else x


def make_epoch(
  step: Callable[..., tuple[State, Any]],
  config: TrainConfig,
  batch_sharding: jax.sharding.Sharding | None = None,
  over_runs: Callable[[EpochFn], EpochFn] | None = None,
  **jit_options: Any,
) -> EpochFn:
  """Returns a jitted `epoch(state, data, *step_args) -> (state, aux)`.

  The glue that every algorithm's epoch shares. data: [N, data_dim] on
  device. The epoch
    1. draws from the state's run key (`state.key`) the data's order, a
       binarisation key per chunk of steps and a noise key per step
       (`plan_epoch`);
    2. scans `step(state, minibatch, *step_args) -> (state, aux)` over the
       N // M minibatches (`Minibatch`; the last N % M examples of the order
       sit out), gathering and binarising them a chunk at a time
       (`gather_minibatches`), and stacks aux on a leading [N // M] axis;
    3. stores the run's next key in the state (`state.with_key`).
  step_args are arguments of the compiled epoch, not constants baked into it
  (M2's labelled set, a sweep's per-run learning rate). The input state's
  buffers are donated to the output: use only the returned state afterwards.

  Args:
    step: one update on one minibatch; it owns all the algorithm's arithmetic.
    config: the minibatch size M and whether to binarise dynamically.
    batch_sharding: where to place each chunk of minibatches [K, M,
      data_dim]; data-parallel training splits each along the mesh's batch axis.
    over_runs: turns the one-run epoch into the function that is compiled,
      e.g. `jax.vmap` over a leading axis of runs.
    **jit_options: further `jax.jit` options, such as the shardings of the
      epoch's inputs and outputs.
  """

  def epoch(state: State, data: Array, *step_args: Any) -> tuple[State, Any]:
    next_key, plan = plan_epoch(state.key, data.shape[0], config)

    def scanned_chunk(carry: State, chunk: EpochPlan) -> tuple[State, Any]:
      x = gather_minibatches(data, chunk.indices, chunk.binarize_keys, config)
      if batch_sharding is not None:
        x = jax.lax.with_sharding_constraint(x, batch_sharding)
      return jax.lax.scan(
        lambda state, minibatch: step(state, minibatch, *step_args),
        carry,
        Minibatch(chunk.indices, x, chunk.step_keys),
      )

    state, aux = jax.lax.scan(scanned_chunk, state, plan)
    # [C, K, ...] -> [N // M, ...], one entry per step.
    aux = jax.tree.map(lambda a: a.reshape(-1, *a.shape[2:]), aux)
    return state.with_key(next_key), aux

  if over_runs is not None:
    epoch = over_runs(epoch)
  return jax.jit(epoch, donate_argnums=0, **jit_options)


def make_train_epoch(
  model: VAE,
  config: TrainConfig,
  num_train: int,
  mesh: jax.sharding.Mesh | None = None,
  multi_run: bool = False,
  learning_rates: Any = None,
) -> Callable[[TrainState, Array], tuple[TrainState, Array]]:
  """Returns a jitted `train_epoch(state, train_data) -> (state, bounds)`.

  train_data: [N, data_dim] on device. One epoch (`make_epoch`) shuffles it
  with the state's key, binarises it if configured, and scans `train_step`
  over N // M minibatches (the last N % M examples of the permutation sit
  out this epoch). bounds: [N // M] per-step mean bounds in nats. The input
  state's buffers are donated to the output: use only the returned state
  afterwards.

  With a `mesh`, training is data-parallel: every minibatch is split along
  the mesh's batch axis, state and data are expected replicated (`replicate`),
  and XLA sums the gradients across devices. The returned state and bounds
  are replicated too, so that every process can read them. The mesh may span
  several processes (`jax.distributed`): each then runs the same program on
  the same replicated inputs. The noise and the permutation do not depend on
  the mesh, so the result equals the single-device one up to the order of
  floating-point sums.

  With `multi_run`, the state has a leading [num_runs] axis (see
  `init_train_states`) and one compiled program trains every run on the same
  data with its own key: bounds are then [num_runs, N // M]. With
  `learning_rates` as well ([num_runs] positive rates), that program is a
  learning-rate sweep: run i trains at learning_rates[i] in place of
  `config.learning_rate` (with a schedule, its starting rate), with the same
  arithmetic as a single run made at that rate.

  With both, the runs are split over the mesh's devices instead (a single
  process; the number of runs a multiple of theirs): each device trains its
  runs on its own copy of the data, with no communication. The state is
  expected split so (`shard_runs`), and the returned state and bounds are.
  """
  data_parallel = mesh is not None and not multi_run
  if learning_rates is not None:
    learning_rates = np.asarray(learning_rates, np.float32)
    if not multi_run or learning_rates.ndim != 1 or not np.all(learning_rates > 0):
      raise ValueError(
        "learning_rates must be a 1-D sequence of positive rates, one per run of a "
        f"multi_run epoch; got {learning_rates.tolist()} with multi_run={multi_run}."
      )
  if num_train < config.batch_size:
    raise ValueError(f"batch_size {config.batch_size} exceeds the {num_train} training examples.")
  if data_parallel and config.batch_size % mesh.size:
    raise ValueError(
      f"batch_size {config.batch_size} must be a multiple of the {mesh.size} "
      "devices it is split over."
    )

  def step(state: TrainState, minibatch: Minibatch, learning_rate: Any = None):
    # Made here, in the epoch's trace: in a sweep, learning_rate is one run's.
    train_step = make_train_step(model, config, num_train, learning_rate)
    return train_step(state, minibatch.x, minibatch.key)

  over_runs = _over_runs(multi_run, learning_rates)
  if mesh is None:
    return make_epoch(step, config, over_runs=over_runs)
  replicated = NamedSharding(mesh, PartitionSpec())
  if data_parallel:
    return make_epoch(
      step,
      config,
      batch_sharding=NamedSharding(mesh, PartitionSpec(None, BATCH_AXIS)),
      out_shardings=replicated,
    )
  by_run = NamedSharding(mesh, PartitionSpec(BATCH_AXIS))
  return make_epoch(
    step, config, over_runs=over_runs, in_shardings=(by_run, replicated), out_shardings=by_run
  )


def _over_runs(
  multi_run: bool, learning_rates: np.ndarray | None
) -> Callable[[EpochFn], EpochFn] | None:
  """How `make_train_epoch` maps its one-run epoch over a leading axis of runs
  (at learning_rates [num_runs], one per run, if given); None for one run."""
  if learning_rates is None:
    return functools.partial(jax.vmap, in_axes=(0, None)) if multi_run else None

  def sweep(epoch: EpochFn) -> EpochFn:
    epoch_per_run = jax.vmap(epoch, in_axes=(0, None, 0))

    def train_epoch(state: TrainState, train_data: Array):
      if state.step.shape != learning_rates.shape:
        raise ValueError(
          f"The state holds {state.step.shape[0]} runs but learning_rates "
          f"{learning_rates.size} rates."
        )
      return epoch_per_run(state, train_data, learning_rates)

    return train_epoch

  return sweep
