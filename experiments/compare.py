r"""Compare model variants: `python -m experiments.compare --variants=a.flags,b.flags [flags]`.

Each variant is a flagfile of the shared flags (`experiments.config_flags`; e.g.
experiments/configs/family/*.flags: a posterior family, the autoencoder, beta,
IWAE, the Categorical decoder), applied as `experiments.figure45` applies its presets:
the flag defaults, then the variant, then this command line, whose flags (the
budget, the data directories) therefore apply to every variant. Each run
lives in <workdir>/<variant name> and resumes like any run. Writes, in
--workdir (default runs/compare):

  compare_bounds.png           train and test bound against training samples, one
                               curve per variant, one panel per decoder (their
                               bounds are in different units)
  compare_samples.png          decoder means at z ~ N(0, I), a panel per variant
  compare_reconstructions.png  test examples (odd rows) and their
                               reconstructions from the encoder mean (even rows)
  compare_latents.png          test encoder means coloured by class, for the
                               variants with a 2-D latent space on a labelled data set
  compare.md, compare.json     the final bounds

Example:
  python -m experiments.compare --tfds_manual_dir=../shared/data --num_epochs=10 \
      --variants=experiments/configs/family/vae_latent2.flags,experiments/configs/family/autoencoder_latent2.flags
"""

from __future__ import annotations

import dataclasses
import os
import sys

import jax
import numpy as np
from absl import app, flags, logging

from experiments import config_flags, tables
from vae_jax.figures import images, plots
from vae_jax.figures.run_figures import train_and_draw
from vae_jax.models.functions import encode
from vae_jax.training import metrics
from vae_jax.training import run as run_lib

_VARIANTS = flags.DEFINE_list(
  "variants", None, "Flagfiles of experiments.train, one run each, with distinct file names."
)
_NUM_IMAGES = flags.DEFINE_integer(
  "num_images", 20, "Samples and reconstructions per variant.", lower_bound=1
)
_NUM_LATENT_POINTS = flags.DEFINE_integer(
  "num_latent_points", 5000, "Test examples in the latent-space scatter.", lower_bound=1
)
flags.mark_flag_as_required("variants")


@flags.validator(
  "variants", message="--variants must name existing flagfiles with distinct file names."
)
def _check_variants(paths) -> bool:
  names = [config_flags.preset_name(path) for path in paths]
  return bool(paths) and all(map(os.path.isfile, paths)) and len(set(names)) == len(names)


def _write_figures(root, bounds, samples, reconstructions, latents, ncols):
  """The comparison's figures in `root` (the latent scatter where any variant
  has a 2-D latent space on a labelled data set); their paths."""
  written = [
    plots.plot_bound_comparison(
      bounds, os.path.join(root, "compare_bounds.png"), "Variational lower bound per variant"
    ),
    plots.plot_image_grids(
      samples,
      os.path.join(root, "compare_samples.png"),
      title="Samples: decoder means at z ~ N(0, I)",
    ),
    plots.plot_image_grids(
      reconstructions,
      os.path.join(root, "compare_reconstructions.png"),
      ncols=ncols,
      title="Test examples (top) and reconstructions (bottom)",
    ),
  ]
  if latents:
    written.append(
      plots.plot_latent_scatter(
        latents, os.path.join(root, "compare_latents.png"), "Test examples' encoder means, by class"
      )
    )
  return written


def _log_likelihood_cell(row) -> str:
  value = row["test_log_likelihood"]
  return "" if value is None else f"{value:.2f}"


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  root = flags.FLAGS.workdir or os.path.join("runs", "compare")
  bounds, samples, reconstructions, latents, rows = {}, {}, {}, {}, []
  num = _NUM_IMAGES.value
  for variant in _VARIANTS.value:
    config = config_flags.preset_config(variant, list(sys.argv))
    name = config_flags.preset_name(variant)
    dataset = config_flags.load_data(config.data)
    model = config_flags.make_model(config, dataset)
    run = dataclasses.replace(config.run, workdir=os.path.join(root, name))
    logging.info("Compare: %s in %s", name, run.workdir)
    state = train_and_draw(model, config.train, run, dataset, log=logging.info)
    params = run_lib.host_params(state)
    records = metrics.read_metrics(os.path.join(run.workdir, metrics.METRICS_FILENAME))
    bounds.setdefault(f"{model.likelihood} decoder", {})[name] = records
    samples[name] = images.sample_images(
      model, params, jax.random.key(run.seed), num, dataset.image_shape
    )
    reconstructions[name] = np.concatenate(
      images.reconstruction_images(model, params, dataset.test[: num // 2], dataset.image_shape)
    )
    if model.latent_dim == 2 and dataset.test_labels is not None:
      points = dataset.test[: _NUM_LATENT_POINTS.value]
      latents[name] = (
        np.asarray(encode(model, params, points)[0]),
        dataset.test_labels[: _NUM_LATENT_POINTS.value],
      )
    rows.append(
      {
        "variant": name,
        "dataset": dataset.name,
        "likelihood": model.likelihood,
        "algorithm": config.train.algorithm,
        "estimator": config.train.estimator_label,
        "num_samples": config.train.num_samples,
        "test_log_likelihood": records[-1].get("test_log_likelihood"),
        **tables.final_summary(records),
      }
    )
  written = _write_figures(root, bounds, samples, reconstructions, latents, num // 2)
  table = tables.summary_table(
    "Final bounds per example (nats), each of its variant's estimator (with L samples); the "
    "autoencoder's is the ELBO of its networks read as a VAE, a categorical decoder's is in "
    "nats of the quantised image. log p(x): the final k-sample test estimate "
    "(--log_likelihood_samples), where asked for.",
    [
      ("variant", lambda r: r["variant"]),
      ("algorithm", lambda r: r["algorithm"]),
      ("estimator", lambda r: r["estimator"]),
      ("L", lambda r: r["num_samples"]),
      ("decoder", lambda r: r["likelihood"]),
      ("test log p(x)", _log_likelihood_cell),
    ],
    rows,
  )
  tables.write_summary(root, "compare", table, rows)
  print(table)
  logging.info("Wrote %s", ", ".join(written))


if __name__ == "__main__":
  config_flags.run_main(main)
