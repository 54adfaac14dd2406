r"""The AEVB paper's Fig. 3: `python -m experiments.figure3 [flags]`.

Trains AEVB, wake-sleep and Monte Carlo EM (`vae_jax.training.mcem`) on the first N
training examples for each N of --train_sizes, and plots the estimated
marginal likelihood (App. D, `vae_jax.inference.marginal_likelihood`) of the first
--ml_examples training and test examples against training samples
evaluated, one panel per N. The model and optimiser flags are the shared ones
(`experiments.config_flags`; use the preset). Each run lives in
<workdir>/n<N>_<algorithm>: its metrics.jsonl and a checkpoint at every
evaluation, from which a rerun resumes. Writes <workdir>/figure3.png,
figure3.md (the final estimates) and figure3.json.

Training samples evaluated count the examples of every minibatch, for MCEM
too (one E-step and --mcem_num_updates M-steps per minibatch). The
estimator starts every HMC chain at z = 0 for all three methods, so the
score does not depend on an encoder.

Example (the paper's settings; the budget is the x-axis' end):
  python -m experiments.figure3 --flagfile=experiments/configs/figure3_mnist.flags \
      --num_train_samples=10000000 --tfds_manual_dir=../shared/data
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from experiments import config_flags, tables
from vae_jax.errors import ConfigError
from vae_jax.figures import plots
from vae_jax.inference.marginal_likelihood import make_marginal_likelihood_estimate
from vae_jax.training import evaluation, mcem, memory
from vae_jax.training import run as run_lib
from vae_jax.training import state as state_lib
from vae_jax.training.epoch import make_train_epoch
from vae_jax.training.loop import LoopPlan
from vae_jax.training.run_dir import describe_parts, train_in_directory

ALGORITHMS = ("aevb", "wake_sleep", "mcem")
METHOD_LABELS = {"aevb": "AEVB", "wake_sleep": "Wake-sleep", "mcem": "MCEM"}
# The library's parameters of the estimator and of MCEM, and the flags that set them.
_ML_FLAGS = {
  "num_samples": "ml_num_samples",
  "num_leapfrog": "ml_num_leapfrog",
  "num_warmup": "ml_num_warmup",
}
_MCEM_FLAGS = {
  "num_leapfrog": "mcem_num_leapfrog",
  "num_updates": "mcem_num_updates",
  "target_acceptance": "mcem_target_acceptance",
}

_TRAIN_SIZES = flags.DEFINE_list(
  "train_sizes", ["1000", "50000"], "Training-set sizes N (the first N examples), one panel each."
)
_ALGORITHMS = flags.DEFINE_list(
  "algorithms", list(ALGORITHMS), f"Methods, from {list(ALGORITHMS)}."
)
_NUM_EVALUATIONS = flags.DEFINE_integer(
  "num_evaluations", 8, "Evaluations per run, at log-spaced epochs up to the budget.", lower_bound=1
)
_ML_EXAMPLES = flags.DEFINE_integer(
  "ml_examples",
  1000,
  "Scored examples: the first this many of the training and test sets.",
  lower_bound=1,
)
_ML_NUM_SAMPLES = flags.DEFINE_integer(
  "ml_num_samples",
  50,
  "HMC samples per example for the density fit, and as many for the estimate (App. D).",
)
_ML_NUM_LEAPFROG = flags.DEFINE_integer(
  "ml_num_leapfrog", 4, "Leapfrog steps per HMC transition of the estimator."
)
_ML_NUM_WARMUP = flags.DEFINE_integer(
  "ml_num_warmup", 100, "HMC warm-up transitions per example (step-size tuning, discarded)."
)
_MCEM_NUM_LEAPFROG = flags.DEFINE_integer(
  "mcem_num_leapfrog", 10, "Leapfrog steps of MCEM's E-step."
)
_MCEM_NUM_UPDATES = flags.DEFINE_integer("mcem_num_updates", 5, "MCEM's M-step updates per E-step.")
_MCEM_TARGET_ACCEPTANCE = flags.DEFINE_float(
  "mcem_target_acceptance", 0.9, "Acceptance rate MCEM's HMC step size is tuned to."
)

config_flags.require_positive_integers("train_sizes", "1000,50000")
flags.register_validator(
  "algorithms",
  lambda names: bool(names) and set(names) <= set(ALGORITHMS),
  message=f"--algorithms must be names from {list(ALGORITHMS)}.",
)


def evaluation_epochs(num_epochs: int, num_evaluations: int) -> list[int]:
  """About `num_evaluations` epochs, log-spaced from 1 to `num_epochs` (both
  included), fewer where rounding makes them coincide."""
  return sorted({int(round(e)) for e in np.geomspace(1, num_epochs, num_evaluations)})


def train_and_score(
  model, config, algorithm, train_data, eval_sets, num_epochs, workdir, seed, estimate, mcem_config
):
  """Trains one method for `num_epochs`, scoring it with `estimate` (a jitted
  `make_marginal_likelihood_estimate`) at `evaluation_epochs`; resumes from
  the run's last checkpoint. Returns its metrics records."""
  num_train = train_data.shape[0]
  key = jax.random.key(seed)
  if algorithm == "mcem":
    state = mcem.init_mcem_state(model, config, mcem_config, num_train, key)
    epoch = mcem.make_mcem_epoch(model, config, mcem_config, num_train)
    params_of = lambda state: state.train.params  # noqa: E731
  else:
    mcem_config = None  # not a setting of this run
    config = dataclasses.replace(config, algorithm=algorithm)
    state = state_lib.init_train_state(model, config, key, num_train)
    epoch = make_train_epoch(model, config, num_train)
    params_of = lambda state: state.params  # noqa: E731
  estimate_key = jax.random.key(seed + 1)
  scored = set(evaluation_epochs(num_epochs, _NUM_EVALUATIONS.value))

  def score(state, epoch, outputs):
    del epoch, outputs
    return {
      f"{name}_log_likelihood": float(
        evaluation.mean_nats(
          estimate(
            params_of(state), data, estimate_key, jnp.zeros((data.shape[0], model.latent_dim))
          )
        )
      )
      for name, data in eval_sets.items()
    }

  plan = LoopPlan(
    num_epochs=num_epochs,
    steps_per_epoch=num_train // config.batch_size,
    batch_size=config.batch_size,
    evaluate_at=scored.__contains__,
  )
  settings = {
    **run_lib.describe(model, config, seed),
    **describe_parts(algorithm=algorithm, num_train=num_train, mcem=mcem_config),
  }
  _, records = train_in_directory(
    workdir,
    settings,
    state,
    epoch,
    (train_data,),
    score,
    plan,
    keep_checkpoints=1,
    setting_defaults=run_lib.SETTING_DEFAULTS,
    memory_checks={
      "The App. D estimate (ml_examples)": memory.Program(
        estimate,
        (
          params_of(state),
          eval_sets["train"],
          estimate_key,
          jnp.zeros((eval_sets["train"].shape[0], model.latent_dim)),
        ),
        "ml_examples",
      )
    },
    log=logging.info,
  )
  return records


def _method_configs(model):
  """The App. D estimator (jitted) and MCEM's settings from their flags,
  checked once; a bad value ends the runner with one FATAL line naming its flag."""
  try:
    estimate = make_marginal_likelihood_estimate(
      model, _ML_NUM_SAMPLES.value, _ML_NUM_LEAPFROG.value, _ML_NUM_WARMUP.value
    )
  except ConfigError as error:
    raise config_flags.fatal_config_error(error, flag_of=_ML_FLAGS) from None
  try:
    mcem_config = mcem.MCEMConfig(
      num_leapfrog=_MCEM_NUM_LEAPFROG.value,
      num_updates=_MCEM_NUM_UPDATES.value,
      target_acceptance=_MCEM_TARGET_ACCEPTANCE.value,
    )
  except ConfigError as error:
    raise config_flags.fatal_config_error(error, flag_of=_MCEM_FLAGS) from None
  return jax.jit(estimate), mcem_config


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = config_flags.config_from_flags(default_workdir="runs/figure3_{dataset}")
  config_flags.exit_if_ignored(config.run, "Fig. 3's runner", uses_devices=False)
  dataset = config_flags.load_data(config.data)
  model = config_flags.make_model(config, dataset)
  root, name, batch_size = config.run.workdir, config.data.dataset, config.train.batch_size
  test = dataset.test[: _ML_EXAMPLES.value]
  estimate, mcem_config = _method_configs(model)
  panels, rows = {}, []
  for train_size in map(int, _TRAIN_SIZES.value):
    if train_size > dataset.train.shape[0] or train_size < batch_size:
      raise SystemExit(
        f"FATAL: --train_sizes={train_size} must be between --batch_size="
        f"{batch_size} and the {dataset.train.shape[0]} training examples."
      )
    train_data = jax.device_put(dataset.train[:train_size])
    eval_sets = {"train": train_data[: _ML_EXAMPLES.value], "test": jax.device_put(test)}
    if config.train.dynamic_binarization:
      eval_sets = evaluation.binarize_for_evaluation(eval_sets)
    num_epochs = config.budget.epochs(train_size, batch_size)
    panel = panels.setdefault(f"N train = {train_size}", {})
    for algorithm in _ALGORITHMS.value:
      workdir = os.path.join(root, f"n{train_size}_{algorithm}")
      logging.info(
        "Fig. 3: %s on %d examples for %d epochs in %s", algorithm, train_size, num_epochs, workdir
      )
      records = train_and_score(
        model,
        config.train,
        algorithm,
        train_data,
        eval_sets,
        num_epochs,
        workdir,
        config.run.seed,
        estimate,
        mcem_config,
      )
      panel[METHOD_LABELS[algorithm]] = records
      rows.append(
        {
          "train_size": train_size,
          "algorithm": algorithm,
          **tables.final_summary(records, "log_likelihood"),
        }
      )
  path = plots.plot_bound_comparison(
    panels,
    os.path.join(root, "figure3.png"),
    f"{name}, J = {model.latent_dim}: AEVB vs wake-sleep vs MCEM (Fig. 3)",
    value="log_likelihood",
    ylabel="Marginal log-likelihood per example (nats)",
  )
  table = tables.summary_table(
    f"Final estimated marginal log-likelihood per example (nats, App. D), {name}.",
    [("N train", lambda r: r["train_size"]), ("method", lambda r: METHOD_LABELS[r["algorithm"]])],
    rows,
    value="log_likelihood",
    value_header="log p(x)",
  )
  tables.write_summary(root, "figure3", table, rows)
  print(table)
  logging.info("Wrote %s", path)


if __name__ == "__main__":
  config_flags.run_main(main)
