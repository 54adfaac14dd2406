r"""Estimator-variance benchmark: `python -m experiments.estimator_variance [flags]`.

Trains (or resumes) the run that the training flags describe (every shared flag
of `experiments.config_flags` applies, e.g. --flagfile=experiments/configs/mnist.flags)
up to each --stages budget, and at each stage measures, per estimator and L:
the variance of the bound estimate, the trace of the gradient covariance of
encoder and decoder, the gradient's signal-to-noise ratio and the wall time per
per-example gradient, each with a 95% interval over --num_repetitions.

Writes to --outdir (default <workdir>/variance): results.json, results.csv,
table.md and variance_stage_<samples>.png.

Example (the paper's MNIST model at init and after 1e5 and 1e6 samples):
  python -m experiments.estimator_variance --flagfile=experiments/configs/mnist.flags \
      --stages=0,1e5,1e6 --tfds_manual_dir=../shared/data
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os

import jax
from absl import app, flags, logging

from experiments import config_flags, tables
from vae_jax.data.transforms import binarize
from vae_jax.figures import plots
from vae_jax.inference import variance
from vae_jax.math import estimators
from vae_jax.training import evaluation
from vae_jax.training import run as run_lib
from vae_jax.training.checkpoints import Checkpointer
from vae_jax.training.workdir_lock import prepare_workdir

_STAGES = flags.DEFINE_list(
  "stages",
  ["0"],
  "Training budgets in examples processed (e.g. 0,1e5,1e6), "
  "each rounded up to whole epochs; 0 is the initialisation.",
)
_ESTIMATORS = flags.DEFINE_list(
  "estimators",
  ["A", "B", "stl", "score", "score_baseline", "iwae"],
  f"Estimators to measure, from {list(estimators.ESTIMATORS)}.",
)
_SAMPLE_COUNTS = flags.DEFINE_list(
  "sample_counts", ["1", "2", "5", "10", "100"], "Values of L (k for iwae)."
)
_NUM_EXAMPLES = flags.DEFINE_integer(
  "num_examples", 100, "Training examples the variances are averaged over.", lower_bound=1
)
_NUM_DRAWS = flags.DEFINE_integer(
  "num_draws", 100, "Noise draws per example and repetition.", lower_bound=2
)
_NUM_REPETITIONS = flags.DEFINE_integer(
  "num_repetitions", 5, "Independent repetitions, for the intervals.", lower_bound=2
)
_OUTDIR = flags.DEFINE_string("outdir", None, "Output directory (default: <workdir>/variance).")

flags.register_validator(
  "estimators",
  lambda names: bool(names) and set(names) <= set(estimators.ESTIMATORS),
  message=f"--estimators must be names from {sorted(estimators.ESTIMATORS)}.",
)
flags.register_validator(
  "sample_counts",
  lambda values: bool(values) and all(v.isdigit() and int(v) > 0 for v in values),
  message="--sample_counts must be comma-separated positive integers, e.g. 1,2,5,10,100.",
)


def _parse_stages(values: list[str]) -> list[int]:
  try:
    stages = [int(float(v)) for v in values]
  except ValueError:
    raise SystemExit(f"FATAL: --stages must be numbers of examples, got {values}.") from None
  if any(s < 0 for s in stages) or stages != sorted(set(stages)):
    raise SystemExit(f"FATAL: --stages must be increasing and >= 0, got {values}.")
  return stages


def _train_to(stage_epochs, model, config, run, dataset):
  """The train state after `stage_epochs` epochs, training or restoring it."""
  state = run_lib.train_and_evaluate(
    model,
    config,
    dataclasses.replace(run, num_epochs=stage_epochs),
    dataset.train,
    dataset.test,
    log=logging.info,
  )
  steps = stage_epochs * (dataset.train.shape[0] // config.batch_size)
  if int(state.step) == steps:
    return state
  with Checkpointer(os.path.join(run.workdir, "checkpoints")) as checkpointer:
    if steps not in checkpointer.all_steps():
      raise SystemExit(
        f"FATAL: {run.workdir} is trained past {stage_epochs} epochs and its checkpoint "
        f"at step {steps} is gone; use a fresh --workdir or a larger --keep_checkpoints."
      )
    return checkpointer.restore(state, step=steps)


def _markdown(rows: list[dict]) -> str:
  """One table per stage: each estimator's moments with their 95% intervals."""
  headers = [
    "estimator",
    "L",
    "Var[bound]",
    "tr Cov[grad enc]",
    "tr Cov[grad dec]",
    "SNR enc",
    "SNR dec",
    "us/grad",
  ]
  sections = []
  for stage in dict.fromkeys(r["stage"] for r in rows):
    cells = [
      [
        r["estimator"],
        r["num_samples"],
        *(
          f"{r[k]:.3g} ± {r[k + '_ci']:.2g}"
          for k in (
            "bound_variance",
            "encoder_variance",
            "decoder_variance",
            "encoder_snr",
            "decoder_snr",
          )
        ),
        f"{1e6 * r['seconds_per_gradient']:.0f}",
      ]
      for r in rows
      if r["stage"] == stage
    ]
    sections.append(
      f"### After {stage:,} training examples\n\n"
      + tables.markdown_table(headers, cells, [False] + [True] * 7)
    )
  return "\n".join(sections)


def _write_results(outdir: str, settings: dict, rows: list[dict]) -> str:
  """results.json (with the settings), results.csv and table.md; the table."""
  with open(os.path.join(outdir, "results.json"), "w", encoding="utf-8") as f:
    json.dump({"settings": settings, "rows": rows}, f, indent=2)
  with open(os.path.join(outdir, "results.csv"), "w", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  table = _markdown(rows)
  with open(os.path.join(outdir, "table.md"), "w", encoding="utf-8") as f:
    f.write(table)
  return table


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  stages = _parse_stages(_STAGES.value)
  experiment = config_flags.config_from_flags()
  config, run = experiment.train, experiment.run
  config_flags.exit_if_ignored(run, "the variance benchmark", uses_devices=True)
  dataset = config_flags.load_data(experiment.data)
  model = config_flags.make_model(experiment, dataset)
  outdir = _OUTDIR.value or os.path.join(run.workdir, "variance")
  prepare_workdir(outdir)
  if _NUM_EXAMPLES.value > dataset.train.shape[0]:
    raise SystemExit(
      f"FATAL: --num_examples={_NUM_EXAMPLES.value} exceeds the "
      f"{dataset.train.shape[0]} training examples."
    )
  x = jax.numpy.asarray(dataset.train[: _NUM_EXAMPLES.value])
  if config.dynamic_binarization:
    x = binarize(jax.random.key(evaluation.EVAL_BINARIZATION_SEED), x)
  examples_per_epoch = (dataset.train.shape[0] // config.batch_size) * config.batch_size
  key = jax.random.key(run.seed + 3)
  rows = []
  for stage in stages:
    stage_epochs = math.ceil(stage / examples_per_epoch)
    state = _train_to(stage_epochs, model, config, run, dataset)
    for estimator in _ESTIMATORS.value:
      for num_samples in map(int, _SAMPLE_COUNTS.value):
        key, measure_key = jax.random.split(key)
        results = variance.measure(
          model,
          state.params,
          x,
          measure_key,
          estimator=estimator,
          num_samples=num_samples,
          num_draws=_NUM_DRAWS.value,
          num_repetitions=_NUM_REPETITIONS.value,
        )
        row = {
          "stage": stage,
          "step": int(state.step),
          "estimator": estimator,
          "num_samples": num_samples,
        }
        for name, (mean, half_width) in results.items():
          row[name], row[f"{name}_ci"] = mean, half_width
        rows.append(row)
        logging.info(
          "stage %d %s L=%d: Var[bound] %.3g, tr Cov enc %.3g, dec %.3g",
          stage,
          estimator,
          num_samples,
          row["bound_variance"],
          row["encoder_variance"],
          row["decoder_variance"],
        )
    plots.plot_variance_vs_samples(
      [r for r in rows if r["stage"] == stage],
      os.path.join(outdir, f"variance_stage_{stage}.png"),
      title=f"Estimator variance after {stage:,} training examples",
    )
  settings = {
    "num_examples": _NUM_EXAMPLES.value,
    "num_draws": _NUM_DRAWS.value,
    "num_repetitions": _NUM_REPETITIONS.value,
    "run": run_lib.describe(model, config, run.seed),
  }
  table = _write_results(outdir, settings, rows)
  print(table)


if __name__ == "__main__":
  config_flags.run_main(main)
