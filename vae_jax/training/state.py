"""The train state and its optimiser: what a run carries from step to step.

`TrainConfig` holds how to optimise (algorithm, estimator, optimiser and its
schedule, minibatch size); `TrainState` is the pytree a run checkpoints;
`make_optimizer` is the optax transformation the config names.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vae_jax.errors import ConfigError
from vae_jax.inference.bounds import check_estimator, check_kl_weight, check_posterior
from vae_jax.math import estimators, posteriors
from vae_jax.models.functions import init_params
from vae_jax.models.vae import VAE
from vae_jax.training.iwae_code_adam import iwae_code_adam

Array = jax.Array
Params = Any

OPTIMIZERS = ("adagrad", "adam", "iwae_code_adam", "sgd")
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

  def with_key(self, key: Array) -> TrainState:
    """The state with `key` as the run's PRNG key."""
    return self.replace(key_data=jax.random.key_data(key))


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """How to optimise. Defaults are the paper's MNIST settings (Sec. 5).

  Attributes:
    algorithm: "aevb" ascends the bound of `estimator`; "wake_sleep" (the
      paper's baseline, `vae_jax.inference.wake_sleep`) follows the wake-sleep updates
      and reports `estimator`'s bound; "autoencoder" trains the encoder mean
      and the decoder as a deterministic autoencoder, log p(x | z = mean(x))
      (`vae_jax.inference.bounds.make_autoencoder_objective`), and also reports `estimator`'s
      bound of the model, which is not what it optimises.
    estimator: a name of `estimators.ESTIMATOR_NAMES`: "A", "B", "iwae", their
      gradient variants, or the objectives of Rainforth et al. (see
      `vae_jax.math.estimators`).
    num_samples: L, samples of z per example per step.
    num_groups: M of estimators "miwae" and "piwae" (M groups of K = L / M
      samples); 1 for the others.
    ciwae_beta: estimator "ciwae"'s weight of the ELBO in [0, 1]; None for
      the others.
    batch_size: M, examples per minibatch.
    optimizer: "adagrad" (the paper), "adam", "iwae_code_adam" (the IWAE
      authors' code's Adam, `iwae_code_adam`: beta1 0.99, second moments
      starting at 1, one step late, on the minibatch's summed gradient) or
      "sgd".
    learning_rate: step size (the paper: 0.01, 0.02 or 0.1 with Adagrad); with
      a schedule, its starting value.
    learning_rate_schedule: "constant", or "iwae": the IWAE paper's staged
      decay (`iwae_learning_rate`), which counts epochs, so the optimiser
      needs the training set size.
    adam_epsilon: Adam's epsilon (optax's default 1e-8; the IWAE paper: 1e-4),
      for "adam" and "iwae_code_adam".
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
  num_groups: int = 1
  ciwae_beta: float | None = None
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
    for name, choices in (
      ("algorithm", ALGORITHMS),
      ("optimizer", OPTIMIZERS),
      ("learning_rate_schedule", LEARNING_RATE_SCHEDULES),
    ):
      if getattr(self, name) not in choices:
        raise ConfigError(
          name, f"Unknown {name} {getattr(self, name)!r}; choose one of {list(choices)}."
        )
    for name in ("batch_size", "num_samples"):
      if getattr(self, name) < 1:
        raise ConfigError(name, f"{name} must be >= 1, got {getattr(self, name)}.")
    for name in ("learning_rate", "adam_epsilon", "prior_stddev"):
      if not getattr(self, name) > 0:
        raise ConfigError(name, f"{name} must be > 0, got {getattr(self, name)}.")
    if not self.adagrad_initial_accumulator >= 0:
      raise ConfigError(
        "adagrad_initial_accumulator",
        f"adagrad_initial_accumulator must be >= 0, got {self.adagrad_initial_accumulator}.",
      )
    check_estimator(self.estimator, self.num_samples, self.num_groups, self.ciwae_beta)
    check_kl_weight(self.kl_weight, self.estimator)
    if self.kl_weight != 1 and self.algorithm != "aevb":
      raise ConfigError(
        "kl_weight",
        f"kl_weight = {self.kl_weight} needs algorithm 'aevb', got {self.algorithm!r}.",
      )
    check_posterior(self.posterior_family, self.estimator)
    if self.posterior != "gaussian" and self.algorithm == "wake_sleep":
      raise ConfigError(
        "posterior",
        f"The {self.posterior!r} posterior cannot be trained by wake-sleep, whose sleep "
        "phase fits a Gaussian q.",
      )

  @property
  def estimator_settings(self) -> dict[str, Any]:
    """The settings of `estimator` as keywords of `bounds.make_elbo`."""
    return {"num_groups": self.num_groups, "ciwae_beta": self.ciwae_beta}

  @property
  def estimator_label(self) -> str:
    """The estimator with its settings: "iwae", "miwae (M = 2, K = 4)",
    "ciwae (beta = 0.05)"."""
    takes = estimators.ESTIMATOR_SETTINGS.get(self.estimator)
    if takes == "num_groups":
      return f"{self.estimator} (M = {self.num_groups}, K = {self.num_samples // self.num_groups})"
    if takes == "ciwae_beta":
      return f"{self.estimator} (beta = {self.ciwae_beta:g})"
    return self.estimator

  @property
  def posterior_family(self) -> posteriors.Posterior:
    """The `posteriors.Posterior` named by `posterior` (and `student_t_dof`)."""
    return posteriors.make_posterior(self.posterior, self.student_t_dof)


def iwae_stage_ends() -> list[int]:
  """The epochs after which the IWAE schedule's stages end: 1, 4, 13, 40,
  121, 364, 1093 and 3280 (stage i ends after sum_{j<=i} 3^j epochs)."""
  return [(3 ** (i + 1) - 1) // 2 for i in range(IWAE_SCHEDULE_STAGES)]


def iwae_learning_rate(learning_rate: Any, steps_per_epoch: int) -> optax.Schedule:
  """The IWAE paper's schedule over minibatch updates.

  Stage i = 0, ..., 7 covers epochs [sum_{j<i} 3^j, sum_{j<=i} 3^j) at
  `learning_rate * 10^(-i/7)`; after the last stage (3280 epochs) the rate
  stays at its final value. learning_rate: a float or a traced scalar.
  """
  if steps_per_epoch < 1:
    raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}.")
  # The first step of stages 1..7; a host constant, so that building the
  # optimiser touches no device.
  boundaries = steps_per_epoch * np.array(iwae_stage_ends()[:-1])

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
  if config.optimizer == "iwae_code_adam":
    return iwae_code_adam(learning_rate, config.adam_epsilon, gradient_scale=config.batch_size)
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
  return train_state_for(init_params(model, init_key), config, run_key, num_train)


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
