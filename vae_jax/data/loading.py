"""`load_dataset`: a named data set as flat float32 arrays in [0, 1].

Data sets (`DATASETS`):

  name             train / validation / test   image  likelihood  values
  digits           1500 / - / 297              8x8    bernoulli   grey, k/16
  mnist            60000 / - / 10000           28x28  bernoulli   grey, k/255
  fashion_mnist    60000 / - / 10000           28x28  bernoulli   grey, k/255
  binarized_mnist  50000 / 10000 / 10000       28x28  bernoulli   exactly 0/1
  frey_face        1765 / - / 200              28x20  gaussian    grey, k/255

Data sets with classes (digits, mnist, fashion_mnist) also carry their labels,
int32 in [0, 10), for the semi-supervised model (`vae_jax.models.m2`).

* `digits` is scikit-learn's bundled copy of the UCI optical digits test set
  (1797 handwritten digits reduced to 8x8 counts 0..16): always available, no
  download, no TensorFlow. Split: the first 1500 images train, the last 297
  test; fixed by position rather than by an RNG so that it is the same on
  every machine and library version. Both parts hold every class (27 to 33
  test images per digit).
* `mnist`, `fashion_mnist`, `binarized_mnist` are the TFDS data sets of those
  names with their own splits. `mnist` keeps grey levels; dynamic binarisation
  is the trainer's job (`vae_jax.data.binarize`). `binarized_mnist` is
  Larochelle's fixed binarisation; its TFDS "validation" split is exposed as
  `Dataset.validation` (train on `train`, or on train + validation for all
  60000 MNIST training digits).
* `frey_face` is the TFDS builder in `vae_jax.data.frey_face`; its test split
  is the last 200 video frames (see that module for why).

TFDS data sets are prepared once into `data_dir` (argument, else
`$TFDS_DATA_DIR`, else TFDS's default `~/tensorflow_datasets`) and read from
there afterwards. Raw files for offline preparation come from `manual_dir`
(argument, else `$VAE_JAX_MANUAL_DIR`); see `vae_jax.data.tfds_prepare`.

`export_arrays` writes a loaded data set to one compressed `<name>.npz` file;
`load_dataset(name, arrays_dir=...)` (or `$VAE_JAX_ARRAYS_DIR`) reads it back,
bit for bit, without TFDS or TensorFlow: for machines that have JAX but no
TensorFlow (an accelerator host, say). `resplit` deals the training and
test examples out again at random, to check how much a data set's own split
matters.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from vae_jax.data import tfds_prepare
from vae_jax.data.errors import DataError

DATA_DIR_ENV = "TFDS_DATA_DIR"
ARRAYS_DIR_ENV = "VAE_JAX_ARRAYS_DIR"


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
  """A data set of flattened images.

  Attributes:
    name: one of `DATASETS`.
    train: [num_train, data_dim] float32 in [0, 1].
    test: [num_test, data_dim] float32 in [0, 1].
    image_shape: (height, width); height * width == data_dim.
    likelihood: default decoder, "bernoulli" or "gaussian".
    validation: [num_validation, data_dim] float32 in [0, 1], or None when
      the data set defines no validation split.
    train_labels, test_labels: [num_train], [num_test] int32 class indices
      in [0, num_classes), or None for a data set without labels.
    num_classes: the number of classes, 0 without labels.
  """

  name: str
  train: np.ndarray
  test: np.ndarray
  image_shape: tuple[int, int]
  likelihood: str
  validation: np.ndarray | None = None
  train_labels: np.ndarray | None = None
  test_labels: np.ndarray | None = None
  num_classes: int = 0

  @property
  def data_dim(self) -> int:
    return self.train.shape[1]


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  image_shape: tuple[int, int]
  likelihood: str
  # Split name -> expected number of examples; also which splits to load.
  num_examples: Mapping[str, int]
  # Raw value that means intensity 1.0.
  max_value: float
  binary: bool = False
  # 0: the data set has no labels (or TFDS's copy of it keeps none).
  num_classes: int = 0


_MNIST_LIKE = DatasetSpec(
  (28, 28), "bernoulli", {"train": 60_000, "test": 10_000}, 255.0, num_classes=10
)
_SPECS: dict[str, DatasetSpec] = {
  "digits": DatasetSpec((8, 8), "bernoulli", {"train": 1500, "test": 297}, 16.0, num_classes=10),
  "mnist": _MNIST_LIKE,
  "fashion_mnist": _MNIST_LIKE,
  "binarized_mnist": DatasetSpec(
    (28, 28),
    "bernoulli",
    {"train": 50_000, "validation": 10_000, "test": 10_000},
    1.0,
    binary=True,
  ),
  # Must agree with the split in `vae_jax.data.frey_face`.
  "frey_face": DatasetSpec((28, 20), "gaussian", {"train": 1765, "test": 200}, 255.0),
}
DATASETS: tuple[str, ...] = tuple(_SPECS)


def dataset_spec(name: str) -> DatasetSpec:
  """What is known of a data set before it is loaded: image shape, default
  likelihood, split sizes, classes."""
  if name not in _SPECS:
    raise DataError(f"Unknown data set {name!r}; valid names: {', '.join(DATASETS)}.")
  return _SPECS[name]


_DIGITS_NUM_TRAIN = 1500


def check_split(
  x: np.ndarray,
  *,
  name: str,
  split: str,
  num_examples: int,
  data_dim: int,
  binary: bool = False,
) -> None:
  """Raises `DataError` unless x is [num_examples, data_dim] float32 in [0, 1].

  Args:
    x: [num_examples, data_dim] the loaded split.
    name: data set name, for messages.
    split: split name, for messages.
    num_examples: expected number of rows.
    data_dim: expected number of columns.
    binary: whether every value must be exactly 0 or 1.
  """
  where = f"{name}[{split}]"
  if x.shape != (num_examples, data_dim) or x.dtype != np.float32:
    raise DataError(
      f"{where}: expected float32 of shape {(num_examples, data_dim)}, got "
      f"{x.dtype} of shape {x.shape}. The prepared data is not the expected "
      "data set; delete it from the TFDS data_dir and prepare it again."
    )
  if not np.all(np.isfinite(x)):
    raise DataError(f"{where}: {np.sum(~np.isfinite(x))} values are NaN or inf.")
  low, high = float(x.min()), float(x.max())
  if low < 0.0 or high > 1.0:
    raise DataError(f"{where}: values span [{low}, {high}], expected [0, 1].")
  if binary and not np.all((x == 0.0) | (x == 1.0)):
    raise DataError(f"{where}: values other than 0 and 1 in a binary data set.")


def check_labels(
  labels: np.ndarray, *, name: str, split: str, num_examples: int, num_classes: int
) -> None:
  """Raises `DataError` unless labels are [num_examples] integers in [0, num_classes)."""
  where = f"{name}[{split}] labels"
  if labels.shape != (num_examples,) or not np.issubdtype(labels.dtype, np.integer):
    raise DataError(
      f"{where}: expected {num_examples} integers, got {labels.dtype} of shape {labels.shape}."
    )
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise DataError(
      f"{where}: values span [{labels.min()}, {labels.max()}], expected [0, {num_classes})."
    )


def _raw_digits() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  """({"train": [1500, 64], "test": [297, 64]} float64 counts 0..16, the
  same splits' labels)."""
  # Imported here: scikit-learn is slow to import and only digits needs it.
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top

  digits = load_digits()
  split = lambda a: {"train": a[:_DIGITS_NUM_TRAIN], "test": a[_DIGITS_NUM_TRAIN:]}
  return split(digits.data), split(digits.target)


def _raw_tfds(
  name: str,
  splits: tuple[str, ...],
  data_dir: str | os.PathLike[str] | None,
  manual_dir: str | os.PathLike[str] | None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  """({split: [num_examples, height, width, 1] uint8}, {split: [num_examples]
  labels} for the data sets whose TFDS features have a "label") read from TFDS."""
  tfds = tfds_prepare.import_tfds()
  if name == "frey_face":
    from vae_jax.data.frey_face import FreyFace  # pylint: disable=g-import-not-at-top

    builder = FreyFace(data_dir=data_dir)
  else:
    builder = tfds.builder(name, data_dir=data_dir)
  tfds_prepare.prepare(builder, manual_dir)
  examples = {split: tfds_prepare.read_split(builder, split) for split in splits}
  return (
    {split: e["image"] for split, e in examples.items()},
    {split: e["label"] for split, e in examples.items() if "label" in e},
  )


def arrays_path(arrays_dir: str | os.PathLike[str], name: str) -> Path:
  """The array file of data set `name` in `arrays_dir`: `<arrays_dir>/<name>.npz`."""
  return Path(arrays_dir).expanduser() / f"{name}.npz"


def export_arrays(dataset: Dataset, arrays_dir: str | os.PathLike[str]) -> Path:
  """Writes a data set loaded by `load_dataset` to `arrays_path(arrays_dir, name)`.

  Every split is stored as its integer levels (x * the data set's maximum raw
  value, uint8) with its labels, compressed, so that `load_dataset(name,
  arrays_dir=arrays_dir)` returns the same arrays bit for bit.

  Returns:
    The path written.

  Raises:
    DataError: the data set is not as `load_dataset` returns it (a value
      that is not a level, e.g. a quantised or otherwise transformed copy).
  """
  spec = _SPECS[dataset.name]
  arrays = {"name": np.array(dataset.name)}
  for split in spec.num_examples:
    x = getattr(dataset, split)
    levels = np.rint(np.asarray(x, np.float64) * spec.max_value)
    if (
      x.dtype != np.float32
      or levels.min() < 0
      or levels.max() > 255
      or not np.array_equal(levels.astype(np.float32) / np.float32(spec.max_value), x)
    ):
      raise DataError(
        f"{dataset.name}[{split}]: only a data set as load_dataset returns it can be "
        f"exported (float32 multiples of 1/{spec.max_value:g}); got {x.dtype} values "
        "that are not."
      )
    arrays[split] = levels.astype(np.uint8)
    if spec.num_classes:
      arrays[f"{split}_labels"] = getattr(dataset, f"{split}_labels")
  path = arrays_path(arrays_dir, dataset.name)
  path.parent.mkdir(parents=True, exist_ok=True)
  np.savez_compressed(path, **arrays)
  return path


def _raw_arrays(
  name: str, splits: tuple[str, ...], labelled: bool, arrays_dir: str | os.PathLike[str]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  """({split: [num_examples, data_dim] uint8 levels}, {split: labels} if
  `labelled`) read from the file `export_arrays` wrote."""
  path = arrays_path(arrays_dir, name)
  if not path.is_file():
    raise DataError(
      f"{name}: array file {path} not found. Write it with `python -m "
      f"experiments.export_arrays --datasets={name} --arrays_dir={path.parent}` on a "
      f"machine with TFDS, or load through TFDS (no arrays_dir / ${ARRAYS_DIR_ENV})."
    )
  try:
    with np.load(path, allow_pickle=False) as contents:
      arrays = {key: contents[key] for key in contents.files}
  except (OSError, ValueError) as error:
    raise DataError(f"{name}: cannot read array file {path}: {error}") from None
  label_keys = [f"{split}_labels" for split in splits] if labelled else []
  expected = [*splits, *label_keys]
  if str(arrays.get("name", "")) != name or not set(expected) <= set(arrays):
    raise DataError(
      f"{name}: {path} holds {str(arrays.get('name', 'no data set'))!r} with "
      f"{sorted(set(arrays) - {'name'})}, not {name!r} with {expected}; export it again."
    )
  return (
    {split: arrays[split] for split in splits},
    {split: arrays[key] for split, key in zip(splits, label_keys, strict=False)},
  )


def load_dataset(
  name: str,
  *,
  data_dir: str | os.PathLike[str] | None = None,
  manual_dir: str | os.PathLike[str] | None = None,
  arrays_dir: str | os.PathLike[str] | None = None,
) -> Dataset:
  """Loads a data set by name, preparing it with TFDS first if needed.

  Args:
    name: one of `DATASETS`.
    data_dir: where TFDS keeps prepared data; default `$TFDS_DATA_DIR`, else
      TFDS's default (~/tensorflow_datasets). Unused for "digits".
    manual_dir: raw files for offline preparation (the files themselves, or
      a root with one subdirectory per data set); default
      `$VAE_JAX_MANUAL_DIR`, else TFDS downloads them. Only read when the
      data set is not prepared in `data_dir` yet. Unused for "digits".
    arrays_dir: a directory of files written by `export_arrays`; default
      `$VAE_JAX_ARRAYS_DIR`; "" for none. When set, the data set is read from
      its file there (which must exist), and TFDS, TensorFlow and
      scikit-learn are not imported; data_dir and manual_dir are then unused.

  Returns:
    The `Dataset`, every split checked for shape and value range.

  Raises:
    DataError: unknown name; missing, corrupt or undownloadable raw files;
      prepared data of the wrong shape or range; a missing or foreign array file.
  """
  if name not in _SPECS:
    raise DataError(f"Unknown data set {name!r}; valid names: {', '.join(DATASETS)}.")
  spec = _SPECS[name]
  splits = tuple(spec.num_examples)
  if arrays_dir is None:
    arrays_dir = os.environ.get(ARRAYS_DIR_ENV)
  if arrays_dir:
    raw, raw_labels = _raw_arrays(name, splits, spec.num_classes > 0, arrays_dir)
  elif name == "digits":
    raw, raw_labels = _raw_digits()
  else:
    raw, raw_labels = _raw_tfds(name, splits, data_dir or os.environ.get(DATA_DIR_ENV), manual_dir)
  data_dim = spec.image_shape[0] * spec.image_shape[1]
  arrays = {}
  for split in splits:
    x = raw[split].reshape(len(raw[split]), -1).astype(np.float32) / np.float32(spec.max_value)
    check_split(
      x,
      name=name,
      split=split,
      num_examples=spec.num_examples[split],
      data_dim=data_dim,
      binary=spec.binary,
    )
    arrays[split] = x
  labels = {}
  if spec.num_classes:
    for split in splits:
      labels[split] = np.asarray(raw_labels[split]).astype(np.int32)
      check_labels(
        labels[split],
        name=name,
        split=split,
        num_examples=spec.num_examples[split],
        num_classes=spec.num_classes,
      )
  return Dataset(
    name=name,
    train=arrays["train"],
    test=arrays["test"],
    image_shape=spec.image_shape,
    likelihood=spec.likelihood,
    validation=arrays.get("validation"),
    train_labels=labels.get("train"),
    test_labels=labels.get("test"),
    num_classes=spec.num_classes,
  )


def resplit(dataset: Dataset, seed: int) -> Dataset:
  """The training and test examples pooled and dealt out again at random.

  A check of how much a data set's own split matters: Frey Face's test set,
  say, is the last stretch of the video (`vae_jax.data.frey_face`), while a
  random split puts near-duplicate neighbouring frames on both sides. The
  sizes of the two splits and each example's label stay; the validation split
  is not touched.

  Args:
    dataset: as `load_dataset` returns it.
    seed: seeds the permutation (NumPy's default generator), so a seed names
      one split on every machine.

  Returns:
    The `Dataset` with train: [num_train, data_dim] and test: [num_test,
    data_dim] drawn without replacement from the pooled examples.
  """
  pooled = np.concatenate([dataset.train, dataset.test])
  order = np.random.default_rng(seed).permutation(len(pooled))
  train_order, test_order = np.split(order, [len(dataset.train)])
  labels = {}
  if dataset.train_labels is not None:
    pooled_labels = np.concatenate([dataset.train_labels, dataset.test_labels])
    labels = dict(train_labels=pooled_labels[train_order], test_labels=pooled_labels[test_order])
  return dataclasses.replace(dataset, train=pooled[train_order], test=pooled[test_order], **labels)
