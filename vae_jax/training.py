"""AEVB training: train state, optimiser, jitted step, scanned epoch, evaluation.

Knows nothing of flags or files: `experiments/train.py` drives it. The data
set is an on-device array `[num_examples, data_dim]`; one epoch (shuffle,
optional dynamic binarisation, every minibatch step) is a single compiled
`lax.scan`, so Python is not in the inner loop.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

from vae_jax import api, estimators, posteriors
from vae_jax.data.transforms import binarize
from vae_jax.models import VAE

Array = jax.Array
Params = Any

OPTIMIZERS = ("adagrad", "adam", "sgd")
ALGORITHMS = ("aevb", "wake_sleep", "autoencoder")
LEARNING_RATE_SCHEDULES = ("constant", "iwae")
# The IWAE paper's schedule (Burda et al. 2016, Sec. 5): stage i = 0..7 lasts
# 3^i epochs at learning_rate * 10^(-i/7), 3280 epochs in all.
IWAE_SCHEDULE_STAGES = 8


@flax.struct.dataclass
class TrainState:
  """Everything a run needs to continue bit for bit: a pytree.

  The PRNG key is kept as raw key data (uint32) so that it checkpoints as a
  plain array.
  """

  step: Array  # int32 scalar: minibatch updates so far
  params: Params
  opt_state: optax.OptState
  key_data: Array  # jax.random.key_data of the training key

  @property
  def key(self) -> Array:
    return jax.random.wrap_key_data(self.key_data)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """How to optimise. Defaults are the paper's MNIST settings (Sec. 5).

  Attributes:
    algorithm: "aevb" ascends the bound of `estimator`; "wake_sleep" (the
      paper's baseline, `vae_jax.wake_sleep`) follows the wake-sleep updates
      and reports `estimator`'s bound; "autoencoder" trains the encoder mean
      and the decoder as a deterministic autoencoder, log p(x | z = mean(x))
      (`api.make_autoencoder_objective`), and also reports `estimator`'s
      bound of the model, which is not what it optimises.
    estimator: "A", "B" or "iwae" (see `vae_jax.estimators`).
    num_samples: L, samples of z per example per step.
    batch_size: M, examples per minibatch.
    optimizer: "adagrad" (the paper), "adam" or "sgd".
    learning_rate: step size (the paper: 0.01, 0.02 or 0.1 with Adagrad); with
      a schedule, its starting value.
    learning_rate_schedule: "constant", or "iwae": the IWAE paper's staged
      decay (`iwae_learning_rate`), which counts epochs, so the optimiser
      needs the training set size.
    adam_epsilon: Adam's epsilon (optax's default 1e-8; the IWAE paper: 1e-4).
    adagrad_initial_accumulator: starting value of Adagrad's sum of squared
      gradients; classic Adagrad starts at 0, optax's default is 0.1.
    weight_prior: add the paper's N(0, I) prior on all parameters (MAP, acts
      as weight decay), scaled by M/N per minibatch.
    prior_stddev: standard deviation of that prior.
    dynamic_binarization: re-draw binary data from grey levels every epoch.
    kl_weight: beta of the beta-VAE objective (Higgins et al., 2017), "aevb"
      with estimator "A" or "B" only: training ascends E_q log p(x|z) -
      beta KL(q || p); 1 is the ELBO. The reported bound stays the ELBO.
    posterior: the family of q(z|x), one of `posteriors.POSTERIORS`; all but
      "gaussian" need an estimator other than "B" and algorithm "aevb" or
      "autoencoder" (wake-sleep's sleep phase fits a Gaussian q).
    student_t_dof: degrees of freedom of the "student_t" posterior.
  """

  algorithm: str = "aevb"
  estimator: str = "B"
  num_samples: int = 1
  batch_size: int = 100
  optimizer: str = "adagrad"
  learning_rate: float = 0.02
  learning_rate_schedule: str = "constant"
  adam_epsilon: float = 1e-8
  adagrad_initial_accumulator: float = 0.0
  weight_prior: bool = False
  prior_stddev: float = 1.0
  dynamic_binarization: bool = False
  kl_weight: float = 1.0
  posterior: str = "gaussian"
  student_t_dof: float = 5.0

  def __post_init__(self):
    if self.algorithm not in ALGORITHMS:
      raise ValueError(
          f"Unknown algorithm {self.algorithm!r}; choose one of {list(ALGORITHMS)}."
      )
    if self.optimizer not in OPTIMIZERS:
      raise ValueError(
          f"Unknown optimizer {self.optimizer!r}; choose one of {list(OPTIMIZERS)}."
      )
    if self.learning_rate_schedule not in LEARNING_RATE_SCHEDULES:
      raise ValueError(
          f"Unknown learning_rate_schedule {self.learning_rate_schedule!r}; choose one "
          f"of {list(LEARNING_RATE_SCHEDULES)}."
      )
    for name in ("batch_size", "num_samples"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
    if not self.learning_rate > 0:
      raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}.")
    if not self.adam_epsilon > 0:
      raise ValueError(f"adam_epsilon must be > 0, got {self.adam_epsilon}.")
    if self.adagrad_initial_accumulator < 0:
      raise ValueError(
          "adagrad_initial_accumulator must be >= 0, got "
          f"{self.adagrad_initial_accumulator}."
      )
    if not self.prior_stddev > 0:
      raise ValueError(f"prior_stddev must be > 0, got {self.prior_stddev}.")
    api.check_kl_weight(self.kl_weight, self.estimator)
    if self.kl_weight != 1 and self.algorithm != "aevb":
      raise ValueError(
          f"kl_weight (--kl_weight) = {self.kl_weight} needs algorithm 'aevb', got "
          f"{self.algorithm!r}."
      )
    api.check_posterior(self.posterior_family, self.estimator)
    if self.posterior != "gaussian" and self.algorithm == "wake_sleep":
      raise ValueError(
          f"The {self.posterior!r} posterior (--posterior) cannot be trained by "
          "wake-sleep, whose sleep phase fits a Gaussian q."
      )

  @property
  def posterior_family(self) -> posteriors.Posterior:
    """The `posteriors.Posterior` named by `posterior` (and `student_t_dof`)."""
    return posteriors.make_posterior(self.posterior, self.student_t_dof)


def iwae_learning_rate(learning_rate: Any, steps_per_epoch: int) -> optax.Schedule:
  """The IWAE paper's schedule over minibatch updates.

  Stage i = 0, ..., 7 covers epochs [sum_{j<i} 3^j, sum_{j<=i} 3^j) at
  `learning_rate * 10^(-i/7)`; after the last stage (3280 epochs) the rate
  stays at its final value. learning_rate: a float or a traced scalar.
  """
  if steps_per_epoch < 1:
    raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}.")
  # The first step of stages 1..7: cumulative 1, 4, 13, ..., 1093 epochs; a
  # host constant, so that building the optimiser touches no device.
  boundaries = np.array(
      [steps_per_epoch * (3**i - 1) // 2 for i in range(1, IWAE_SCHEDULE_STAGES)]
  )

  def schedule(step):
    stage = jnp.sum(step >= boundaries)
    return learning_rate * 10.0 ** (-stage / (IWAE_SCHEDULE_STAGES - 1))

  return schedule


def make_optimizer(
    config: TrainConfig, num_train: int | None = None, learning_rate: Any = None
) -> optax.GradientTransformation:
  """The optax transformation named by the config (it minimises the loss).

  num_train: the training set size, which a schedule counted in epochs needs
  (steps per epoch = num_train // batch_size, as `make_train_epoch`).
  learning_rate: in place of `config.learning_rate` (with a schedule, its
  starting rate); may be traced, e.g. one run's rate in a vmapped sweep. The
  optimiser state does not depend on it.
  """
  if learning_rate is None:
    learning_rate = config.learning_rate
  if config.learning_rate_schedule != "constant":
    if num_train is None:
      raise ValueError(
          f"learning_rate_schedule={config.learning_rate_schedule!r} counts epochs: "
          "pass num_train, the training set size."
      )
    learning_rate = iwae_learning_rate(learning_rate, num_train // config.batch_size)
  if config.optimizer == "adagrad":
    return optax.adagrad(
        learning_rate,
        initial_accumulator_value=config.adagrad_initial_accumulator,
        eps=1e-8,
    )
  if config.optimizer == "adam":
    return optax.adam(learning_rate, eps=config.adam_epsilon)
  return optax.sgd(learning_rate)


@functools.partial(jax.jit, static_argnames=("model", "config", "num_train"))
def init_train_state(
    model: VAE, config: TrainConfig, key: Array, num_train: int | None = None
) -> TrainState:
  """Fresh parameters and optimiser state; `key` seeds both and the run.

  num_train: the training set size, needed by a learning-rate schedule.
  Compiled (once per model, config and num_train): run eagerly, every
  initialiser's operations would be compiled one by one, seconds on a CPU.
  """
  init_key, run_key = jax.random.split(key)
  return train_state_for(api.init_params(model, init_key), config, run_key, num_train)


def train_state_for(
    params: Params, config: TrainConfig, key: Array, num_train: int | None = None
) -> TrainState:
  """A step-0 state around given parameters (of any model); `key` seeds the run."""
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      opt_state=make_optimizer(config, num_train).init(params),
      key_data=jax.random.key_data(key),
  )


def apply_gradients(
    state: TrainState, grads: Params, optimizer: optax.GradientTransformation
) -> TrainState:
  """One optimiser update of `state.params` by the loss gradient `grads`."""
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  return state.replace(
      step=state.step + 1,
      params=optax.apply_updates(state.params, updates),
      opt_state=opt_state,
  )


def init_train_states(
    model: VAE, config: TrainConfig, keys: Array, num_train: int | None = None
) -> TrainState:
  """Independent runs' states stacked on a leading axis: keys [num_runs]."""
  return jax.vmap(lambda key: init_train_state(model, config, key, num_train))(keys)


def _training_objective(model: VAE, config: TrainConfig) -> api.ElboFn | None:
  """The per-example objective ascended when it is not the reported bound:
  wake-sleep's surrogate, the autoencoder's reconstruction or the
  beta-weighted objective; None otherwise."""
  if config.algorithm == "wake_sleep":
    return api.make_wake_sleep_objective(model, config.num_samples)
  if config.algorithm == "autoencoder":
    return api.make_autoencoder_objective(model)
  if config.kl_weight != 1:
    return api.make_elbo(
        model, config.estimator, config.num_samples, config.kl_weight,
        config.posterior_family,
    )
  return None


def make_train_step(
    model: VAE, config: TrainConfig, num_train: int, learning_rate: Any = None
) -> Callable[[TrainState, Array, Array], tuple[TrainState, Array]]:
  """Returns `train_step(state, batch, key) -> (state, mean bound)`.

  batch: [M, data_dim]; the mean bound (nats per example, `config.estimator`)
  is of the batch before the update, without the weight prior. Whatever the
  algorithm or kl_weight, it is the bound (the ELBO for A and B).
  learning_rate: in place of `config.learning_rate` (see `make_optimizer`).
  """
  elbo = api.make_elbo(
      model, config.estimator, config.num_samples, posterior=config.posterior_family
  )
  objective_fn = _training_objective(model, config)
  optimizer = make_optimizer(config, num_train, learning_rate)

  def loss_fn(params, batch, key):
    bounds = elbo(params, batch, key)
    per_example = bounds
    if objective_fn is not None:
      bounds = jax.lax.stop_gradient(bounds)  # reported only: no backward pass
      # The same key: where the objective shares the bound's noise, XLA
      # computes the shared passes once.
      per_example = objective_fn(params, batch, key)
    if config.weight_prior:
      objective = estimators.map_objective(
          per_example, params, num_train, config.prior_stddev
      )
    else:
      objective = jnp.mean(per_example)
    return -objective, jnp.mean(bounds)

  # The named scopes label the ops in profiles (experiments/benchmark.py --profile_dir).
  def train_step(state: TrainState, batch: Array, key: Array):
    with jax.named_scope("bound_and_gradient"):
      grads, bound = jax.grad(loss_fn, has_aux=True)(state.params, batch, key)
    with jax.named_scope("optimizer_update"):
      state = apply_gradients(state, grads, optimizer)
    return state, bound

  return train_step


BATCH_AXIS = "batch"


def make_mesh(num_devices: int) -> jax.sharding.Mesh:
  """A 1-D mesh of `num_devices` devices of all processes, axis `BATCH_AXIS`
  (which splits each minibatch, or in multi-run training the runs).

  Every process contributes its first `num_devices / jax.process_count()`
  local devices, since every process must hold a part of every minibatch to
  take part in the jitted step.
  """
  num_processes = jax.process_count()
  if not 1 <= num_devices <= jax.device_count():
    raise ValueError(
        f"num_devices must be in [1, {jax.device_count()}] (the devices of all "
        f"processes), got {num_devices}."
    )
  if num_devices % num_processes:
    raise ValueError(
        f"num_devices must be a multiple of the {num_processes} processes, got "
        f"{num_devices}."
    )
  per_process = num_devices // num_processes
  devices = []
  for process in range(num_processes):
    local = [d for d in jax.devices() if d.process_index == process]
    if len(local) < per_process:
      raise ValueError(
          f"num_devices={num_devices} needs {per_process} devices in each of the "
          f"{num_processes} processes; process {process} has {len(local)}."
      )
    devices += local[:per_process]
  return jax.sharding.Mesh(np.array(devices), (BATCH_AXIS,))


def replicate(tree: Any, mesh: jax.sharding.Mesh) -> Any:
  """Places every array of a pytree on all devices of the mesh.

  With several processes the mesh spans devices of other processes too: every
  process must pass the same values, and each fills its own devices (no data
  crosses processes).
  """
  return jax.make_array_from_process_local_data(
      NamedSharding(mesh, PartitionSpec()), tree
  )


def shard_runs(tree: Any, mesh: jax.sharding.Mesh) -> Any:
  """Places a pytree of several runs (a leading [num_runs] axis on every
  array, e.g. `init_train_states`) with its runs split evenly over the
  devices of the mesh, which must all belong to this process."""
  if jax.process_count() > 1:
    raise ValueError("Runs are split over the devices of one process only.")
  num_runs = {leaf.shape[0] for leaf in jax.tree_util.tree_leaves(tree)}
  if len(num_runs) != 1 or next(iter(num_runs)) % mesh.size:
    raise ValueError(
        f"Runs split over {mesh.size} devices must be a multiple of them in number; "
        f"the leaves' leading axes are {sorted(num_runs)}."
    )
  return jax.device_put(tree, NamedSharding(mesh, PartitionSpec(BATCH_AXIS)))


def epoch_batches(
    key: Array, train_data: Array, config: TrainConfig
) -> tuple[Array, Array, tuple[Array, Array]]:
  """One epoch's minibatches in a fresh random order, binarised anew if
  `config.dynamic_binarization`.

  train_data: [N, data_dim]. Returns (the run's next key, the key for the
  epoch's steps, (indices [N // M, M] into train_data, batches [N // M, M,
  data_dim])); the last N % M examples of the order sit the epoch out.
  """
  next_key, shuffle_key, binarize_key, step_key = jax.random.split(key, 4)
  num_batches = train_data.shape[0] // config.batch_size
  with jax.named_scope("shuffle_and_binarize"):
    order = jax.random.permutation(shuffle_key, train_data.shape[0])
    order = order[: num_batches * config.batch_size]
    batches = train_data[order]
    if config.dynamic_binarization:
      batches = binarize(binarize_key, batches)
  shape = (num_batches, config.batch_size)
  return next_key, step_key, (order.reshape(shape), batches.reshape(*shape, -1))


def make_train_epoch(
    model: VAE,
    config: TrainConfig,
    num_train: int,
    mesh: jax.sharding.Mesh | None = None,
    multi_run: bool = False,
    learning_rates: Any = None,
) -> Callable[[TrainState, Array], tuple[TrainState, Array]]:
  """Returns a jitted `train_epoch(state, train_data) -> (state, bounds)`.

  train_data: [N, data_dim] on device. One epoch shuffles it with the state's
  key, binarises it if configured, and scans `train_step` over N // M
  minibatches (the last N % M examples of the permutation sit out this
  epoch). bounds: [N // M] per-step mean bounds in nats. The input state's
  buffers are donated to the output: use only the returned state afterwards.

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
    raise ValueError(
        f"batch_size {config.batch_size} exceeds the {num_train} training examples."
    )
  if data_parallel and config.batch_size % mesh.size:
    raise ValueError(
        f"batch_size {config.batch_size} must be a multiple of the {mesh.size} "
        "devices it is split over."
    )
  num_batches = num_train // config.batch_size

  def train_epoch(state: TrainState, train_data: Array, learning_rate: Any = None):
    train_step = make_train_step(model, config, num_train, learning_rate)
    key, step_key, (_, batches) = epoch_batches(state.key, train_data, config)
    if data_parallel:
      batches = jax.lax.with_sharding_constraint(
          batches, NamedSharding(mesh, PartitionSpec(None, BATCH_AXIS))
      )
    step_keys = jax.random.split(step_key, num_batches)
    state, bounds = jax.lax.scan(
        lambda s, inputs: train_step(s, *inputs), state, (batches, step_keys)
    )
    return state.replace(key_data=jax.random.key_data(key)), bounds

  if learning_rates is not None:
    sweep = jax.vmap(train_epoch, in_axes=(0, None, 0))

    def train_epoch(state: TrainState, train_data: Array):
      if state.step.shape != learning_rates.shape:
        raise ValueError(
            f"The state holds {state.step.shape[0]} runs but learning_rates "
            f"{learning_rates.size} rates."
        )
      return sweep(state, train_data, learning_rates)
  elif multi_run:
    train_epoch = jax.vmap(train_epoch, in_axes=(0, None))
  if mesh is None:
    return jax.jit(train_epoch, donate_argnums=0)
  replicated = NamedSharding(mesh, PartitionSpec())
  if data_parallel:
    return jax.jit(train_epoch, donate_argnums=0, out_shardings=replicated)
  by_run = NamedSharding(mesh, PartitionSpec(BATCH_AXIS))
  return jax.jit(
      train_epoch, donate_argnums=0, in_shardings=(by_run, replicated), out_shardings=by_run
  )


def make_evaluate(
    model: VAE,
    estimator: str = "B",
    num_samples: int = 1,
    batch_size: int = 1000,
    multi_run: bool = False,
    samples_per_pass: int = 100,
    posterior: posteriors.Posterior = posteriors.GAUSSIAN,
) -> Callable[[Params, Array, Array], Array]:
  """Returns a jitted `evaluate(params, data, key) -> [N]` bounds in nats.

  data: [N, data_dim]; one value per example, computed `batch_size` examples
  at a time inside one compiled program (the data is padded to whole
  batches and the padding dropped). With a fixed key the result is
  deterministic. Average it with `mean_nats`, which sums in float64.

  estimator "iwae" gives the importance-sampled log-likelihood estimate with
  k = `num_samples` (`api.make_log_likelihood_estimate`), drawn
  `samples_per_pass` at a time so that k = 5000 fits in memory. With
  `multi_run`, params have a leading [num_runs] axis and so does the result.
  `posterior` is the family of q(z|x).
  """
  if estimator == "iwae":
    bound = api.make_log_likelihood_estimate(
        model, num_samples, samples_per_pass, posterior
    )
  else:
    bound = api.make_elbo(model, estimator, num_samples, posterior=posterior)

  def evaluate(params: Params, data: Array, key: Array) -> Array:
    return map_in_batches(lambda x, k: bound(params, x, k), (data,), key, batch_size)

  if multi_run:
    evaluate = jax.vmap(evaluate, in_axes=(0, None, None))
  return jax.jit(evaluate)


def map_in_batches(
    fn: Callable[..., Any], arrays: tuple[Array, ...], key: Array, batch_size: int
) -> Any:
  """fn(*batches, key) over `arrays` [N, ...] in batches of `batch_size` rows,
  one `lax.map` (so one compiled loop, not N / batch_size programs).

  fn maps batches [size, ...] and a key to a pytree of [size, ...] arrays;
  the result is that pytree for all N rows. The arrays are padded to whole
  batches by repeating their first rows (so every input stays valid) and the
  padding's outputs dropped; each batch gets its own key from `key`.
  """
  num_examples = arrays[0].shape[0]
  size = min(batch_size, num_examples)
  num_batches = math.ceil(num_examples / size)
  padding = num_batches * size - num_examples

  def batched(a: Array) -> Array:
    padded = jnp.concatenate([a, a[:padding]]) if padding else a
    return padded.reshape(num_batches, size, *a.shape[1:])

  keys = jax.random.split(key, num_batches)
  outputs = jax.lax.map(lambda inputs: fn(*inputs), (*map(batched, arrays), keys))
  return jax.tree.map(lambda o: o.reshape(-1, *o.shape[2:])[:num_examples], outputs)


def mean_nats(bounds: Array) -> np.ndarray:
  """Mean over the last axis, summed in float64: [..., N] -> [...]."""
  return np.mean(np.asarray(bounds, np.float64), axis=-1)
