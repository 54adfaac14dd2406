"""TFDS builder for Frey Face: 1965 greyscale 28x20 video frames of one face.

Source: Brendan Frey's frames as distributed on Sam Roweis's data page,
`frey_rawface.mat` (1,100,584 bytes, sha256 265a83a2...). The file holds `ff`,
uint8 of shape [560, 1965]: one column per frame, each column a 28x20 image
stored row by row. Its size and sha256 are registered below, so a download or
a manually placed copy that differs in one byte is a `NonMatchingChecksumError`.

Split (deterministic, no RNG): `train` = frames 0..1764, `test` = the LAST 200
frames, 1765..1964, in video order. The frames are consecutive video frames,
so neighbours are near-duplicates; a random split would put a near-copy of
most test frames into the training set and make the test bound measure
memorisation. A contiguous tail block keeps test frames unseen. The AEVB
paper does not state its split, so this one is ours.

Examples: {"image": uint8 [28, 20, 1], "frame": int32 index in the video}.
Shuffling is disabled, so each split reads back in video order.

Importing this module registers the builder with TFDS as "frey_face".
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import numpy as np
import scipy.io
import tensorflow_datasets as tfds
from etils import epath
from tensorflow_datasets.core.download import checksums

URL = "https://cs.nyu.edu/~roweis/data/frey_rawface.mat"
FILENAME = "frey_rawface.mat"
_SIZE = 1_100_584
_SHA256 = "265a83a23adb081755cd3de375509828e690324d1d60f076b8ecebc840d59c64"

NUM_FRAMES = 1965
NUM_TEST = 200
NUM_TRAIN = NUM_FRAMES - NUM_TEST
IMAGE_SHAPE = (28, 20, 1)

_CITATION = """\
@article{roweis2000lle,
  title={Nonlinear dimensionality reduction by locally linear embedding},
  author={Roweis, Sam T. and Saul, Lawrence K.},
  journal={Science},
  volume={290},
  number={5500},
  pages={2323--2326},
  year={2000}
}
"""


def read_frames(path: epath.PathLike) -> np.ndarray:
  """Reads `frey_rawface.mat`.

  Args:
    path: the .mat file.

  Returns:
    [1965, 28, 20] uint8 frames in video order.

  Raises:
    ValueError: the file does not hold `ff` of shape [560, 1965] uint8.
  """
  with epath.Path(path).open("rb") as f:
    ff = scipy.io.loadmat(f)["ff"]
  height, width, _ = IMAGE_SHAPE
  if ff.shape != (height * width, NUM_FRAMES) or ff.dtype != np.uint8:
    raise ValueError(
      f"{path}: expected 'ff' uint8 of shape {(height * width, NUM_FRAMES)}, "
      f"got {ff.dtype} of shape {ff.shape}."
    )
  return ff.T.reshape(NUM_FRAMES, height, width)


class FreyFace(tfds.core.GeneratorBasedBuilder):
  """Frey Face frames; see the module docstring for source and split."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES: ClassVar[dict[str, str]] = {
    "1.0.0": f"Train: frames 0..{NUM_TRAIN - 1}; test: the last {NUM_TEST}.",
  }
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
  Place `{FILENAME}` ({_SIZE} bytes, sha256 {_SHA256}), downloaded from
  {URL}, in the manual directory. Without it TFDS downloads that URL.
  """
  # Registered in code, not in a checksums.tsv beside this module, so that the
  # check ships with the package without package-data configuration. TFDS's
  # DownloadManager verifies both downloads and manually placed files with it.
  url_infos: ClassVar[dict[str, checksums.UrlInfo]] = {
    URL: checksums.UrlInfo(size=_SIZE, checksum=_SHA256, filename=FILENAME),
  }

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description=(
        "1965 greyscale 28x20 frames of Brendan Frey's face from a video; "
        f"the last {NUM_TEST} frames are the test split."
      ),
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Image(shape=IMAGE_SHAPE),
          "frame": tfds.features.Scalar(dtype=np.int32),
        }
      ),
      disable_shuffling=True,
      homepage="https://cs.nyu.edu/~roweis/data.html",
      citation=_CITATION,
    )

  def _split_generators(
    self, dl_manager: tfds.download.DownloadManager
  ) -> dict[str, Iterator[tuple[int, dict[str, Any]]]]:
    path = dl_manager.download(URL)
    return {
      "train": self._generate_examples(path, range(NUM_TRAIN)),
      "test": self._generate_examples(path, range(NUM_TRAIN, NUM_FRAMES)),
    }

  def _generate_examples(
    self, path: epath.Path, frames: Sequence[int]
  ) -> Iterator[tuple[int, dict[str, Any]]]:
    images = read_frames(path)
    for frame in frames:
      yield frame, {"image": images[frame, :, :, None], "frame": frame}
