r"""What each cell of the IWAE paper's Table 1 costs here: `python -m experiments.iwae_table1_cost`.

For every preset of `experiments.iwae_table1.PUBLISHED` (the k = 1 cells
share one), in this process, each program compiled before it is timed:
  epoch       one training epoch of the preset (its model, estimator, k, M and
              Adam), timed on a 1/--epoch_fraction slice of the training set
              and scaled up: an epoch's steps all cost the same;
  evaluation  the train and test bounds the runner computes every
              --eval_every epochs (timed on --eval_examples of each, scaled);
  estimate    the k = 5000 test log-likelihood over the 10,000 test images
              (timed on --estimate_examples of them, scaled), which the preset
              computes after each of the schedule's 8 stages.
The whole cell: 3280 epochs, the evaluations and the estimates, in hours.
Writes the table as markdown to standard output and as --cost_csv (columns preset,
layers, k, objectives, epoch_seconds, evaluation_seconds, estimate_seconds,
hours, machine; the rows of presets not measured now are kept), which
`experiments.iwae_table1 --summaries` reads to mark
the cells not run with their cost; --machine (default: this host) and
--cost_csv are that runner's flags.

The long runs here train two at a time, each on one core (taskset -c 0 / 1):
measure the same way, e.g. with another run on the other core:
  taskset -c 1 python -m experiments.iwae_table1_cost --tfds_manual_dir=../shared/data
"""

from __future__ import annotations

import csv
import os
import time

import jax
from absl import app, flags

from experiments import config_flags, iwae_table1, tables
from vae_jax import training
from vae_jax.training import evaluation

_EPOCH_FRACTION = flags.DEFINE_integer(
  "epoch_fraction", 5, "Time the epoch on 1/this of the training set.", lower_bound=1
)
_EVAL_EXAMPLES = flags.DEFINE_integer(
  "eval_examples", 5000, "Examples of each set the bound evaluation is timed on.", lower_bound=1
)
_ESTIMATE_EXAMPLES = flags.DEFINE_integer(
  "estimate_examples", 200, "Test examples the k = 5000 estimate is timed on.", lower_bound=1
)
_PRESETS = flags.DEFINE_list("presets", [], "Only these presets (default: all of Table 1's).")

CSV_COLUMNS = (
  "preset",
  "layers",
  "k",
  "objectives",
  "epoch_seconds",
  "evaluation_seconds",
  "estimate_seconds",
  "hours",
  "machine",
)


def _seconds(compiled, *args) -> float:
  """Wall seconds of one call of a compiled program, to the last output."""
  start = time.perf_counter()
  jax.block_until_ready(compiled(*args))
  return time.perf_counter() - start


def _time_preset(preset: str, data_flags: list[str], datasets: dict) -> dict[str, float]:
  """The three costs of the module docstring for one preset, in seconds."""
  config = config_flags.preset_config(
    f"experiments/configs/{preset}.flags", ["iwae_table1_cost", *data_flags]
  )
  if config.data not in datasets:
    datasets[config.data] = config_flags.load_data(config.data)
  dataset = datasets[config.data]
  model = config_flags.make_model(config, dataset)
  train, test = jax.numpy.asarray(dataset.train), jax.numpy.asarray(dataset.test)
  num_train, num_test = train.shape[0], test.shape[0]
  eval_sets = evaluation.binarize_for_evaluation({"train": train, "test": test})
  state = training.init_train_state(model, config.train, jax.random.key(0), num_train)
  key = jax.random.key(1)

  bound = evaluation.make_evaluate(
    model, config.train.estimator, config.train.num_samples, **config.train.estimator_settings
  )
  evaluation_seconds = 0.0
  for name, size in (("train", num_train), ("test", num_test)):
    examples = eval_sets[name][: _EVAL_EXAMPLES.value]
    compiled = bound.lower(state.params, examples, key).compile()
    evaluation_seconds += _seconds(compiled, state.params, examples, key) * size / len(examples)

  estimate = evaluation.make_evaluate(model, "iwae", config.run.log_likelihood_samples)
  examples = eval_sets["test"][: _ESTIMATE_EXAMPLES.value]
  compiled = estimate.lower(state.params, examples, key).compile()
  estimate_seconds = _seconds(compiled, state.params, examples, key) * num_test / len(examples)

  # Last: the epoch donates the state's buffers.
  part = train[: num_train // _EPOCH_FRACTION.value]
  epoch = training.make_train_epoch(model, config.train, part.shape[0])
  epoch_seconds = _seconds(epoch.lower(state, part).compile(), state, part) * (
    num_train / part.shape[0]
  )

  run = config.run
  num_evaluations = len(
    {*range(run.eval_every, run.num_epochs + 1, run.eval_every)} | {*run.log_likelihood_epochs}
  )
  num_estimates = len(run.log_likelihood_epochs) + 1
  hours = (
    run.num_epochs * epoch_seconds
    + num_evaluations * evaluation_seconds
    + num_estimates * estimate_seconds
  ) / 3600
  return {
    "layers": config.model.stochastic_layers,
    "k": config.train.num_samples,
    "epoch_seconds": epoch_seconds,
    "evaluation_seconds": evaluation_seconds,
    "estimate_seconds": estimate_seconds,
    "hours": hours,
  }


def _write_costs(path: str, measured: dict[str, dict]) -> None:
  """Writes the measured rows to `path`, keeping the rows of the presets not
  measured now that the file already holds, in Table 1's order."""
  rows = {}
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      rows = {row["preset"]: row for row in csv.DictReader(f)}
  rows.update(measured)
  order = list(dict.fromkeys(cell.preset for cell in iwae_table1.PUBLISHED))
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with open(path, "w", encoding="utf-8", newline="") as f:
    writer = csv.DictWriter(f, CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows[preset] for preset in order if preset in rows)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  # The presets are parsed apart from this process's flags: pass on where the data is.
  data_flags = [
    f"--{name}={flags.FLAGS[name].value}"
    for name in ("tfds_data_dir", "tfds_manual_dir", "arrays_dir")
    if flags.FLAGS[name].value is not None
  ]
  presets = {}
  for cell in iwae_table1.PUBLISHED:
    presets.setdefault(cell.preset, []).append(f"{cell.objective} k={cell.k}")
  if _PRESETS.value:
    unknown = set(_PRESETS.value) - set(presets)
    if unknown:
      raise SystemExit(
        f"FATAL: --presets: no Table 1 preset {sorted(unknown)}; see {sorted(presets)}."
      )
    presets = {name: presets[name] for name in _PRESETS.value}
  machine = flags.FLAGS.machine or iwae_table1.host_description()
  datasets, rows = {}, []
  for preset, objectives in presets.items():
    costs = _time_preset(preset, data_flags, datasets)
    rows.append(
      {"preset": preset, "objectives": " / ".join(objectives), **costs, "machine": machine}
    )
    print(f"{preset}: {costs['epoch_seconds']:.1f} s an epoch, {costs['hours']:.1f} h", flush=True)
  measured = {
    row["preset"]: {**row, **{c: f"{row[c]:.2f}" for c in CSV_COLUMNS[4:8]}} for row in rows
  }
  _write_costs(flags.FLAGS.cost_csv, measured)
  print(
    tables.markdown_table(
      ["preset", "cells", "epoch s", "evaluation s", "k = 5000 estimate s", "whole cell h"],
      [
        [
          r["preset"],
          r["objectives"],
          f"{r['epoch_seconds']:.1f}",
          f"{r['evaluation_seconds']:.1f}",
          f"{r['estimate_seconds']:.0f}",
          f"{r['hours']:.1f}",
        ]
        for r in rows
      ],
      [False, False, True, True, True, True],
    )
  )
  print(f"Machine: {machine}. Wrote {flags.FLAGS.cost_csv}")


if __name__ == "__main__":
  app.run(main)
