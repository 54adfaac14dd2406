"""A whole VAE run in a work directory: `train_and_evaluate`.

`train_and_evaluate` is what `python -m experiments.train` calls once the
flags are turned into configs; it takes plain values, so notebooks and
scripts can call it too. It trains AEVB, wake-sleep or the autoencoder
(`TrainConfig.algorithm`) through the one resumable loop
(`vae_jax.training.run_dir.train_in_directory`), evaluating the bound on the
training and test sets. Its work directory is described there.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from vae_jax.errors import ConfigError
from vae_jax.inference import active_units, variance
from vae_jax.models.functions import check_data
from vae_jax.models.vae import VAE, TwoLayerVAE
from vae_jax.training import evaluation, memory, parallel
from vae_jax.training.epoch import make_train_epoch
from vae_jax.training.loop import Hook, LoopPlan
from vae_jax.training.run_dir import describe_parts, train_in_directory
from vae_jax.training.state import TrainConfig, TrainState, init_train_state, init_train_states


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """Where and for how long to train.

  Attributes:
    workdir: the run directory; an existing run there is resumed.
    num_epochs: total passes over the training set (a resumed run trains
      only the missing ones); 0 evaluates the initial state alone.
    eval_every: evaluate, checkpoint and log every this many epochs.
    seed: seeds parameters, shuffling, binarisation and the noise eps.
    keep_checkpoints: how many recent checkpoints to keep.
    eval_batch_size: examples per evaluation batch.
    num_devices: devices to split each minibatch over (data-parallel); with
      several processes, devices of all of them, a multiple of their number.
      With several runs (`multi_run`), the devices of this process to split
      the runs over instead, a divisor of their number.
    num_runs: independent runs (seeds seed, seed + 1, ...) trained together
      by one vmapped program; metrics give their mean and each run's bound,
      examples_per_second counts every run's examples, figures show run 0.
    learning_rates: a learning-rate sweep: `num_runs` seeds at each of these
      rates (in place of the TrainConfig's; with a schedule, its starting
      rate), all in the one vmapped program, ordered as `runs` says; ()
      for none.
    log_likelihood_samples: k of the importance-sampled test log-likelihood
      (`vae_jax.make_log_likelihood_estimate`) logged after the last epoch
      as "test_log_likelihood"; 0 skips it.
    log_likelihood_epochs: more epochs after which the run is evaluated (and
      checkpointed), with that log-likelihood too unless
      log_likelihood_samples is 0: e.g. the ends of a learning-rate
      schedule's stages. Those past num_epochs never come.
    variance_every: every this many epochs (epoch 0 included), evaluate and
      record the training estimator's gradient variance and signal-to-noise
      ratio, encoder's and decoder's, on the first `variance_examples`
      training examples (as the evaluation binarises them) over
      `variance_draws` draws of its noise (`vae_jax.inference.variance`;
      "gradient_<figure>" in the metrics, and "gradient_seconds", what the
      measurement took); 0 never.
  """

  workdir: str
  num_epochs: int
  eval_every: int = 1
  seed: int = 0
  keep_checkpoints: int = 3
  eval_batch_size: int = 1000
  num_devices: int = 1
  num_runs: int = 1
  learning_rates: tuple[float, ...] = ()
  log_likelihood_samples: int = 0
  log_likelihood_epochs: tuple[int, ...] = ()
  variance_every: int = 0
  variance_examples: int = 20
  variance_draws: int = 100

  def __post_init__(self):
    for name in (
      "eval_every",
      "keep_checkpoints",
      "eval_batch_size",
      "num_devices",
      "num_runs",
      "variance_examples",
    ):
      if getattr(self, name) < 1:
        raise ConfigError(name, f"{name} must be >= 1, got {getattr(self, name)}.")
    if self.variance_draws < 2:
      raise ConfigError(
        "variance_draws", f"variance_draws must be >= 2 for a variance, got {self.variance_draws}."
      )
    for name in ("num_epochs", "log_likelihood_samples", "variance_every"):
      if getattr(self, name) < 0:
        raise ConfigError(name, f"{name} must be >= 0, got {getattr(self, name)}.")
    if not all(epoch >= 1 for epoch in self.log_likelihood_epochs):
      raise ConfigError(
        "log_likelihood_epochs",
        f"log_likelihood_epochs must be >= 1, got {list(self.log_likelihood_epochs)}.",
      )
    if not all(rate > 0 for rate in self.learning_rates):
      raise ConfigError(
        "learning_rates", f"learning_rates must be positive, got {list(self.learning_rates)}."
      )

  @property
  def runs(self) -> list[dict[str, Any]]:
    """Each run's {"seed": ..., "learning_rate": ...} in the order of the
    vmapped axis and of the metrics' "_run<i>" names: the rates of a sweep
    outer, the seeds inner; "learning_rate" is None without a sweep."""
    seeds = [self.seed + i for i in range(self.num_runs)]
    return [
      {"seed": seed, "learning_rate": rate}
      for rate in (self.learning_rates or (None,))
      for seed in seeds
    ]

  def evaluates_at(self, epoch: int) -> bool:
    """Whether the run is evaluated, logged and checkpointed after `epoch`."""
    return (
      epoch % self.eval_every == 0
      or epoch in self.log_likelihood_epochs
      or self.measures_variance_at(epoch)
    )

  def measures_variance_at(self, epoch: int) -> bool:
    """Whether that evaluation includes the gradient's variance and SNR."""
    return bool(self.variance_every) and epoch % self.variance_every == 0

  def estimates_log_likelihood_at(self, epoch: int) -> bool:
    """Whether that evaluation includes the k-sample log-likelihood."""
    return bool(self.log_likelihood_samples) and (
      epoch == self.num_epochs or epoch in self.log_likelihood_epochs
    )

  @property
  def multi_run(self) -> bool:
    """Whether training is the vmapped program of several runs (or a sweep)."""
    return self.num_runs > 1 or bool(self.learning_rates)


def describe(
  model: VAE,
  config: TrainConfig,
  seed: int,
  num_runs: int = 1,
  learning_rates: tuple[float, ...] = (),
) -> dict[str, Any]:
  """The settings that define a VAE run, as they read back from JSON (a
  `TwoLayerVAE`'s with its top_encoder and top_decoder)."""
  top_layer = {}
  if isinstance(model, TwoLayerVAE):
    top_layer = {"top_encoder": model.top_encoder, "top_decoder": model.top_decoder}
  settings = describe_parts(
    encoder=model.encoder,
    decoder=model.decoder,
    **top_layer,
    likelihood=model.likelihood,
    train=config,
    seed=seed,
    num_runs=num_runs,
  )
  if learning_rates:  # absent otherwise, as in the runs saved before sweeps existed
    settings["learning_rates"] = list(learning_rates)
  if settings["decoder"].get("initial_logits_bias") is not None:
    # Recorded by its source (`vae_from_config`'s only one), not as data_dim
    # numbers: a resumed run computes them again from the data, and another
    # numpy may round them otherwise.
    settings["decoder"]["initial_logits_bias"] = "data_mean"
  return settings


# The model's settings added since runs were first saved, as those runs had them.
SETTING_DEFAULTS = {
  "encoder": {"variance_head": "logvar"},
  "decoder": {"initial_logits_bias": None},
}


def host_params(state: TrainState) -> Any:
  """The parameters of the state's run 0 (`RunConfig.runs`), on the host."""
  params = jax.device_get(state.params)
  if np.ndim(state.step):  # the state of several runs, stacked
    params = jax.tree_util.tree_map(lambda leaf: leaf[0], params)
  return params


def _initial_state(
  model: VAE, config: TrainConfig, run: RunConfig, num_train: int, log: Callable[[str], None]
) -> TrainState:
  if not run.multi_run:
    return init_train_state(model, config, jax.random.key(run.seed), num_train)
  # Each run is seeded as the single run with its seed would be.
  keys = jax.numpy.stack([jax.random.key(r["seed"]) for r in run.runs])
  log(
    "Runs (the metrics' _run<i>): "
    + "; ".join(
      f"{i}: seed {r['seed']}"
      + (f", learning rate {r['learning_rate']:g}" if r["learning_rate"] is not None else "")
      for i, r in enumerate(run.runs)
    )
  )
  return init_train_states(model, config, keys, num_train)


def _evaluations(model: VAE, config: TrainConfig, run: RunConfig) -> tuple[Any, Any]:
  """The jitted evaluations of a run: the bound of `config.estimator`, and
  the k-sample log-likelihood if `run.log_likelihood_samples` (else None)."""
  bound = evaluation.make_evaluate(
    model,
    config.estimator,
    config.num_samples,
    run.eval_batch_size,
    run.multi_run,
    posterior=config.posterior_family,
    **config.estimator_settings,
  )
  log_likelihood = (
    evaluation.make_evaluate(
      model,
      "iwae",
      run.log_likelihood_samples,
      run.eval_batch_size,
      run.multi_run,
      posterior=config.posterior_family,
    )
    if run.log_likelihood_samples
    else None
  )
  return bound, log_likelihood


def _memory_checks(run, state, bound, log_likelihood, eval_sets) -> dict[str, memory.Program]:
  """The evaluations, as the epoch, checked to fit before training
  (`memory.check_fits`, through `train_in_directory`)."""
  key = jax.random.key(run.seed + 1)
  checks = {
    f"The evaluation of the bound (eval_batch_size={run.eval_batch_size})": memory.Program(
      bound, (state.params, eval_sets["train"], key), "num_samples"
    )
  }
  if log_likelihood is not None:
    checks[f"The log-likelihood estimate (eval_batch_size={run.eval_batch_size})"] = memory.Program(
      log_likelihood, (state.params, eval_sets["test"], key), "eval_batch_size"
    )
  return checks


def _per_run(params: Any, run: RunConfig) -> list[Any]:
  """Each run's parameters: the slices of the vmapped axis with `multi_run`."""
  if not run.multi_run:
    return [params]
  return [jax.tree.map(lambda leaf, i=i: leaf[i], params) for i in range(len(run.runs))]


def _active_unit_counts(model: VAE, run: RunConfig, train_set: jax.Array) -> Callable[..., Any]:
  """`counts(params) -> [layers, runs]`: each run's active units per
  stochastic layer (`vae_jax.inference.active_units`) over the training set
  as the evaluation binarises it."""
  activities = active_units.make_unit_activities(model)
  key = jax.random.key(run.seed + 2)

  def counts(params: Any) -> np.ndarray:
    per_run = _per_run(params, run)
    return np.array([active_units.count_active(activities(p, train_set, key)) for p in per_run]).T

  return counts


# The figures of `variance.summarize` that a run records as "gradient_<figure>".
GRADIENT_FIGURES = (
  "encoder_snr",
  "decoder_snr",
  "encoder_parameter_snr",
  "decoder_parameter_snr",
  "encoder_variance",
  "decoder_variance",
  "bound_variance",
)


def _gradient_figures(
  model: VAE, config: TrainConfig, run: RunConfig, train_set: jax.Array
) -> Callable[[Any], dict[str, np.ndarray]] | None:
  """`figures(params) -> {name: [runs]}`: the training estimator's gradient
  variance and SNR per run (`RunConfig.variance_every`); None when not asked for.
  The examples and the noise's key are fixed, so that the run's figures
  differ only by its parameters."""
  if not run.variance_every:
    return None
  if config.algorithm != "aevb":
    raise ConfigError(
      "variance_every",
      f"variance_every measures the gradient of the bound AEVB ascends; algorithm "
      f"{config.algorithm!r} ascends another objective: use 0.",
    )
  if run.variance_examples > train_set.shape[0]:
    raise ConfigError(
      "variance_examples",
      f"variance_examples={run.variance_examples} exceeds the {train_set.shape[0]} training "
      "examples.",
    )
  moments = variance.make_gradient_moments(
    model,
    estimator=config.estimator,
    num_samples=config.num_samples,
    num_draws=run.variance_draws,
    **config.estimator_settings,
  )
  examples = train_set[: run.variance_examples]
  key = jax.random.key(run.seed + 4)

  def figures(params: Any) -> dict[str, np.ndarray]:
    summaries = []
    for run_params in _per_run(params, run):
      mean, var = moments(run_params, examples, key)
      # The measurement's time is the record's gradient_seconds, not a figure per run.
      timeless = variance.Moments(mean[0], var[0], mean[1], var[1], math.nan)
      summaries.append(variance.summarize(timeless))
    return {f"gradient_{name}": np.array([s[name] for s in summaries]) for name in GRADIENT_FIGURES}

  return figures


def _make_evaluate(
  bound: Any,
  log_likelihood: Any,
  count_active_units: Callable[..., np.ndarray],
  gradient_figures: Callable[[Any], dict[str, np.ndarray]] | None,
  run: RunConfig,
  eval_sets: dict[str, jax.Array],
) -> Callable[..., dict[str, float]]:
  """The loop's `evaluate`: `bound` on every evaluation set (means over the
  runs, and with several runs each run's as "<name>_run<i>"), the mean
  per-step bound of the epochs trained since the last evaluation, the
  k-sample test log-likelihood where `run.estimates_log_likelihood_at`, the
  active units of each stochastic layer ("active_units_layer<l>") after
  the last epoch and the `log_likelihood_epochs`, and the gradient's
  figures where `run.measures_variance_at`."""
  eval_key = jax.random.key(run.seed + 1)

  def evaluate(state, epoch, outputs):
    scores = {}

    def record(name, values):
      means = np.atleast_1d(evaluation.mean_nats(values))
      scores[name] = float(means.mean())
      if run.multi_run:
        scores.update({f"{name}_run{i}": float(m) for i, m in enumerate(means)})

    for name, data in eval_sets.items():
      record(f"{name}_bound", bound(state.params, data, eval_key))
    if outputs:
      scores["train_minibatch_bound"] = float(
        np.mean(np.concatenate([np.asarray(bounds).reshape(-1) for bounds in outputs]))
      )
    if run.estimates_log_likelihood_at(epoch):
      record("test_log_likelihood", log_likelihood(state.params, eval_sets["test"], eval_key))
    if epoch == run.num_epochs or epoch in run.log_likelihood_epochs:
      for layer, counts in enumerate(count_active_units(state.params), 1):
        record(f"active_units_layer{layer}", counts[:, None])
    if gradient_figures is not None and run.measures_variance_at(epoch):
      started = time.perf_counter()
      for name, values in gradient_figures(state.params).items():
        record(name, values[:, None])
      scores["gradient_seconds"] = time.perf_counter() - started
    return scores

  return evaluate


def train_and_evaluate(
  model: VAE,
  config: TrainConfig,
  run: RunConfig,
  train_data: np.ndarray,
  test_data: np.ndarray,
  hooks: Sequence[Hook] = (),
  log: Callable[[str], None] = print,
) -> TrainState:
  """Trains `model` on `train_data`, resuming from `run.workdir` if possible.

  Args:
    model: the VAE.
    config: optimisation settings.
    run: work directory, budget, seed, devices.
    train_data: [N, data_dim]; test_data: [N_test, data_dim]. Grey levels in
      [0, 1] when `config.dynamic_binarization`.
    hooks: more hooks of the loop (e.g. `vae_jax.figures.run_figures.RunFigures`).
    log: receives human-readable progress lines (in process 0 only).

  Returns:
    The final train state.

  Raises:
    TrainingDivergedError: the bound became NaN/inf; the checkpoint of the
      last evaluation is kept and a rerun resumes from it.
    RunSettingsMismatchError: `run.workdir` holds a run with other settings.
  """
  for name, data in (("train_data", train_data), ("test_data", test_data)):
    try:
      check_data(data, model)
    except (ValueError, TypeError) as error:
      raise type(error)(f"{name}: {error}") from None
  num_train = train_data.shape[0]
  # One device of one process needs no mesh; several processes always use one
  # (`make_mesh` rejects a device count they cannot share).
  multi_device = run.num_devices > 1 or jax.process_count() > 1
  mesh = parallel.make_mesh(run.num_devices) if multi_device else None
  train_epoch = make_train_epoch(
    model,
    config,
    num_train,
    mesh,
    run.multi_run,
    [r["learning_rate"] for r in run.runs] if run.learning_rates else None,
  )
  place = jax.device_put if mesh is None else lambda tree: parallel.replicate(tree, mesh)
  train_data = place(train_data)
  eval_sets = {"train": train_data, "test": place(test_data)}
  if config.dynamic_binarization:
    eval_sets = evaluation.binarize_for_evaluation(eval_sets)
  state = _initial_state(model, config, run, num_train, log)
  # Placed before a restore, the state is its template, so that every process
  # restores straight into the devices of the mesh.
  state = parallel.shard_runs(state, mesh) if mesh is not None and run.multi_run else place(state)
  bound, log_likelihood = _evaluations(model, config, run)
  plan = LoopPlan(
    num_epochs=run.num_epochs,
    steps_per_epoch=num_train // config.batch_size,
    batch_size=config.batch_size,
    evaluate_at=run.evaluates_at,
    num_runs=len(run.runs),
  )
  state, _ = train_in_directory(
    run.workdir,
    describe(model, config, run.seed, run.num_runs, run.learning_rates),
    state,
    train_epoch,
    (train_data,),
    _make_evaluate(
      bound,
      log_likelihood,
      _active_unit_counts(model, run, eval_sets["train"]),
      _gradient_figures(model, config, run, eval_sets["train"]),
      run,
      eval_sets,
    ),
    plan,
    hooks=hooks,
    keep_checkpoints=run.keep_checkpoints,
    setting_defaults=SETTING_DEFAULTS,
    memory_checks=_memory_checks(run, state, bound, log_likelihood, eval_sets),
    # The epoch holds [L, M, data_dim] decoder outputs: L is the one to lower first.
    epoch_parameter="num_samples" if config.num_samples > 1 else "batch_size",
    log=log,
  )
  return state
