"""Session fixtures: the shared raw data files and TFDS data sets prepared once.

The raw files (LeCun's MNIST .gz files, Larochelle's binarized MNIST .amat.gz,
frey_rawface.mat) are looked up in `$VAE_JAX_SHARED_DATA`, else in
`<repo root>/../shared/data`. Without them the tests that need them are
skipped, except on CI (`CI=true`), where they fail: CI must exercise the TFDS
preparation.

Each TFDS data set is prepared once per session into a temporary TFDS data
dir, offline, from those files.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

import jax
import pytest
from runners import REPO

from vae_jax import data


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
  """The directory with `mnist/`, `binarized_mnist/` and `frey_face/` raw files."""
  path = Path(os.environ.get("VAE_JAX_SHARED_DATA") or REPO.parent / "shared" / "data")
  if not path.is_dir():
    message = (
      f"raw data directory {path} not found; set $VAE_JAX_SHARED_DATA to the "
      "directory holding mnist/, binarized_mnist/ and frey_face/"
    )
    if os.environ.get("CI", "").lower() == "true":
      pytest.fail(f"CI=true and {message}", pytrace=False)
    pytest.skip(message)
  return path


@pytest.fixture(scope="session")
def tfds_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
  """One TFDS data dir for the whole run, shared by all xdist workers, so that
  each data set is prepared once."""
  path = _session_root(tmp_path_factory) / "tfds_data"
  path.mkdir(exist_ok=True)
  return path


def _session_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
  """The run's base temp dir, the same for every xdist worker (theirs are siblings)."""
  root = tmp_path_factory.getbasetemp()
  return root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root


@pytest.fixture(scope="session", autouse=True)
def jax_compilation_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
  """One persistent JAX compilation cache for the run, shared by the xdist
  workers and by the runners the tests start as subprocesses (they inherit it
  through the environment): the toy runs compile the same programs many times,
  and on CPU compiling, not running, is most of their time. Every entry is
  kept (the default keeps only compilations over 1 s)."""
  path = _session_root(tmp_path_factory) / "jax_cache"
  path.mkdir(exist_ok=True)
  settings = {
    "jax_compilation_cache_dir": str(path),
    "jax_persistent_cache_min_compile_time_secs": 0,
  }
  for name, value in settings.items():
    os.environ[name.upper()] = str(value)
    jax.config.update(name, value)
  return path


@contextlib.contextmanager
def _exclusive(lock_path: Path):
  """Lets one process at a time prepare a data set; the others then read it."""
  with open(lock_path, "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)


def _load(name: str, data_dir: Path, manual_dir: Path) -> data.Dataset:
  with _exclusive(data_dir / f"{name}.lock"):
    return data.load_dataset(name, data_dir=data_dir, manual_dir=manual_dir)


@pytest.fixture(scope="session")
def mnist(shared_data_dir: Path, tfds_data_dir: Path) -> data.Dataset:
  # The root: load_dataset picks its mnist/ subdirectory.
  return _load("mnist", tfds_data_dir, shared_data_dir)


@pytest.fixture(scope="session")
def binarized_mnist(shared_data_dir: Path, tfds_data_dir: Path) -> data.Dataset:
  # Only .amat.gz files are there: load_dataset decompresses them for TFDS.
  return _load("binarized_mnist", tfds_data_dir, shared_data_dir / "binarized_mnist")


@pytest.fixture(scope="session")
def frey_face(shared_data_dir: Path, tfds_data_dir: Path) -> data.Dataset:
  return _load("frey_face", tfds_data_dir, shared_data_dir / "frey_face")
