"""Atomic training-state checkpoints on top of orbax-checkpoint.

A checkpoint is a pytree of arrays (params, optax state, step counter, PRNG
key, ...) written under `<directory>/<step>/`. Orbax writes each step into
`<step>.orbax-checkpoint-tmp` and renames it to `<step>` only once every file
is on disk, so a run killed at any point (even by SIGKILL) leaves either a
complete checkpoint or a temporary directory that `latest_step` ignores and the
next `Checkpointer` removes. (Orbax does not fsync the rename, so an OS crash
or power loss right after a save may lose it; a killed process cannot.)

PRNG keys are stored as raw `jax.random.key_data` arrays (as `TrainState`
holds them); a typed `jax.random.key` in the state or template raises a
`TypeError` that says so. A restore whose template disagrees with the stored
tree (structure, shape or dtype) raises `CheckpointMismatchError` naming every
differing leaf, instead of silently casting.
"""

from __future__ import annotations

import contextlib
import logging
import os
import types
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

PyTree = Any

# Orbax logs every save/restore phase at INFO through absl; with absl verbosity
# at INFO that is ~50 lines per save, which drowns the training log.
_ORBAX_SOURCE_DIR = os.path.dirname(os.path.dirname(ocp.__file__)) + os.sep


class CheckpointMismatchError(ValueError):
  """A stored checkpoint does not match the restore template."""


class _DropOrbaxInfo(logging.Filter):
  """Drops orbax records below WARNING; keeps everything else."""

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or not record.pathname.startswith(_ORBAX_SOURCE_DIR)


@contextlib.contextmanager
def _quiet_orbax() -> Iterator[None]:
  # Scoped to an open Checkpointer so that no logging configuration outlives it.
  logger = logging.getLogger("absl")
  log_filter = _DropOrbaxInfo()
  logger.addFilter(log_filter)
  try:
    yield
  finally:
    logger.removeFilter(log_filter)


def _reject_typed_keys(tree: PyTree, what: str) -> None:
  """Raises a TypeError naming every typed PRNG key leaf of `tree`."""
  typed = []
  for name, leaf in ocp.tree.to_flat_dict(tree, sep="/").items():
    dtype = getattr(leaf, "dtype", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
      typed.append(name)
  if typed:
    raise TypeError(
      f"The {what} holds typed PRNG keys (jax.random.key) at"
      f" {', '.join(sorted(typed))}; checkpoints store raw key data: pass"
      " jax.random.key_data(key) instead, and jax.random.wrap_key_data after"
      " restoring."
    )


def _stored_shape_dtype(leaf: Any) -> tuple[tuple[int, ...], np.dtype]:
  """Shape and dtype under which `leaf` is written to disk."""
  if hasattr(leaf, "dtype") and hasattr(leaf, "shape"):
    return tuple(leaf.shape), np.dtype(leaf.dtype)
  # Python scalars are stored by orbax as 0-d numpy values.
  value = np.asarray(leaf)
  return value.shape, value.dtype


def _describe(shape: tuple[int, ...], dtype: Any) -> str:
  return f"{dtype}[{','.join(str(d) for d in shape)}]"


def _stored_leaf_differences(stored: PyTree, template: PyTree) -> list[str]:
  """Lists leaves whose presence, shape or dtype differ from the template."""
  stored_flat = ocp.tree.to_flat_dict(stored, sep="/")
  template_flat = ocp.tree.to_flat_dict(template, sep="/")
  differences = [
    f"  {name}: in the checkpoint but not in the template"
    for name in sorted(stored_flat.keys() - template_flat.keys())
  ]
  differences += [
    f"  {name}: in the template but not in the checkpoint"
    for name in sorted(template_flat.keys() - stored_flat.keys())
  ]
  for name in sorted(stored_flat.keys() & template_flat.keys()):
    meta = stored_flat[name]
    stored_spec = (tuple(meta.shape), np.dtype(meta.dtype))
    template_spec = _stored_shape_dtype(template_flat[name])
    if stored_spec != template_spec:
      differences.append(
        f"  {name}: checkpoint has {_describe(*stored_spec)}, template"
        f" has {_describe(*template_spec)}"
      )
  return differences


class Checkpointer:
  """Saves and restores a training-state pytree, one directory per step.

  Example::

    with Checkpointer(workdir / "checkpoints", max_to_keep=3) as ckpt:
      if ckpt.latest_step() is not None:
        state = ckpt.restore(state)
      for step in range(start, num_steps):
        ...
        ckpt.save(step, state)

  Saves are synchronous: once `save` returns, the checkpoint is complete on
  disk. Steps must be saved in increasing order.
  """

  def __init__(
    self,
    directory: str | os.PathLike[str],
    max_to_keep: int | None = 3,
    save_interval_steps: int = 1,
  ):
    """Opens (creating if needed) a checkpoint directory.

    Args:
      directory: Where step directories are written.
      max_to_keep: Number of most recent checkpoints kept; older ones are
        deleted after each save. `None` keeps all.
      save_interval_steps: `save` only writes steps that are multiples of this
        unless called with `force=True`.
    """
    if max_to_keep is not None and max_to_keep < 1:
      raise ValueError(f"max_to_keep must be >= 1 or None, got {max_to_keep}.")
    if save_interval_steps < 1:
      raise ValueError(f"save_interval_steps must be >= 1, got {save_interval_steps}.")
    options = ocp.CheckpointManagerOptions(
      save_decision_policy=ocp.checkpoint_managers.FixedIntervalPolicy(save_interval_steps),
      preservation_policy=ocp.checkpoint_managers.LatestN(max_to_keep),
      # A returned save must already be durable; the state is small.
      enable_async_checkpointing=False,
      # Removes `*.orbax-checkpoint-tmp` leftovers of a killed run.
      cleanup_tmp_directories=True,
    )
    # Orbax logs from background threads too (e.g. the clean-up of temporary
    # directories), so its INFO records are dropped while this object is open.
    self._quiet = _quiet_orbax()
    self._quiet.__enter__()
    # Registering the handler up front lets a fresh manager read metadata
    # of checkpoints written by an earlier process before any restore.
    registry = ocp.handlers.create_default_handler_registry(
      **{ocp.checkpoint_manager.DEFAULT_ITEM_NAME: (ocp.StandardCheckpointHandler())}
    )
    self._manager = ocp.CheckpointManager(
      os.path.abspath(directory), options=options, handler_registry=registry
    )

  @property
  def directory(self) -> str:
    return os.fspath(self._manager.directory)

  def all_steps(self) -> list[int]:
    """Steps of the complete checkpoints on disk, increasing."""
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    """Latest complete checkpoint's step, or `None` if there is none."""
    return self._manager.latest_step()

  def save(self, step: int, state: PyTree, *, force: bool = False) -> bool:
    """Writes `state` as the checkpoint for `step`; returns once it is complete.

    Args:
      step: Training step the state belongs to.
      state: Pytree of arrays and Python scalars; PRNG keys as raw
        `jax.random.key_data`.
      force: Save even if `step` is not a multiple of `save_interval_steps`
        (e.g. the final step of training).

    Returns:
      Whether a checkpoint was written: `False` if the interval skips `step` or
      `step` is already saved (a step is written at most once).

    Raises:
      TypeError: if `state` holds a typed PRNG key (`jax.random.key`); store
        `jax.random.key_data(key)` instead.
      ValueError: if `step` is older than the latest checkpoint, which means the
        run did not resume from it and would interleave two histories.
    """
    _reject_typed_keys(state, "state to save")
    steps = self.all_steps()
    if step in steps:
      return False
    if steps and step < steps[-1]:
      raise ValueError(
        f"Cannot save step {step}: {self.directory} already holds the newer"
        f" step {steps[-1]}. Restore it, or use a fresh directory."
      )
    saved = self._manager.save(step, args=ocp.args.StandardSave(state), force=force)
    self._manager.wait_until_finished()
    return saved

  def restore(self, template: PyTree, step: int | None = None) -> PyTree:
    """Reads a checkpoint into the structure of `template`.

    Args:
      template: Pytree with the structure, shapes, dtypes and shardings of the
        saved state; concrete arrays or `jax.ShapeDtypeStruct`s.
      step: Step to restore; the latest complete one by default.

    Returns:
      The stored state, bit-for-bit, with the container types of `template`.

    Raises:
      TypeError: if `template` holds a typed PRNG key (`jax.random.key`).
      FileNotFoundError: if there is no such (or no) checkpoint.
      CheckpointMismatchError: if the stored tree differs from `template`.
    """
    _reject_typed_keys(template, "restore template")
    available = self.all_steps()
    if step is None:
      if not available:
        raise FileNotFoundError(f"No checkpoint found in {self.directory}.")
      step = available[-1]
    elif step not in available:
      raise FileNotFoundError(
        f"No checkpoint for step {step} in {self.directory}; available steps: {available}."
      )
    stored = self._manager.metadata(step).item_metadata.tree
    self._raise_on_mismatch(step, _stored_leaf_differences(stored, template))
    return self._manager.restore(step, args=ocp.args.StandardRestore(template))

  def _raise_on_mismatch(self, step: int, differences: list[str]) -> None:
    if differences:
      raise CheckpointMismatchError(
        f"Checkpoint for step {step} in {self.directory} does not match the"
        " restore template:\n" + "\n".join(differences)
      )

  def close(self) -> None:
    """Waits for pending deletions and releases orbax resources."""
    try:
      self._manager.close()
    finally:
      self._quiet.__exit__(None, None, None)

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(
    self,
    exc_type: type[BaseException] | None,
    exc: BaseException | None,
    traceback: types.TracebackType | None,
  ) -> None:
    self.close()
