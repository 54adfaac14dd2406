r"""The AEVB paper's Fig. 3: `python -m experiments.figure3 [flags]`.

Trains AEVB, wake-sleep and Monte Carlo EM (`vae_jax.mcem`) on the first N
training examples for each N of --train_sizes, and plots the estimated
marginal likelihood (App. D, `vae_jax.marginal_likelihood`) of the first
--ml_examples training and test examples against training samples
evaluated, one panel per N. The model and optimiser flags are those of
`experiments.train` (use the preset). Each run lives in
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

from experiments import train as train_flags
from vae_jax import api, experiment, figures, mcem, metrics, training

ALGORITHMS = ("aevb", "wake_sleep", "mcem")
METHOD_LABELS = {"aevb": "AEVB", "wake_sleep": "Wake-sleep", "mcem": "MCEM"}

_TRAIN_SIZES = flags.DEFINE_list(
    "train_sizes", ["1000", "50000"], "Training-set sizes N (the first N examples), one panel each.")
_ALGORITHMS = flags.DEFINE_list("algorithms", list(ALGORITHMS), f"Methods, from {list(ALGORITHMS)}.")
_NUM_EVALUATIONS = flags.DEFINE_integer(
    "num_evaluations", 8, "Evaluations per run, at log-spaced epochs up to the budget.",
    lower_bound=1)
_ML_EXAMPLES = flags.DEFINE_integer(
    "ml_examples", 1000, "Scored examples: the first this many of the training and test sets.",
    lower_bound=1)
_ML_NUM_SAMPLES = flags.DEFINE_integer(
    "ml_num_samples", 50, "HMC samples per example for the density fit, and as many for the "
    "estimate (App. D).", lower_bound=1)
_ML_NUM_LEAPFROG = flags.DEFINE_integer(
    "ml_num_leapfrog", 4, "Leapfrog steps per HMC transition of the estimator.", lower_bound=1)
_ML_NUM_WARMUP = flags.DEFINE_integer(
    "ml_num_warmup", 100, "HMC warm-up transitions per example (step-size tuning, discarded).",
    lower_bound=0)
_MCEM_NUM_LEAPFROG = flags.DEFINE_integer(
    "mcem_num_leapfrog", 10, "Leapfrog steps of MCEM's E-step.", lower_bound=1)
_MCEM_NUM_UPDATES = flags.DEFINE_integer(
    "mcem_num_updates", 5, "MCEM's M-step updates per E-step.", lower_bound=1)
_MCEM_TARGET_ACCEPTANCE = flags.DEFINE_float(
    "mcem_target_acceptance", 0.9, "Acceptance rate MCEM's HMC step size is tuned to.",
    lower_bound=0.01, upper_bound=0.99)

flags.register_validator(
    "train_sizes", lambda values: bool(values) and all(v.isdigit() and int(v) > 0 for v in values),
    message="--train_sizes must be comma-separated positive integers, e.g. 1000,50000.")
flags.register_validator(
    "algorithms", lambda names: bool(names) and set(names) <= set(ALGORITHMS),
    message=f"--algorithms must be names from {list(ALGORITHMS)}.")


def evaluation_epochs(num_epochs: int, num_evaluations: int) -> list[int]:
  """About `num_evaluations` epochs, log-spaced from 1 to `num_epochs` (both
  included), fewer where rounding makes them coincide."""
  return sorted({int(round(e)) for e in np.geomspace(1, num_epochs, num_evaluations)})


def train_and_score(model, config, algorithm, train_data, eval_sets, num_epochs, workdir, seed,
                    estimate):
  """Trains one method for `num_epochs`, scoring it with `estimate` (a jitted
  `api.make_marginal_likelihood_estimate`) at `evaluation_epochs`; resumes
  from the run's last checkpoint. Returns its metrics records."""
  num_train = train_data.shape[0]
  key = jax.random.key(seed)
  mcem_config = None
  if algorithm == "mcem":
    mcem_config = mcem.MCEMConfig(num_leapfrog=_MCEM_NUM_LEAPFROG.value,
                                  num_updates=_MCEM_NUM_UPDATES.value,
                                  target_acceptance=_MCEM_TARGET_ACCEPTANCE.value)
    state = mcem.init_mcem_state(model, config, mcem_config, num_train, key)
    epoch = mcem.make_mcem_epoch(model, config, mcem_config, num_train)
    params_of = lambda state: state.train.params
  else:
    config = dataclasses.replace(config, algorithm=algorithm)
    state = training.init_train_state(model, config, key, num_train)
    epoch = training.make_train_epoch(model, config, num_train)
    params_of = lambda state: state.params
  # Compiled ahead, so that "seconds" counts training alone.
  epoch = epoch.lower(state, train_data).compile()
  estimate_key = jax.random.key(seed + 1)
  samples_per_epoch = (num_train // config.batch_size) * config.batch_size
  scored = set(evaluation_epochs(num_epochs, _NUM_EVALUATIONS.value))

  def score(state, number, _):
    scores = {
        f"{name}_log_likelihood": float(training.mean_nats(estimate(
            params_of(state), data, estimate_key, jnp.zeros((data.shape[0], model.latent_dim)))))
        for name, data in eval_sets.items()
    }
    logging.info("%s epoch %d: %s", workdir, number, scores)
    return scores

  _, records = experiment.train_epochs_resumably(
      workdir, state, lambda s: epoch(s, train_data), num_epochs, scored.__contains__, score,
      samples_per_epoch, log=logging.info,
      settings={**experiment.describe(model, config, seed),
                **experiment.describe_parts(algorithm=algorithm, num_train=num_train,
                                            mcem=mcem_config)})
  return records


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  dataset = train_flags.dataset_from_flags()
  model, config, run = train_flags.run_from_flags(dataset)
  train_flags.exit_if_ignored(run, "Fig. 3's runner", uses_devices=False)
  root = flags.FLAGS.workdir or os.path.join("runs", f"figure3_{flags.FLAGS.dataset}")
  test = dataset.test[: _ML_EXAMPLES.value]
  estimate = jax.jit(api.make_marginal_likelihood_estimate(
      model, _ML_NUM_SAMPLES.value, _ML_NUM_LEAPFROG.value, _ML_NUM_WARMUP.value))
  panels, rows = {}, []
  for train_size in map(int, _TRAIN_SIZES.value):
    if train_size > dataset.train.shape[0] or train_size < config.batch_size:
      raise SystemExit(f"FATAL: --train_sizes={train_size} must be between --batch_size="
                       f"{config.batch_size} and the {dataset.train.shape[0]} training examples.")
    train_data = jax.device_put(dataset.train[:train_size])
    eval_sets = {"train": train_data[: _ML_EXAMPLES.value], "test": jax.device_put(test)}
    if config.dynamic_binarization:
      eval_sets = experiment.binarize_for_evaluation(eval_sets)
    num_epochs = train_flags.num_epochs_from_flags(train_size, config.batch_size)
    panel = panels.setdefault(f"N train = {train_size}", {})
    for algorithm in _ALGORITHMS.value:
      workdir = os.path.join(root, f"n{train_size}_{algorithm}")
      logging.info("Fig. 3: %s on %d examples for %d epochs in %s",
                   algorithm, train_size, num_epochs, workdir)
      records = train_and_score(model, config, algorithm, train_data, eval_sets, num_epochs,
                                workdir, run.seed, estimate)
      panel[METHOD_LABELS[algorithm]] = records
      rows.append({"train_size": train_size, "algorithm": algorithm,
                   **metrics.final_summary(records, "log_likelihood")})
  name = flags.FLAGS.dataset
  path = figures.plot_bound_comparison(
      panels, os.path.join(root, "figure3.png"),
      f"{name}, J = {model.latent_dim}: AEVB vs wake-sleep vs MCEM (Fig. 3)",
      value="log_likelihood", ylabel="Marginal log-likelihood per example (nats)")
  table = metrics.summary_table(
      f"Final estimated marginal log-likelihood per example (nats, App. D), {name}.",
      [("N train", lambda r: r["train_size"]), ("method", lambda r: METHOD_LABELS[r["algorithm"]])],
      rows, value="log_likelihood", value_header="log p(x)")
  metrics.write_summary(root, "figure3", table, rows)
  print(table)
  logging.info("Wrote %s", path)


if __name__ == "__main__":
  train_flags.run_main(main)
