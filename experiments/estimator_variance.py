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
import time

import jax
import numpy as np
from absl import app, flags, logging

from experiments import config_flags, tables
from vae_jax.data.transforms import binarize
from vae_jax.errors import ConfigError
from vae_jax.figures import plots
from vae_jax.inference import variance
from vae_jax.inference.bounds import check_estimator
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
  f"Estimators to measure, from {list(estimators.ESTIMATOR_NAMES)}; one that takes a "
  "setting names it after a colon: miwae:M and piwae:M (M groups of the L samples), "
  "ciwae:beta.",
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

config_flags.require_positive_integers("sample_counts", "1,2,5,10,100")


def parse_estimator(spec: str) -> tuple[str, dict]:
  """ "name" or "name:setting" of --estimators -> (name, its settings as
  keywords of `variance.measure`): miwae:4 -> ("miwae", {"num_groups": 4})."""
  name, _, setting = spec.partition(":")
  if name not in estimators.ESTIMATOR_NAMES:
    raise ConfigError(
      "estimators",
      f"--estimators: unknown estimator {name!r}; choose from "
      f"{sorted(estimators.ESTIMATOR_NAMES)}.",
    )
  takes = estimators.ESTIMATOR_SETTINGS.get(name)
  if takes is None:
    if setting:
      raise ConfigError("estimators", f"--estimators: {name!r} takes no setting, got {spec!r}.")
    return name, {}
  kind = int if takes == "num_groups" else float
  try:
    return name, {takes: kind(setting)}
  except ValueError:
    raise ConfigError(
      "estimators",
      f"--estimators: {name!r} takes its {takes} after a colon ({name}:{kind(2)}), got {spec!r}.",
    ) from None


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


_MEASURED = (
  ("bound_variance", "Var[bound]"),
  ("encoder_variance", "tr Cov[grad enc]"),
  ("decoder_variance", "tr Cov[grad dec]"),
  ("encoder_snr", "SNR enc"),
  ("decoder_snr", "SNR dec"),
  ("encoder_parameter_snr", "SNR/param enc"),
  ("decoder_parameter_snr", "SNR/param dec"),
)
# The exponents of SNR ∝ L^a that the papers derive for large L: Rainforth et
# al. (2018, Theorem 1) for IWAE's encoder and decoder, Tucker et al. (2019)
# for DReG's encoder; a mean of L iid terms (A, B) has a = 1/2.
PUBLISHED_SLOPES = {
  ("iwae", "encoder"): -0.5,
  ("iwae", "decoder"): 0.5,
  ("dreg", "encoder"): 0.5,
  ("A", "encoder"): 0.5,
  ("A", "decoder"): 0.5,
  ("B", "encoder"): 0.5,
  ("B", "decoder"): 0.5,
}
SNR_DEFINITIONS = (("snr", "|E g| / sqrt(tr Cov)"), ("parameter_snr", "mean_i |E g_i| / std g_i"))


def _markdown(rows: list[dict]) -> str:
  """One table per stage: each estimator's moments with their 95% intervals."""
  headers = ["estimator", "L", *(label for _, label in _MEASURED), "us/grad"]
  sections = []
  for stage in dict.fromkeys(r["stage"] for r in rows):
    cells = [
      [
        r["estimator"],
        r["num_samples"],
        *(f"{r[k]:.3g} ± {r[k + '_ci']:.2g}" for k, _ in _MEASURED),
        f"{1e6 * r['seconds_per_gradient']:.0f}",
      ]
      for r in rows
      if r["stage"] == stage
    ]
    sections.append(
      f"### After {stage:,} training examples\n\n"
      + tables.markdown_table(headers, cells, [False] + [True] * (len(headers) - 1))
    )
  return "\n".join(sections)


def snr_slopes(rows: list[dict], num_repetitions: int) -> list[dict]:
  """Per stage, estimator, part and SNR definition with at least 3 values of
  L where the SNR is defined (a gradient that is exactly zero, as RWS-DReG's
  encoder's at L = 1, has none): the fitted exponent a of SNR ∝ L^a with its
  95% interval (`variance.log_log_slope`), the values of L it is fitted on,
  and the published exponent where there is one."""
  slopes = []
  for stage, estimator in dict.fromkeys((r["stage"], r["estimator"]) for r in rows):
    measured = sorted(
      (r for r in rows if r["stage"] == stage and r["estimator"] == estimator),
      key=lambda r: r["num_samples"],
    )
    for part in ("encoder", "decoder"):
      for definition, _ in SNR_DEFINITIONS:
        key = f"{part}_{definition}"
        points = [r for r in measured if np.isfinite(r[key]) and r[key] > 0]
        if len(points) < 3:
          continue
        slope, half_width = _fitted_slope(points, key, num_repetitions)
        tail_slope, tail_half_width = _fitted_slope(points[-2:], key, num_repetitions)
        slopes.append(
          {
            "stage": stage,
            "estimator": estimator,
            "part": part,
            "definition": definition,
            "slope": slope,
            "slope_ci": half_width,
            "tail_slope": tail_slope,
            "tail_slope_ci": tail_half_width,
            "sample_counts": [r["num_samples"] for r in points],
            "published": PUBLISHED_SLOPES.get((estimator.partition(":")[0], part)),
          }
        )
  return slopes


def _fitted_slope(points: list[dict], key: str, num_repetitions: int) -> tuple[float, float]:
  return variance.log_log_slope(
    [r["num_samples"] for r in points],
    [r[key] for r in points],
    [r[f"{key}_ci"] for r in points],
    num_repetitions,
  )


def _slopes_markdown(slopes: list[dict], num_draws: int) -> str:
  floor = variance.snr_floor(num_draws)
  headers = [
    "estimator",
    "part",
    "L fitted",
    *(f"a, {label}" for _, label in SNR_DEFINITIONS),
    "a, last two L",
    "published a",
  ]
  sections = []
  for stage in dict.fromkeys(s["stage"] for s in slopes):
    cells = []
    for estimator, part in dict.fromkeys(
      (s["estimator"], s["part"]) for s in slopes if s["stage"] == stage
    ):
      fitted = {
        s["definition"]: s
        for s in slopes
        if (s["stage"], s["estimator"], s["part"]) == (stage, estimator, part)
      }
      first = next(iter(fitted.values()))
      counts = first["sample_counts"]
      cells.append(
        [
          estimator,
          part,
          f"{counts[0]}-{counts[-1]}",
          *(
            f"{fitted[d]['slope']:+.3f} ± {fitted[d]['slope_ci']:.2g}" if d in fitted else ""
            for d, _ in SNR_DEFINITIONS
          ),
          f"{first['tail_slope']:+.3f} ± {first['tail_slope_ci']:.2g}",
          "" if first["published"] is None else f"{first['published']:+.1f}",
        ]
      )
    sections.append(
      f"### SNR ∝ L^a after {stage:,} training examples: the fitted exponent a\n\n"
      f"A gradient of zero mean reads as SNR {floor['snr']:.3f} (norm) and "
      f"{floor['parameter_snr']:.3f} (per parameter) with {num_draws} draws. "
      "'Last two L': the exponent between the two largest L (norm SNR), the nearest to "
      "the large-L limit the papers derive.\n\n"
      + tables.markdown_table(headers, cells, [False, False, True, True, True, True, True])
    )
  return "\n".join(sections)


def _write_results(outdir: str, settings: dict, rows: list[dict], slopes: list[dict]) -> str:
  """results.json (with the settings and slopes), results.csv and table.md; the table."""
  with open(os.path.join(outdir, "results.json"), "w", encoding="utf-8") as f:
    json.dump({"settings": settings, "rows": rows, "slopes": slopes}, f, indent=2)
  with open(os.path.join(outdir, "results.csv"), "w", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  table = _markdown(rows)
  if slopes:
    table += "\n" + _slopes_markdown(slopes, settings["num_draws"])
  table += "\n" + _cost_markdown(settings["seconds"])
  with open(os.path.join(outdir, "table.md"), "w", encoding="utf-8") as f:
    f.write(table)
  return table


def _cost_markdown(seconds: dict[str, float]) -> str:
  return (
    f"Cost: {seconds['training']:.0f} s training (or restoring), "
    f"{seconds['measuring']:.0f} s measuring (compilation included), on "
    f"{seconds['device']}.\n"
  )


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  stages = _parse_stages(_STAGES.value)
  measured = {spec: parse_estimator(spec) for spec in _ESTIMATORS.value}
  sample_counts = list(map(int, _SAMPLE_COUNTS.value))
  for name, settings in measured.values():
    for num_samples in sample_counts:
      check_estimator(name, num_samples, **settings)
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
  seconds = {"training": 0.0, "measuring": 0.0}
  for stage in stages:
    stage_epochs = math.ceil(stage / examples_per_epoch)
    started = time.perf_counter()
    state = _train_to(stage_epochs, model, config, run, dataset)
    seconds["training"] += time.perf_counter() - started
    started = time.perf_counter()
    for spec, (name, settings) in measured.items():
      for num_samples in sample_counts:
        key, measure_key = jax.random.split(key)
        results = variance.measure(
          model,
          state.params,
          x,
          measure_key,
          estimator=name,
          num_samples=num_samples,
          num_draws=_NUM_DRAWS.value,
          num_repetitions=_NUM_REPETITIONS.value,
          **settings,
        )
        row = {"stage": stage, "step": int(state.step), "estimator": spec}
        row["num_samples"] = num_samples
        for figure, (mean, half_width) in results.items():
          row[figure], row[f"{figure}_ci"] = mean, half_width
        rows.append(row)
        logging.info(
          "stage %d %s L=%d: SNR enc %.3g, dec %.3g; tr Cov enc %.3g, dec %.3g",
          stage,
          spec,
          num_samples,
          row["encoder_snr"],
          row["decoder_snr"],
          row["encoder_variance"],
          row["decoder_variance"],
        )
    seconds["measuring"] += time.perf_counter() - started
    stage_rows = [r for r in rows if r["stage"] == stage]
    title = f"after {stage:,} training examples"
    plots.plot_variance_vs_samples(
      stage_rows,
      os.path.join(outdir, f"variance_stage_{stage}.png"),
      title=f"Estimator variance {title}",
    )
    plots.plot_variance_vs_samples(
      stage_rows,
      os.path.join(outdir, f"snr_stage_{stage}.png"),
      title=f"Gradient signal-to-noise ratio {title}",
      panels=plots.SNR_PANELS,
    )
  seconds["device"] = tables.device_description()
  settings = {
    "num_examples": _NUM_EXAMPLES.value,
    "num_draws": _NUM_DRAWS.value,
    "num_repetitions": _NUM_REPETITIONS.value,
    "seconds": seconds,
    "run": run_lib.describe(model, config, run.seed),
  }
  slopes = snr_slopes(rows, _NUM_REPETITIONS.value)
  print(_write_results(outdir, settings, rows, slopes))


if __name__ == "__main__":
  config_flags.run_main(main)
