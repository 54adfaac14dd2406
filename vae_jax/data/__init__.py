"""Data sets for AEVB as flat float32 arrays in [0, 1], loaded through TFDS.

    dataset = vae_jax.data.load_dataset("mnist", manual_dir="/data/raw")
    dataset.train            # [60000, 784] float32 grey levels
    x = vae_jax.data.binarize(key, batch)   # per-step dynamic binarisation

`DATASETS` lists the names; `vae_jax.data.loading` describes each one and its
split, `vae_jax.data.tfds_prepare` how raw files are found for offline
preparation, `vae_jax.data.frey_face` the Frey Face TFDS builder. TensorFlow
and TFDS are imported only when a TFDS data set is loaded, never for "digits"
nor from the array files that `export_arrays` writes (`arrays_dir=`).
"""

from vae_jax.data.errors import DataError
from vae_jax.data.loading import (
  ARRAYS_DIR_ENV,
  DATA_DIR_ENV,
  DATASETS,
  Dataset,
  DatasetSpec,
  dataset_spec,
  export_arrays,
  load_dataset,
  resplit,
)
from vae_jax.data.tfds_prepare import MANUAL_DIR_ENV
from vae_jax.data.transforms import binarize, quantize

__all__ = [
  "ARRAYS_DIR_ENV",
  "DATASETS",
  "DATA_DIR_ENV",
  "MANUAL_DIR_ENV",
  "DataError",
  "Dataset",
  "DatasetSpec",
  "dataset_spec",
  "binarize",
  "export_arrays",
  "load_dataset",
  "quantize",
  "resplit",
]
