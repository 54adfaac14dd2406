r"""The AEVB paper's Fig. 2: `python -m experiments.figure2 [flags]`.

Trains AEVB and wake-sleep with the same networks for each latent size
(--latent_dims) and plots the lower bound per example (train and test)
against training samples evaluated, one panel per latent size. Every flag of
`experiments.config_flags` applies (use a preset with --flagfile); each run lives in
<workdir>/<algorithm>_latent<J> and resumes like any run. Writes
<workdir>/figure2.png, figure2.md (the final bounds) and figure2.json.

Examples (the paper's settings; the budget is the x-axis' end):
  python -m experiments.figure2 --flagfile=experiments/configs/figure2_mnist.flags \
      --num_train_samples=10000000 --tfds_manual_dir=../shared/data
  python -m experiments.figure2 --flagfile=experiments/configs/figure2_frey_face.flags
"""

from __future__ import annotations

import dataclasses
import os

from absl import app, flags, logging

from experiments import config_flags, tables
from vae_jax.figures import plots
from vae_jax.figures.run_figures import train_and_draw
from vae_jax.models import vae as vae_models
from vae_jax.training import metrics
from vae_jax.training import state as state_lib

_LATENT_DIMS = flags.DEFINE_list(
  "latent_dims", ["3", "5", "10", "20", "200"], "Latent sizes J, one panel each."
)
_ALGORITHMS = flags.DEFINE_list(
  "algorithms", ["aevb", "wake_sleep"], f"Methods compared, from {list(state_lib.ALGORITHMS)}."
)

config_flags.require_positive_integers("latent_dims", "3,5,10,20,200")
flags.register_validator(
  "algorithms",
  lambda names: bool(names) and set(names) <= set(state_lib.ALGORITHMS),
  message=f"--algorithms must be names from {list(state_lib.ALGORITHMS)}.",
)

METHOD_LABELS = {"aevb": "AEVB", "wake_sleep": "Wake-sleep", "autoencoder": "Autoencoder"}


_COLUMNS = (
  ("J", lambda row: row["latent_dim"]),
  ("method", lambda row: METHOD_LABELS[row["algorithm"]]),
)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = config_flags.config_from_flags(default_workdir="runs/figure2_{dataset}")
  dataset = config_flags.load_data(config.data)
  root, name = config.run.workdir, config.data.dataset
  panels, rows = {}, []
  for latent_dim in map(int, _LATENT_DIMS.value):
    panel = panels.setdefault(f"J = {latent_dim}", {})
    for algorithm in _ALGORITHMS.value:
      model = vae_models.vae_from_config(
        dataset.data_dim, dataclasses.replace(config.model, latent_dim=latent_dim), dataset.train
      )
      train_config = dataclasses.replace(config.train, algorithm=algorithm)
      run = dataclasses.replace(
        config.run, workdir=os.path.join(root, f"{algorithm}_latent{latent_dim}")
      )
      logging.info("Fig. 2: %s with J = %d in %s", algorithm, latent_dim, run.workdir)
      train_and_draw(model, train_config, run, dataset, log=logging.info)
      records = metrics.read_metrics(os.path.join(run.workdir, metrics.METRICS_FILENAME))
      panel[METHOD_LABELS[algorithm]] = records
      rows.append(
        {"latent_dim": latent_dim, "algorithm": algorithm, **tables.final_summary(records)}
      )
  path = plots.plot_bound_comparison(
    panels, os.path.join(root, "figure2.png"), f"{name}: AEVB vs wake-sleep (Fig. 2)"
  )
  table = tables.summary_table(f"Final lower bounds per example (nats), {name}.", _COLUMNS, rows)
  tables.write_summary(root, "figure2", table, rows)
  print(table)
  logging.info("Wrote %s", path)


if __name__ == "__main__":
  config_flags.run_main(main)
