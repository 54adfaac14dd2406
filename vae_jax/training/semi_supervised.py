"""Training and evaluating M2 (`vae_jax.models.m2`, its bounds in
`vae_jax.inference.semi_supervised`) on a labelled subset.

As for the VAE, an epoch is one compiled `lax.scan`
(`vae_jax.training.epoch.make_epoch`): it shuffles (and binarises, if
configured) the unlabelled set, and every step ascends the
M2 objective on one unlabelled minibatch and a fresh random minibatch of the
labelled set. The optimiser settings, minibatch size, estimator and weight
prior come from a `TrainConfig`; the state is a
`TrainState`, so checkpoints work as for the VAE.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax.data.transforms import binarize
from vae_jax.errors import ConfigError
from vae_jax.inference import semi_supervised
from vae_jax.models import m2
from vae_jax.training import evaluation
from vae_jax.training.epoch import Minibatch, make_epoch
from vae_jax.training.objectives import with_weight_prior
from vae_jax.training.state import (
  Params,
  TrainConfig,
  TrainState,
  apply_gradients,
  make_optimizer,
  train_state_for,
)

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class SemiSupervisedConfig:
  """M2's settings besides the optimiser's.

  Attributes:
    alpha: the classification loss's weight per example (the paper's
      alpha / N; the paper: 0.1).
    label_inference: "enumerate" (the paper) or "sample" y in U(x).
    labelled_batch_size: labelled examples per step (at most all of them).
    use_unlabelled: False leaves the unlabelled bound U(x) out of the
      objective: the same networks and steps, the classifier trained on the
      labels alone (the supervised baseline that M2 should beat).
  """

  alpha: float = 0.1
  label_inference: str = "enumerate"
  labelled_batch_size: int = 100
  use_unlabelled: bool = True

  def __post_init__(self):
    if self.labelled_batch_size < 1:
      raise ConfigError(
        "labelled_batch_size", f"labelled_batch_size must be >= 1, got {self.labelled_batch_size}."
      )
    # Checks alpha and label_inference here, not at the first epoch.
    semi_supervised.ObjectiveConfig(alpha=self.alpha, label_inference=self.label_inference)

  def objective_config(self, config: TrainConfig) -> semi_supervised.ObjectiveConfig:
    return semi_supervised.ObjectiveConfig(
      config.estimator, config.num_samples, self.alpha, self.label_inference
    )


def check_train_config(config: TrainConfig) -> None:
  """Raises a ConfigError for VAE-only settings that M2 does not implement."""
  unsupported = {
    "algorithm": "aevb",
    "kl_weight": 1.0,
    "posterior": "gaussian",
    "learning_rate_schedule": "constant",
    "num_groups": 1,
    "ciwae_beta": None,
  }
  for name, supported in unsupported.items():
    if getattr(config, name) != supported:
      raise ConfigError(
        name, f"M2 supports only {name}={supported!r}, got {getattr(config, name)!r}."
      )


def select_labelled(labels: np.ndarray, num_labels: int, num_classes: int, seed: int) -> np.ndarray:
  """Indices of a class-balanced labelled subset, as the paper draws them.

  Args:
    labels: [N] int, every training example's class.
    num_labels: how many to keep labelled, a multiple of num_classes.
    num_classes: K.
    seed: which subset (numpy's generator, so it does not depend on JAX).

  Returns:
    [num_labels] sorted indices into labels, num_labels / K of each class.
  """
  if num_labels < num_classes or num_labels % num_classes:
    raise ValueError(
      f"num_labels must be a positive multiple of the {num_classes} classes, got {num_labels}."
    )
  per_class = num_labels // num_classes
  rng = np.random.default_rng(seed)
  chosen = []
  for k in range(num_classes):
    members = np.flatnonzero(labels == k)
    if members.size < per_class:
      raise ValueError(
        f"Class {k} has {members.size} examples, fewer than the {per_class} per class "
        f"that num_labels={num_labels} needs."
      )
    chosen.append(rng.choice(members, per_class, replace=False))
  return np.sort(np.concatenate(chosen))


def init_state(model: m2.M2, config: TrainConfig, key: Array, num_unlabelled: int) -> TrainState:
  """Fresh parameters and optimiser state; `key` seeds both and the run."""
  init_key, run_key = jax.random.split(key)
  return train_state_for(m2.init_params(model, init_key), config, run_key, num_unlabelled)


def make_train_epoch(
  model: m2.M2,
  config: TrainConfig,
  ss_config: SemiSupervisedConfig,
  num_labelled: int,
  num_unlabelled: int,
) -> Callable[..., tuple[TrainState, dict[str, Array]]]:
  """Returns a jitted `epoch(state, unlabelled, x_labelled, y_labelled) ->
  (state, metrics)`.

  unlabelled: [N_u, data_dim]; x_labelled: [N_l, data_dim], y_labelled:
  [N_l] int, all on device. The epoch takes N_u // M steps (M =
  `config.batch_size`); each step's labelled minibatch is min(N_l,
  labelled_batch_size) examples drawn without replacement. metrics: [N_u //
  M] per step, "objective" (J_alpha / N, nats) and the batch means of
  `semi_supervised.make_objective`'s aux. The input state is donated.
  """
  check_train_config(config)
  if num_unlabelled < config.batch_size:
    raise ValueError(
      f"batch_size {config.batch_size} exceeds the {num_unlabelled} unlabelled examples."
    )
  objective = semi_supervised.make_objective(
    model,
    ss_config.objective_config(config),
    num_labelled,
    num_unlabelled if ss_config.use_unlabelled else 0,
  )
  optimizer = make_optimizer(config, num_unlabelled)
  labelled_batch_size = min(ss_config.labelled_batch_size, num_labelled)

  def loss(params, x_labelled, y_labelled, x_unlabelled, key):
    value, aux = objective(params, x_labelled, y_labelled, x_unlabelled, key)
    value = with_weight_prior(value, params, num_labelled + num_unlabelled, config)
    return -value, {"objective": value, **aux}

  def step(state: TrainState, minibatch: Minibatch, x_labelled: Array, y_labelled: Array):
    choice_key, binarize_key, objective_key = jax.random.split(minibatch.key, 3)
    chosen = jax.random.choice(choice_key, num_labelled, (labelled_batch_size,), replace=False)
    x_chosen = x_labelled[chosen]
    if config.dynamic_binarization:
      x_chosen = binarize(binarize_key, x_chosen)
    grads, metrics = jax.grad(loss, has_aux=True)(
      state.params, x_chosen, y_labelled[chosen], minibatch.x, objective_key
    )
    return apply_gradients(state, grads, optimizer), metrics

  return make_epoch(step, config)


def make_evaluate(
  model: m2.M2,
  estimator: str = "B",
  num_samples: int = 1,
  batch_size: int = 1000,
) -> Callable[[Params, Array, Array, Array], dict[str, Array]]:
  """Returns a jitted `evaluate(params, x, y, key) -> {name: [N]}` per example.

  x: [N, data_dim], y: [N] int. "error": 1.0 where the classifier's most
  probable label is not y; "labelled_bound": L(x, y) (<= log p(x, y));
  "unlabelled_bound": U(x) with y enumerated (<= log p(x)), both nats by
  `estimator` with `num_samples` draws.
  """
  labelled_bound = semi_supervised.make_labelled_bound(model, estimator, num_samples)
  unlabelled_bound = semi_supervised.make_unlabelled_bound(model, estimator, num_samples)

  def evaluate(params, x, y, key):
    def per_batch(x, y, key):
      labelled_key, unlabelled_key = jax.random.split(key)
      return {
        "error": (m2.predict(model, params, x) != y).astype(jnp.float32),
        "labelled_bound": labelled_bound(params, x, y, labelled_key),
        "unlabelled_bound": unlabelled_bound(params, x, unlabelled_key),
      }

    return evaluation.map_in_batches(per_batch, (x, y), key, batch_size)

  return jax.jit(evaluate)
