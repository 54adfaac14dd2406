"""Prepare a TFDS data set from raw files on disk, offline, and read it into numpy.

TFDS's DownloadManager uses a file in `manual_dir` instead of downloading a
URL when the file is named as TFDS registers it for that URL (the filename
column of the data set's checksums) and it still verifies that file's size and
sha256. This module adds what TFDS lacks for offline use:

* it locates the raw files (`manual_dir` argument, else `$VAE_JAX_MANUAL_DIR`;
  either the directory holding the files or a root with one subdirectory per
  data set, e.g. `<root>/mnist/`);
* it fails before any network access when a file is missing, naming the file,
  the directory and the URL it comes from;
* it accepts a gzip-compressed copy `<file>.gz` of a raw file (Larochelle's
  binarized MNIST `.amat` files are commonly stored so) and decompresses it
  into a temporary directory; TFDS then verifies the decompressed bytes;
* it turns checksum mismatches and failed downloads into `DataError`s.

TensorFlow and TFDS are imported lazily, and TF is kept off the GPUs, which
belong to JAX.
"""

from __future__ import annotations

import contextlib
import gzip
import importlib.util
import logging
import os
import shutil
import tempfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from vae_jax.data.errors import DataError

MANUAL_DIR_ENV = "VAE_JAX_MANUAL_DIR"

_log = logging.getLogger(__name__)


def import_tfds() -> ModuleType:
  """Imports TensorFlow (hidden from the GPUs) and returns `tensorflow_datasets`.

  Raises:
    DataError: a package that TFDS needs to prepare or read data is missing.
  """
  # TFDS 4.9.x needs `importlib_resources` on every Python but declares it
  # only for Python < 3.9 (tensorflow/datasets#11212); without it the failure
  # surfaces deep inside `download_and_prepare`.
  for module, hint in (
    ("tensorflow", "tensorflow-cpu"),
    ("tensorflow_datasets", "tensorflow-datasets"),
    ("importlib_resources", "importlib_resources"),
  ):
    if importlib.util.find_spec(module) is None:
      raise DataError(
        f"Loading TFDS data sets needs the Python package {module!r}; "
        f"install it with `pip install {hint}`."
      )
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  # TF would otherwise reserve most of GPU memory at its first op, leaving
  # none for JAX; TFDS only needs it for decoding on the CPU.
  # A RuntimeError: TF's devices are initialised already (by an earlier call or the caller).
  with contextlib.suppress(RuntimeError):
    tf.config.set_visible_devices([], "GPU")
  return tfds


def resolve_manual_dir(
  name: str, manual_dir: str | os.PathLike[str] | None
) -> tuple[Path, str] | None:
  """Finds the raw-file directory of data set `name`.

  Args:
    name: TFDS name, e.g. "mnist".
    manual_dir: the argument; None falls back to `$VAE_JAX_MANUAL_DIR`.

  Returns:
    (directory, where it came from) or None when neither is set. The
    directory is `<manual_dir>/<name>` when that is a directory, else
    `<manual_dir>` itself.

  Raises:
    DataError: the given directory does not exist.
  """
  if manual_dir is not None:
    root, origin = Path(manual_dir), "the manual_dir argument"
  elif os.environ.get(MANUAL_DIR_ENV):
    root, origin = Path(os.environ[MANUAL_DIR_ENV]), f"${MANUAL_DIR_ENV}"
  else:
    return None
  root = root.expanduser()
  if not root.is_dir():
    raise DataError(
      f"{name}: manual directory {root} (from {origin}) does not exist. "
      f"Point manual_dir= / ${MANUAL_DIR_ENV} at a directory holding the raw "
      f"files of {name!r}, directly or in a '{name}/' subdirectory."
    )
  subdir = root / name
  return (subdir if subdir.is_dir() else root), origin


def stage_raw_files(
  name: str,
  url_infos: Mapping[str, Any],
  manual_dir: Path,
  origin: str,
  staging_dir: Path,
) -> Path:
  """Checks that every raw file is in `manual_dir`; gunzips `.gz` copies.

  Args:
    name: TFDS name, for messages.
    url_infos: the builder's {url: UrlInfo}; `UrlInfo.filename` is the name
      TFDS looks for in the manual directory.
    manual_dir: directory with the raw files, each as `<filename>` or
      `<filename>.gz`.
    origin: where `manual_dir` came from, for messages.
    staging_dir: empty scratch directory, used when a file must be
      decompressed.

  Returns:
    The directory to hand to TFDS as `manual_dir`: `manual_dir` itself when
    every file is there uncompressed, else `staging_dir` holding links to the
    uncompressed files and the decompressed ones.

  Raises:
    DataError: a file is missing, or a `.gz` copy cannot be decompressed.
  """
  files = {info.filename: url for url, info in url_infos.items()}
  missing = [
    f for f in files if not (manual_dir / f).is_file() and not (manual_dir / f"{f}.gz").is_file()
  ]
  if missing:
    listing = "\n".join(f"  {f}  (from {files[f]})" for f in sorted(missing))
    raise DataError(
      f"{name}: raw files missing from manual directory {manual_dir} "
      f"(from {origin}):\n{listing}\n"
      f"Put them there (as downloaded, or gzip-compressed as <file>.gz), or "
      f"point manual_dir= / ${MANUAL_DIR_ENV} at a directory that holds "
      f"them, directly or in a '{name}/' subdirectory."
    )
  if all((manual_dir / f).is_file() for f in files):
    return manual_dir
  for f in sorted(files):
    source = manual_dir / f
    if source.is_file():
      (staging_dir / f).symlink_to(source.resolve())
      continue
    try:
      with gzip.open(f"{source}.gz", "rb") as src, open(staging_dir / f, "wb") as dst:
        shutil.copyfileobj(src, dst)
    except (OSError, EOFError, zlib.error) as e:
      raise DataError(
        f"{name}: {source}.gz is corrupt or truncated, it cannot be "
        f"decompressed ({e}). Replace it with an intact copy of {files[f]}."
      ) from e
  return staging_dir


def prepare(builder: Any, manual_dir: str | os.PathLike[str] | None) -> None:
  """Runs `builder.download_and_prepare` unless the data is prepared already.

  With a manual directory (argument or `$VAE_JAX_MANUAL_DIR`) nothing is
  downloaded: the raw files come from there and are checksum-verified by
  TFDS. Without one, TFDS downloads the files (checksum-verified as well).
  Downloads and extractions go to a temporary directory; only the prepared
  records stay, in `builder.data_dir`.

  Args:
    builder: a `tfds.core.DatasetBuilder`.
    manual_dir: see `resolve_manual_dir`.

  Raises:
    DataError: missing or corrupt raw files, or a failed download.
  """
  if builder.is_prepared():
    return
  tfds = import_tfds()
  # pylint: disable-next=g-import-not-at-top
  from tensorflow_datasets.core.download.download_manager import NonMatchingChecksumError

  name = builder.name
  located = resolve_manual_dir(name, manual_dir)
  with tempfile.TemporaryDirectory(prefix=f"vae_jax_{name}_") as scratch:
    scratch = Path(scratch)
    if located is None:
      tfds_manual_dir = None
      _log.info("Preparing %s in %s from the network.", name, builder.data_dir)
    else:
      staging = scratch / "manual"
      staging.mkdir()
      tfds_manual_dir = stage_raw_files(name, builder.url_infos, located[0], located[1], staging)
      _log.info("Preparing %s in %s from %s.", name, builder.data_dir, located[0])
    config = tfds.download.DownloadConfig(
      manual_dir=tfds_manual_dir,
      force_checksums_validation=True,
      try_download_gcs=False,
    )
    try:
      builder.download_and_prepare(download_dir=scratch / "downloads", download_config=config)
    except NonMatchingChecksumError as e:
      raise DataError(
        f"{name}: checksum mismatch, a raw file is corrupt or not the "
        f"expected file. Replace it with an intact copy.\n{e}"
      ) from e
    except (OSError, tfds.download.DownloadError) as e:
      if located is not None:
        raise
      raise DataError(
        f"{name}: not prepared in {builder.data_dir} and downloading the raw "
        f"files failed ({e}). To prepare offline, pass manual_dir= or set "
        f"${MANUAL_DIR_ENV} to a directory holding: "
        + ", ".join(sorted(i.filename for i in builder.url_infos.values()))
      ) from e


def read_split(builder: Any, split: str) -> dict[str, np.ndarray]:
  """Reads a whole prepared split.

  Args:
    builder: a prepared `tfds.core.DatasetBuilder` with an "image" feature.
    split: split name, e.g. "train".

  Returns:
    {feature: values}, in the split's stored order: "image" [num_examples,
    height, width, channels] uint8, and e.g. "label" [num_examples].
  """
  tfds = import_tfds()
  return tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
