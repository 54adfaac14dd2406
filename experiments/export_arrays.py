r"""Exports data sets to array files: `python -m experiments.export_arrays [flags]`.

Loads each data set of --datasets through TFDS (preparing it offline from
--tfds_manual_dir if needed) and writes <arrays_dir>/<name>.npz
(`vae_jax.data.export_arrays`: the integer grey levels and labels,
compressed). Every runner's --arrays_dir then reads the same arrays, bit for
bit, on a machine without TFDS or TensorFlow, e.g. an accelerator host:

  python -m experiments.export_arrays --datasets=mnist,binarized_mnist,frey_face \
      --tfds_manual_dir=../shared/data --arrays_dir=/tmp/arrays
  python -m experiments.train --flagfile=experiments/configs/mnist.flags --arrays_dir=/tmp/arrays

The files are derived from the data sets: keep them out of version control.
"""

from __future__ import annotations

from absl import app, flags

from experiments import config_flags  # noqa: F401 (defines the data flags read here)
from vae_jax import data

_DATASETS = flags.DEFINE_list(
  "datasets",
  ["mnist", "binarized_mnist", "frey_face"],
  f"Data sets to export, from {list(data.DATASETS)}.",
)

flags.register_validator(
  "datasets",
  lambda names: bool(names) and set(names) <= set(data.DATASETS),
  message=f"--datasets must be names from {list(data.DATASETS)}.",
)
flags.mark_flag_as_required("arrays_dir")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  for name in _DATASETS.value:
    try:
      # arrays_dir="": through TFDS even when $VAE_JAX_ARRAYS_DIR is set.
      dataset = data.load_dataset(
        name,
        data_dir=flags.FLAGS.tfds_data_dir,
        manual_dir=flags.FLAGS.tfds_manual_dir,
        arrays_dir="",
      )
    except data.DataError as error:
      raise SystemExit(f"FATAL: cannot load {name}: {error}") from None
    path = data.export_arrays(dataset, flags.FLAGS.arrays_dir)
    print(f"{name}: {path} ({path.stat().st_size / 2**20:.1f} MiB)")


if __name__ == "__main__":
  app.run(main)
