r"""The AEVB paper's Figs. 4 and 5: `python -m experiments.figure45 [flags]`.

Fig. 4: the learned data manifold of a model with a 2-D latent space, one
panel per preset of --manifold_presets (the paper: Frey Face and MNIST).
Fig. 5: random samples (decoder means at z ~ N(0, I)) of the model of
--sample_preset for each latent size of --sample_latent_dims (the paper:
MNIST, J = 2, 5, 10, 20). A run both figures need (MNIST with J = 2) is
trained once.

A preset is a flagfile of the shared flags (`experiments.config_flags`)
describing one data set's model and optimiser (experiments/configs/mnist.flags,
frey_face.flags). Each preset is read as if it came first on the command line
(`config_flags.preset_config`): the flag defaults, then the preset, then this
command line's flags, which therefore apply to every data set (the budget, the
data directories; a model flag given here overrides every preset's). The
latent size is set per run. Each run lives in <workdir>/<preset name>_latent<J>
(--workdir, default runs/figure45) and resumes like any run. Writes
<workdir>/figure4.png, figure5.png, figure45.md
(the final bounds of each run) and figure45.json.

Examples (the paper's settings, the budget in training samples per run):
  python -m experiments.figure45 --num_train_samples=10000000 --tfds_manual_dir=../shared/data
  python -m experiments.figure45 --manifold_presets= --sample_latent_dims=2,20 \
      --num_train_samples=600000 --tfds_manual_dir=../shared/data   # Fig. 5 only
"""

from __future__ import annotations

import dataclasses
import os
import sys

import jax
from absl import app, flags, logging

from experiments import config_flags, tables
from vae_jax.figures import images, plots
from vae_jax.figures.run_figures import train_and_draw
from vae_jax.models import vae as vae_models
from vae_jax.training import metrics
from vae_jax.training import run as run_lib

_MANIFOLD_PRESETS = flags.DEFINE_list(
  "manifold_presets",
  ["experiments/configs/frey_face.flags", "experiments/configs/mnist.flags"],
  "Fig. 4: flagfiles of the models whose 2-D manifold is drawn, one panel each; empty: no Fig. 4.",
)
_SAMPLE_PRESET = flags.DEFINE_string(
  "sample_preset",
  "experiments/configs/mnist.flags",
  "Fig. 5: flagfile of the model sampled for each --sample_latent_dims.",
)
_SAMPLE_LATENT_DIMS = flags.DEFINE_list(
  "sample_latent_dims",
  ["2", "5", "10", "20"],
  "Fig. 5: latent sizes J, one panel of samples each; empty: no Fig. 5.",
)
_SAMPLES_PER_PANEL = flags.DEFINE_integer(
  "samples_per_panel", 100, "Fig. 5: samples per panel, 10 per row.", lower_bound=1
)


config_flags.require_positive_integers("sample_latent_dims", "2,5,10,20", allow_empty=True)


@flags.multi_flags_validator(["manifold_presets", "sample_preset", "sample_latent_dims"])
def _check_presets(values) -> bool:
  """Something to draw, and every preset it needs a readable file."""
  presets = list(values["manifold_presets"])
  if values["sample_latent_dims"]:
    if not values["sample_preset"]:
      raise flags.ValidationError("--sample_latent_dims needs --sample_preset.")
    presets.append(values["sample_preset"])
  if not presets:
    raise flags.ValidationError(
      "Nothing to draw: give --manifold_presets (Fig. 4) or --sample_latent_dims (Fig. 5)."
    )
  missing = [path for path in presets if not os.path.isfile(path)]
  if missing:
    raise flags.ValidationError(f"Preset flagfiles not found: {missing}.")
  names = [config_flags.preset_name(path) for path in dict.fromkeys(map(os.path.normpath, presets))]
  if len(set(names)) < len(names):
    # The name keys each run's subdirectory.
    raise flags.ValidationError(f"Presets must have distinct file names, got {presets}.")
  return True


MANIFOLD_LATENT_DIM = 2
_TITLES = {"frey_face": "Frey Face", "mnist": "MNIST"}


def _title(dataset: str, preset: str) -> str:
  """The panel title: the data set's name, and the preset's where they differ."""
  title = _TITLES.get(dataset, dataset)
  name = config_flags.preset_name(preset)
  return title if name == dataset else f"{title} ({name})"


def runs_needed(
  manifold_presets: list[str], sample_preset: str, sample_latent_dims: list[int]
) -> dict[str, dict[int, list[int]]]:
  """{preset: {J: the figures (4, 5) that use the run}}, in training order."""
  runs: dict[str, dict[int, list[int]]] = {}
  for preset in manifold_presets:
    runs.setdefault(os.path.normpath(preset), {}).setdefault(MANIFOLD_LATENT_DIM, []).append(4)
  for latent_dim in sample_latent_dims:
    runs.setdefault(os.path.normpath(sample_preset), {}).setdefault(latent_dim, []).append(5)
  return runs


_COLUMNS = (
  ("data set", lambda row: row["dataset"]),
  ("J", lambda row: row["latent_dim"]),
  ("figures", lambda row: ", ".join(map(str, row["figures"]))),
)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  root = flags.FLAGS.workdir or os.path.join("runs", "figure45")
  runs = runs_needed(
    _MANIFOLD_PRESETS.value, _SAMPLE_PRESET.value, [int(j) for j in _SAMPLE_LATENT_DIMS.value]
  )
  titles, manifolds, samples, rows = {}, {}, {}, []
  for preset, latent_dims in runs.items():
    config = config_flags.preset_config(preset, list(sys.argv))
    dataset = config_flags.load_data(config.data)
    name = titles[preset] = _title(config.data.dataset, preset)
    for latent_dim, uses in latent_dims.items():
      model = vae_models.vae_from_config(
        dataset.data_dim, dataclasses.replace(config.model, latent_dim=latent_dim), dataset.train
      )
      workdir = os.path.join(root, f"{config_flags.preset_name(preset)}_latent{latent_dim}")
      run = dataclasses.replace(config.run, workdir=workdir)
      logging.info("Figs. 4, 5: %s with J = %d in %s", name, latent_dim, workdir)
      state = train_and_draw(model, config.train, run, dataset, log=logging.info)
      params = run_lib.host_params(state)
      if 4 in uses:
        manifolds[name] = images.manifold_images(model, params, dataset.image_shape)
      if 5 in uses:
        samples[latent_dim] = images.sample_images(
          model, params, jax.random.key(run.seed), _SAMPLES_PER_PANEL.value, dataset.image_shape
        )
      records = metrics.read_metrics(os.path.join(workdir, metrics.METRICS_FILENAME))
      rows.append(
        {
          "dataset": config.data.dataset,
          "preset": preset,
          "latent_dim": latent_dim,
          "figures": uses,
          "workdir": workdir,
          **tables.final_summary(records),
        }
      )
  written = []
  if manifolds:
    written.append(
      plots.plot_manifolds(
        manifolds,
        images.MANIFOLD_GRID_SIZE,
        os.path.join(root, "figure4.png"),
        "Learned data manifolds, J = 2 (Fig. 4)",
      )
    )
  if samples:
    panels = {f"J = {j}": samples[int(j)] for j in _SAMPLE_LATENT_DIMS.value}
    written.append(
      plots.plot_image_grids(
        panels,
        os.path.join(root, "figure5.png"),
        title="Random samples from the learned generative models, "
        f"{titles[os.path.normpath(_SAMPLE_PRESET.value)]} (Fig. 5)",
      )
    )
  table = tables.summary_table(
    "Final lower bounds per example (nats) of the runs behind Figs. 4 and 5.", _COLUMNS, rows
  )
  tables.write_summary(root, "figure45", table, rows)
  print(table)
  logging.info("Wrote %s", ", ".join(written))


if __name__ == "__main__":
  config_flags.run_main(main)
