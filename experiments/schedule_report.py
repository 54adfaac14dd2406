r"""A run on the IWAE schedule, stage by stage: `python -m experiments.schedule_report`.

Reads <--workdir>/metrics.jsonl and run_config.json of a run trained with
--learning_rate_schedule=iwae (the presets experiments/configs/iwae_table1_*.flags
evaluate it, and estimate the k = 5000 test log-likelihood, after every stage)
and writes
  --figure: the train and test bounds at every evaluation and the test
    log-likelihood estimates against epochs on a log axis, with --published
    drawn as a line;
  to standard output: a markdown table, one row per stage reached, of its
    learning rate, its training time (evaluation excluded) and the bounds,
    log-likelihood and active units (h1/h2 with two stochastic layers) after it.
A run still training reports the stages it has finished and where it stands.

Example (the IWAE paper's VAE row, Table 1):
  python -m experiments.schedule_report --workdir=/path/to/iwae_table1_vae \
      --published=-86.76 --figure=docs/figures/iwae_table1_vae.png
"""

from __future__ import annotations

import json
import os

from absl import app, flags

from experiments import tables
from vae_jax.figures import plots
from vae_jax.training import metrics

_WORKDIR = flags.DEFINE_string("workdir", None, "The run's work directory.", required=True)
_FIGURE = flags.DEFINE_string(
  "figure", None, "Where to write the figure (default <workdir>/schedule_curve.png)."
)
_PUBLISHED = flags.DEFINE_float(
  "published", None, "A published test log-likelihood to draw as a line (nats)."
)
_TITLE = flags.DEFINE_string("title", None, "Figure title (default: the work directory's name).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  workdir = _WORKDIR.value
  try:
    records = metrics.read_metrics(os.path.join(workdir, metrics.METRICS_FILENAME))
    with open(os.path.join(workdir, "run_config.json"), encoding="utf-8") as f:
      train = json.load(f)["train"]
  except OSError as error:
    raise SystemExit(f"FATAL: {error.strerror}: {error.filename}; is --workdir a run?") from None
  if train["learning_rate_schedule"] != "iwae":
    raise SystemExit(
      f"FATAL: {workdir} was trained with --learning_rate_schedule="
      f"{train['learning_rate_schedule']}, not iwae: it has no stages."
    )
  if not any(r["epoch"] > 0 for r in records):
    raise SystemExit(f"FATAL: {workdir} has no evaluation after training yet.")
  figure = _FIGURE.value or os.path.join(workdir, "schedule_curve.png")
  reference = None
  if _PUBLISHED.value is not None:
    reference = (f"published ({_PUBLISHED.value:.2f})", _PUBLISHED.value)
  title = _TITLE.value or os.path.basename(os.path.normpath(workdir))
  plots.plot_curve_by_epoch(records, figure, title, reference)
  print(
    tables.markdown_table(
      [
        "stage",
        "epochs",
        "learning rate",
        "training s",
        "train bound",
        "test bound",
        "test log-likelihood",
        "active units",
      ],
      tables.iwae_stage_rows(records, train["learning_rate"]),
      [True, False, True, True, True, True, True, True],
    )
  )
  print(f"Wrote {figure}")


if __name__ == "__main__":
  app.run(main)
