"""The Frey Face TFDS builder on its own: checksum, split, order, features."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow_datasets as tfds
from tensorflow_datasets.core.download.download_manager import NonMatchingChecksumError

from vae_jax.data import frey_face, tfds_prepare


@pytest.fixture(scope="module")
def raw_file(shared_data_dir):
  return shared_data_dir / "frey_face" / frey_face.FILENAME


def _prepare(data_dir, manual_dir) -> frey_face.FreyFace:
  tfds_prepare.import_tfds()  # Keeps TF off the GPUs, as load_dataset does.
  builder = frey_face.FreyFace(data_dir=data_dir)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return builder


def test_registered_checksum_is_that_of_the_file(raw_file):
  (info,) = frey_face.FreyFace.url_infos.values()
  assert info.filename == raw_file.name
  assert info.size == raw_file.stat().st_size
  assert tfds.core.download.checksums.compute_url_info(raw_file) == info


def test_read_frames_gives_upright_faces(raw_file):
  frames = frey_face.read_frames(raw_file)
  assert frames.shape == (1965, 28, 20) and frames.dtype == np.uint8
  # SOURCES.md: min 8, max 238, mean 154.46 over the whole file.
  assert (frames.min(), frames.max()) == (8, 238)
  assert abs(frames.mean() - 154.46) < 0.01


def test_splits_are_contiguous_blocks_in_video_order(raw_file, tmp_path):
  builder = _prepare(tmp_path / "tfds", raw_file.parent)
  splits = builder.info.splits
  assert (splits["train"].num_examples, splits["test"].num_examples) == (1765, 200)
  frames = frey_face.read_frames(raw_file)
  for split, start, stop in (("train", 0, 1765), ("test", 1765, 1965)):
    examples = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
    np.testing.assert_array_equal(examples["frame"], np.arange(start, stop))
    assert examples["image"].shape == (stop - start, 28, 20, 1)
    np.testing.assert_array_equal(examples["image"][..., 0], frames[start:stop])


def test_a_different_file_fails_the_checksum(raw_file, tmp_path):
  manual_dir = tmp_path / "raw"
  manual_dir.mkdir()
  (manual_dir / raw_file.name).write_bytes(raw_file.read_bytes()[:-1])
  with pytest.raises(NonMatchingChecksumError):
    _prepare(tmp_path / "tfds", manual_dir)


def test_read_frames_rejects_a_mat_file_of_the_wrong_shape(tmp_path):
  import scipy.io

  path = tmp_path / "faces.mat"
  scipy.io.savemat(path, {"ff": np.zeros((560, 10), np.uint8)})
  with pytest.raises(ValueError, match=r"\(560, 1965\)"):
    frey_face.read_frames(path)
