"""load_dataset: every data set's shapes, values and splits; offline preparation
errors; the array files of export_arrays."""

from __future__ import annotations

import dataclasses
import gzip
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vae_jax import data
from vae_jax.data import loading

_MNIST_FILES = (
  "train-images-idx3-ubyte.gz",
  "train-labels-idx1-ubyte.gz",
  "t10k-images-idx3-ubyte.gz",
  "t10k-labels-idx1-ubyte.gz",
)


def _gunzip(path: Path) -> np.ndarray:
  """The decompressed bytes of a .gz file, uint8 [num_bytes]."""
  with gzip.open(path, "rb") as f:
    return np.frombuffer(f.read(), np.uint8)


def _sorted_rows(x: np.ndarray) -> np.ndarray:
  """[n, d] uint8 -> its n rows as opaque values, sorted.

  Equal results mean one array is a row permutation of the other: TFDS stores
  the examples in a hash order, not in file order.
  """
  return np.sort(np.ascontiguousarray(x).view(np.dtype((np.void, x.shape[1]))).ravel())


def _as_uint8(x: np.ndarray, max_value: int) -> np.ndarray:
  return np.round(x * max_value).astype(np.uint8)


def _link_all(source: Path, target: Path) -> None:
  target.mkdir()
  for f in source.iterdir():
    (target / f.name).symlink_to(f)


# --- digits: embedded, no TFDS ------------------------------------------------


def test_digits_shapes_values_and_likelihood():
  dataset = data.load_dataset("digits")
  assert dataset.name == "digits"
  assert dataset.train.shape == (1500, 64) and dataset.test.shape == (297, 64)
  assert dataset.train.dtype == dataset.test.dtype == np.float32
  assert dataset.image_shape == (8, 8) and dataset.data_dim == 64
  assert dataset.likelihood == "bernoulli"
  assert dataset.validation is None
  everything = np.concatenate([dataset.train, dataset.test])
  assert everything.min() == 0.0 and everything.max() == 1.0
  # Counts 0..16 scaled by 1/16: 17 levels, exactly representable.
  np.testing.assert_array_equal(np.unique(everything), np.arange(17) / 16)


def test_digits_split_is_the_first_1500_and_the_last_297():
  from sklearn.datasets import load_digits

  raw = load_digits().data
  first, second = data.load_dataset("digits"), data.load_dataset("digits")
  np.testing.assert_array_equal(first.train, raw[:1500] / 16)
  np.testing.assert_array_equal(first.test, raw[1500:] / 16)
  np.testing.assert_array_equal(first.train, second.train)
  np.testing.assert_array_equal(first.test, second.test)
  target = load_digits().target
  assert first.num_classes == 10 and first.train_labels.dtype == np.int32
  np.testing.assert_array_equal(first.train_labels, target[:1500])
  np.testing.assert_array_equal(first.test_labels, target[1500:])


def test_digits_needs_neither_tensorflow_nor_tfds():
  code = (
    "import sys; from vae_jax import data; data.load_dataset('digits'); "
    "print(sorted({'tensorflow', 'tensorflow_datasets'} & set(sys.modules)))"
  )
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "[]"


def test_unknown_name_lists_the_valid_names():
  with pytest.raises(data.DataError, match="Unknown data set 'mnsit'") as info:
    data.load_dataset("mnsit")
  for name in data.DATASETS:
    assert name in str(info.value)
  assert isinstance(info.value, ValueError)


# --- TFDS data sets prepared offline from the shared raw files -----------------


def test_mnist_shapes_values_and_likelihood(mnist):
  assert mnist.train.shape == (60_000, 784) and mnist.test.shape == (10_000, 784)
  assert mnist.train.dtype == mnist.test.dtype == np.float32
  assert mnist.image_shape == (28, 28) and mnist.likelihood == "bernoulli"
  assert mnist.validation is None
  assert mnist.train.min() == 0.0 and mnist.train.max() == 1.0


def test_mnist_images_are_lecuns(mnist, shared_data_dir):
  for x, stem in ((mnist.train, "train"), (mnist.test, "t10k")):
    raw = _gunzip(shared_data_dir / "mnist" / f"{stem}-images-idx3-ubyte.gz")
    raw = raw[16:].reshape(-1, 784)  # IDX3: a 16-byte header, then pixels.
    np.testing.assert_array_equal(_sorted_rows(_as_uint8(x, 255)), _sorted_rows(raw))
  # The well-known MNIST statistics: mean intensity 0.1307 (train), 0.1325
  # (test), and ink almost never in the top row (digits are centred).
  assert abs(mnist.train.mean(dtype=np.float64) - 0.13066) < 1e-5
  assert abs(mnist.test.mean(dtype=np.float64) - 0.13251) < 1e-5
  assert mnist.train.reshape(-1, 28, 28)[:, 0, :].mean() < 1e-5


def test_mnist_labels_are_lecuns_and_belong_to_their_images(mnist, shared_data_dir):
  assert mnist.num_classes == 10
  for x, labels, stem in (
    (mnist.train, mnist.train_labels, "train"),
    (mnist.test, mnist.test_labels, "t10k"),
  ):
    images = _gunzip(shared_data_dir / "mnist" / f"{stem}-images-idx3-ubyte.gz")[16:]
    raw_labels = _gunzip(shared_data_dir / "mnist" / f"{stem}-labels-idx1-ubyte.gz")[8:]
    # TFDS reorders the examples: pair each raw image with its label, sort the
    # pairs, and compare with the loaded pairs sorted the same way.
    raw = np.concatenate([images.reshape(-1, 784), raw_labels[:, None]], axis=1)
    loaded = np.concatenate([_as_uint8(x, 255), labels[:, None].astype(np.uint8)], axis=1)
    np.testing.assert_array_equal(_sorted_rows(loaded), _sorted_rows(raw))


def test_binarized_mnist_shapes_and_values(binarized_mnist):
  dataset = binarized_mnist
  assert dataset.train.shape == (50_000, 784)
  assert dataset.validation.shape == (10_000, 784)
  assert dataset.test.shape == (10_000, 784)
  assert dataset.image_shape == (28, 28) and dataset.likelihood == "bernoulli"
  assert dataset.num_classes == 0 and dataset.train_labels is None
  for x in (dataset.train, dataset.validation, dataset.test):
    assert x.dtype == np.float32
    np.testing.assert_array_equal(np.unique(x), [0.0, 1.0])


def test_binarized_mnist_rows_are_larochelles(binarized_mnist, shared_data_dir):
  for x, split in (
    (binarized_mnist.train, "train"),
    (binarized_mnist.validation, "valid"),
    (binarized_mnist.test, "test"),
  ):
    text = _gunzip(shared_data_dir / "binarized_mnist" / f"binarized_mnist_{split}.amat.gz")
    # "0 1 0 ... 1\n": every other character is a digit.
    raw = text[::2].reshape(-1, 784) - ord("0")
    np.testing.assert_array_equal(_sorted_rows(_as_uint8(x, 1)), _sorted_rows(raw))


def test_frey_face_is_the_video_with_the_last_200_frames_as_test(frey_face, shared_data_dir):
  import scipy.io

  assert frey_face.train.shape == (1765, 560) and frey_face.test.shape == (200, 560)
  assert frey_face.image_shape == (28, 20) and frey_face.likelihood == "gaussian"
  assert frey_face.train.dtype == np.float32
  ff = scipy.io.loadmat(shared_data_dir / "frey_face" / "frey_rawface.mat")["ff"]
  frames = np.concatenate([frey_face.train, frey_face.test])
  np.testing.assert_array_equal(_as_uint8(frames, 255), ff.T)


def test_environment_variables_are_the_defaults(shared_data_dir, tmp_path, monkeypatch):
  monkeypatch.setenv(data.MANUAL_DIR_ENV, str(shared_data_dir))
  monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path))
  dataset = data.load_dataset("frey_face")
  assert dataset.train.shape == (1765, 560)
  assert (tmp_path / "frey_face" / "1.0.0" / "dataset_info.json").is_file()


def test_prepared_data_needs_no_raw_files(frey_face, tfds_data_dir, tmp_path):
  missing = tmp_path / "no_such_dir"
  again = data.load_dataset("frey_face", data_dir=tfds_data_dir, manual_dir=missing)
  np.testing.assert_array_equal(again.test, frey_face.test)


# --- array files: export_arrays, arrays_dir ------------------------------------

_FIELDS = ("train", "test", "validation", "train_labels", "test_labels")


def _assert_same_dataset(actual: data.Dataset, expected: data.Dataset) -> None:
  assert (actual.name, actual.image_shape, actual.likelihood, actual.num_classes) == (
    expected.name,
    expected.image_shape,
    expected.likelihood,
    expected.num_classes,
  )
  for field in _FIELDS:
    a, e = getattr(actual, field), getattr(expected, field)
    assert (a is None) == (e is None), field
    if e is not None:
      assert a.dtype == e.dtype, field
      np.testing.assert_array_equal(a, e, err_msg=field)


def test_digits_array_file_gives_back_the_same_data_set(tmp_path):
  digits = data.load_dataset("digits")
  path = data.export_arrays(digits, tmp_path)
  assert path == tmp_path / "digits.npz"
  _assert_same_dataset(data.load_dataset("digits", arrays_dir=tmp_path), digits)


def test_a_tfds_array_file_loads_bit_for_bit_without_tensorflow(frey_face, tmp_path):
  data.export_arrays(frey_face, tmp_path)
  code = (
    "import sys, hashlib; from vae_jax import data\n"
    f"d = data.load_dataset('frey_face', arrays_dir={str(tmp_path)!r})\n"
    "print(hashlib.sha256(d.train.tobytes() + d.test.tobytes()).hexdigest())\n"
    "print(sorted({'tensorflow', 'tensorflow_datasets'} & set(sys.modules)))\n"
  )
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  import hashlib

  expected = hashlib.sha256(frey_face.train.tobytes() + frey_face.test.tobytes()).hexdigest()
  assert out.stdout.split() == [expected, "[]"]


def test_arrays_dir_comes_from_the_environment_unless_given_as_empty(tmp_path, monkeypatch):
  digits = data.load_dataset("digits")
  # A valid but different data set in the file: reading it is observable.
  reversed_digits = dataclasses.replace(
    digits, train=digits.train[::-1].copy(), train_labels=digits.train_labels[::-1].copy()
  )
  data.export_arrays(reversed_digits, tmp_path)
  monkeypatch.setenv(data.ARRAYS_DIR_ENV, str(tmp_path))
  _assert_same_dataset(data.load_dataset("digits"), reversed_digits)
  _assert_same_dataset(data.load_dataset("digits", arrays_dir=""), digits)


def test_missing_array_file_is_named_with_the_export_command(tmp_path):
  with pytest.raises(data.DataError, match="experiments.export_arrays --datasets=mnist") as info:
    data.load_dataset("mnist", arrays_dir=tmp_path)
  assert str(tmp_path / "mnist.npz") in str(info.value)


def test_an_array_file_of_another_data_set_is_refused(tmp_path):
  data.export_arrays(data.load_dataset("digits"), tmp_path)
  (tmp_path / "digits.npz").rename(tmp_path / "frey_face.npz")
  with pytest.raises(data.DataError, match="holds 'digits'"):
    data.load_dataset("frey_face", arrays_dir=tmp_path)


def test_an_array_file_without_the_labels_is_refused(tmp_path):
  path = data.export_arrays(data.load_dataset("digits"), tmp_path)
  with np.load(path) as contents:
    unlabelled = {k: contents[k] for k in contents.files if not k.endswith("_labels")}
  np.savez_compressed(path, **unlabelled)
  with pytest.raises(data.DataError, match="train_labels"):
    data.load_dataset("digits", arrays_dir=tmp_path)


def test_a_corrupt_array_file_is_named(tmp_path):
  (tmp_path / "digits.npz").write_bytes(b"not an npz file")
  with pytest.raises(data.DataError, match="cannot read array file"):
    data.load_dataset("digits", arrays_dir=tmp_path)


def test_only_untransformed_data_sets_are_exported(tmp_path):
  digits = data.load_dataset("digits")
  scaled = dataclasses.replace(digits, train=digits.train / 3)
  with pytest.raises(data.DataError, match="multiples of 1/16"):
    data.export_arrays(scaled, tmp_path)
  quantized = dataclasses.replace(digits, test=np.asarray(data.quantize(digits.test, 4)))
  with pytest.raises(data.DataError, match="int32"):
    data.export_arrays(quantized, tmp_path)


# --- errors ----------------------------------------------------------------------


def test_missing_manual_dir_is_named(tmp_path):
  missing = tmp_path / "raw"
  with pytest.raises(data.DataError, match="does not exist") as info:
    data.load_dataset("mnist", data_dir=tmp_path / "tfds", manual_dir=missing)
  assert str(missing) in str(info.value)
  assert data.MANUAL_DIR_ENV in str(info.value)


@pytest.mark.parametrize(
  "name, expected_files",
  [
    ("mnist", _MNIST_FILES),
    ("fashion_mnist", _MNIST_FILES),
    ("binarized_mnist", [f"binarized_mnist_{s}.amat" for s in ("train", "valid", "test")]),
    ("frey_face", ["frey_rawface.mat"]),
  ],
)
def test_missing_raw_files_are_named_with_their_urls(tmp_path, name, expected_files):
  manual_dir = tmp_path / "raw"
  manual_dir.mkdir()
  with pytest.raises(data.DataError, match="raw files missing") as info:
    data.load_dataset(name, data_dir=tmp_path / "tfds", manual_dir=manual_dir)
  message = str(info.value)
  assert str(manual_dir) in message and data.MANUAL_DIR_ENV in message
  for f in expected_files:
    assert f in message
  assert "http" in message
  assert not (tmp_path / "tfds" / name).exists()


def test_only_the_missing_file_is_named(tmp_path, shared_data_dir):
  manual_dir = tmp_path / "mnist"
  _link_all(shared_data_dir / "mnist", manual_dir)
  (manual_dir / "t10k-labels-idx1-ubyte.gz").unlink()
  with pytest.raises(data.DataError, match="raw files missing") as info:
    data.load_dataset("mnist", data_dir=tmp_path / "tfds", manual_dir=manual_dir)
  assert "t10k-labels-idx1-ubyte.gz" in str(info.value)
  assert "train-images-idx3-ubyte.gz" not in str(info.value)


@pytest.mark.parametrize(
  "name, corrupt_file",
  [("mnist", "t10k-labels-idx1-ubyte.gz"), ("frey_face", "frey_rawface.mat")],
)
def test_a_byte_flipped_raw_file_is_a_checksum_error(tmp_path, shared_data_dir, name, corrupt_file):
  manual_dir = tmp_path / name
  _link_all(shared_data_dir / name, manual_dir)
  content = bytearray((manual_dir / corrupt_file).read_bytes())
  content[len(content) // 2] ^= 0xFF
  (manual_dir / corrupt_file).unlink()
  (manual_dir / corrupt_file).write_bytes(content)
  with pytest.raises(data.DataError, match="checksum mismatch") as info:
    data.load_dataset(name, data_dir=tmp_path / "tfds", manual_dir=manual_dir)
  assert corrupt_file in str(info.value)
  # Nothing half-prepared is left to be picked up by the next call.
  assert not list((tmp_path / "tfds").glob(f"{name}/*/dataset_info.json"))


def test_a_truncated_gz_is_a_corruption_error(tmp_path, shared_data_dir):
  manual_dir = tmp_path / "binarized_mnist"
  _link_all(shared_data_dir / "binarized_mnist", manual_dir)
  truncated = manual_dir / "binarized_mnist_test.amat.gz"
  content = truncated.read_bytes()
  truncated.unlink()
  truncated.write_bytes(content[: len(content) // 2])
  with pytest.raises(data.DataError, match="corrupt or truncated") as info:
    data.load_dataset("binarized_mnist", data_dir=tmp_path / "tfds", manual_dir=manual_dir)
  assert str(truncated) in str(info.value)


@pytest.mark.parametrize(
  "x, binary, match",
  [
    (np.zeros((3, 4), np.float32), False, "shape"),
    (np.zeros((2, 4), np.float64), False, "float32"),
    (np.full((2, 4), np.nan, np.float32), False, "NaN"),
    (np.full((2, 4), 255.0, np.float32), False, r"expected \[0, 1\]"),
    (np.full((2, 4), 0.5, np.float32), True, "other than 0 and 1"),
  ],
)
def test_check_split_rejects_bad_data(x, binary, match):
  with pytest.raises(data.DataError, match=match):
    loading.check_split(x, name="toy", split="train", num_examples=2, data_dim=4, binary=binary)


@pytest.mark.parametrize(
  "labels, match",
  [
    (np.zeros(3, np.int32), "expected 2 integers"),
    (np.zeros(2, np.float32), "expected 2 integers"),
    (np.array([0, 10], np.int32), r"expected \[0, 10\)"),
    (np.array([-1, 0], np.int32), r"expected \[0, 10\)"),
  ],
)
def test_check_labels_rejects_bad_labels(labels, match):
  with pytest.raises(data.DataError, match=match):
    loading.check_labels(labels, name="toy", split="train", num_examples=2, num_classes=10)


def _rows_with_labels(x, labels):
  """The (label, pixels) rows of a split, in a canonical order."""
  rows = np.concatenate([labels[:, None].astype(np.float32), x], axis=1)
  return rows[np.lexsort(rows.T[::-1])]


def test_resplit_deals_the_same_examples_with_their_labels_into_splits_of_the_same_sizes():
  digits = data.load_dataset("digits")
  resplit = data.resplit(digits, seed=3)
  assert resplit.train.shape == digits.train.shape and resplit.test.shape == digits.test.shape
  np.testing.assert_array_equal(
    _rows_with_labels(
      np.concatenate([resplit.train, resplit.test]),
      np.concatenate([resplit.train_labels, resplit.test_labels]),
    ),
    _rows_with_labels(
      np.concatenate([digits.train, digits.test]),
      np.concatenate([digits.train_labels, digits.test_labels]),
    ),
  )
  # Random, not a rotation: the original test images that stay in test are
  # hypergeometric, mean 297 * 297 / 1797 = 49.1, standard deviation 5.9; bounds at 5 sd.
  original_test = {row.tobytes() for row in digits.test}
  kept_in_test = sum(row.tobytes() in original_test for row in resplit.test)
  assert 19 < kept_in_test < 79
  np.testing.assert_array_equal(data.resplit(digits, seed=3).test, resplit.test)
  assert not np.array_equal(data.resplit(digits, seed=4).test, resplit.test)
