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

A checkpoint whose files were damaged after it was committed (a truncated or
overwritten file, a lost directory) cannot be read; `restore_newest_readable`
then sets it aside under a name orbax ignores and falls back to the next older
one, so that a run resumes with one line of warning instead of stopping with a
traceback. Orbax stores no checksums of array chunks, so a damaged chunk that
still decompresses restores silently with wrong values; see
`restore_newest_readable`.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import json
import logging
import os
import re
import sys
import time
import types
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

PyTree = Any

# Orbax logs every save/restore phase at INFO through absl; with absl verbosity
# at INFO that is ~50 lines per save, which drowns the training log.
_ORBAX_SOURCE_DIR = os.path.dirname(os.path.dirname(ocp.__file__)) + os.sep


# A step directory set aside as unreadable is renamed to
# `<step>.unreadable-<YYYYmmdd-HHMMSS>[.<n>]`. Orbax lists as steps only names
# that are all digits (or end in `_<digits>`), and deletes as unfinished only
# names containing `.orbax-checkpoint-tmp`, so it neither restores nor removes
# these; they wait for a person to inspect, repair or delete them.
_SET_ASIDE_MARK = ".unreadable-"
_SET_ASIDE_NAME = re.compile(r"^(0|[1-9][0-9]*)\.unreadable-[0-9-]+(\.[0-9]+)?$")
# Errors that say nothing about the files and would recur for every step:
# running out of host or device memory while placing the restored arrays.
_NOT_FILE_ERRORS: tuple[type[BaseException], ...] = (MemoryError, jax.errors.JaxRuntimeError)
_MAX_REASON_CHARS = 200


class CheckpointMismatchError(ValueError):
  """A stored checkpoint does not match the restore template."""


class UnreadableCheckpointError(RuntimeError):
  """Checkpoints exist, but the files of every one of them are unreadable."""


class _DropOrbaxInfo(logging.Filter):
  """Drops orbax records below WARNING, and orbax's reports of a failed
  background write, which orbax raises again in the caller's `save` (where
  `Checkpointer.save` reports it once); keeps everything else."""

  def filter(self, record: logging.LogRecord) -> bool:
    if not record.pathname.startswith(_ORBAX_SOURCE_DIR):
      return True
    reraised = "raised an exception" in record.getMessage()
    return record.levelno >= logging.WARNING and not reraised


def _is_echo_of_failed_read(error: BaseException | None) -> bool:
  """Whether `error` comes from tensorstore or orbax, not from other code."""
  if error is None:
    return False
  if "[tensorstore_spec=" in str(error):
    return True
  frame = error.__traceback__
  while frame is not None:
    if frame.tb_frame.f_code.co_filename.startswith(_ORBAX_SOURCE_DIR):
      return True
    frame = frame.tb_next
  return False


class _DropFailedReadEchoes(logging.Filter):
  """Drops asyncio's reports of the reads orbax abandoned when one failed.

  A failed read raises one error; orbax leaves the reads of the other arrays
  running, and asyncio later logs each of their errors as "never retrieved"
  with a traceback, repeating the one already raised, once per array.
  """

  def filter(self, record: logging.LogRecord) -> bool:
    # "Task ...", "Future ...", "_GatheringFuture exception was never retrieved".
    if "exception was never retrieved" not in record.getMessage():
      return True
    return not _is_echo_of_failed_read(record.exc_info[1] if record.exc_info else None)


class _DropFailedReadUnraisables:
  """An unraisable-exception hook that drops those of reads orbax abandoned.

  Once a read fails, orbax closes its event loop while tensorstore is still
  completing the others; each completion then fails to reach the closed loop
  and Python prints an "Event loop is closed" traceback. Other unraisable
  exceptions go to the hook that was installed before.
  """

  def __init__(self) -> None:
    self.previous = sys.unraisablehook
    self.active = True

  def __call__(self, unraisable: Any) -> None:
    if not (self.active and self._is_abandoned_read(unraisable)):
      self.previous(unraisable)

  @staticmethod
  def _is_abandoned_read(unraisable: Any) -> bool:
    error = unraisable.exc_value
    if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
      frame = error.__traceback__
      return frame is not None and frame.tb_frame.f_code.co_name == "call_soon_threadsafe"
    code = getattr(unraisable.object, "cr_code", None)
    return code is not None and code.co_filename.startswith(_ORBAX_SOURCE_DIR)


@contextlib.contextmanager
def _quiet_orbax() -> Iterator[None]:
  # Scoped to an open Checkpointer, so that no logging configuration outlives it,
  # except after a failed read or write (see `_abandoned_operations`).
  logger = logging.getLogger("absl")
  log_filter = _DropOrbaxInfo()
  logger.addFilter(log_filter)
  asyncio_logger = logging.getLogger("asyncio")
  echo_filter = _DropFailedReadEchoes()
  asyncio_logger.addFilter(echo_filter)
  unraisable_hook = _DropFailedReadUnraisables()
  sys.unraisablehook = unraisable_hook
  try:
    yield
  finally:
    if not _abandoned_operations:
      logger.removeFilter(log_filter)
      asyncio_logger.removeFilter(echo_filter)
      # A hook installed after ours (e.g. by another Checkpointer) keeps
      # calling ours, which then passes everything on.
      unraisable_hook.active = False
      if sys.unraisablehook is unraisable_hook:
        sys.unraisablehook = unraisable_hook.previous


# Whether a read or write failed in this process: orbax then leaves operations
# running that may complete at any later time, even while the interpreter exits,
# each reporting "Event loop is closed" or, for a background write, logging
# "_SignalingThread.run() raised an exception" with a traceback after the
# Checkpointer has closed; their reports stay dropped from then on.
_abandoned_operations = False


def _keep_dropping_abandoned_reports() -> None:
  global _abandoned_operations
  _abandoned_operations = True


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


def _is_file_error(error: BaseException) -> bool:
  """Whether a failed read is the files' fault rather than the caller's.

  Orbax and tensorstore report damaged files as plain `ValueError`s and
  `Exception`s, so no type singles them out; instead the errors known to be
  about something else are excluded, wherever they sit in the chain of causes.
  """
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, (CheckpointMismatchError, *_NOT_FILE_ERRORS)):
      return False
    error = error.__cause__ or error.__context__
  return True


def _short_reason(error: BaseException) -> str:
  """One line on why a read failed, from the innermost cause of `error`.

  Orbax wraps tensorstore's error (which names the damaged file) in a generic
  one, and tensorstore appends its whole JSON spec; the line keeps the type and
  the start and end of the innermost message, which say what and where.
  """
  root = error
  while root.__cause__ is not None:
    root = root.__cause__
  message = str(root).split(" [tensorstore_spec=")[0]
  message = " ".join(message.split()) or "no message"
  if len(message) > _MAX_REASON_CHARS:
    half = _MAX_REASON_CHARS // 2
    message = f"{message[:half]} ... {message[-half:]}"
  return f"{type(root).__name__}: {message}"


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
      state, step = ckpt.restore_newest_readable(state, warn=logging.warning)
      start = 0 if step is None else step + 1
      for step in range(start, num_steps):
        ...
        ckpt.save(step, state)

  Saves are synchronous: once `save` returns, the checkpoint is complete on
  disk. Steps must be saved in increasing order; checkpoints set aside as
  unreadable by `restore_newest_readable` do not count.
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
    self._set_aside_count = 0

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
    try:
      saved = self._manager.save(step, args=ocp.args.StandardSave(state), force=force)
      self._manager.wait_until_finished()
    except Exception as error:  # tensorstore reports OS errors as ValueError
      _keep_dropping_abandoned_reports()
      if "No space left on device" in str(error) or "os_error_code='28'" in str(error):
        # The unfinished step directory is removed by the next Checkpointer.
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self.directory) from None
      raise
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
      FileNotFoundError: if there is no such (or no) checkpoint, or its
        `_METADATA` file is missing.
      ValueError: (among others from orbax and tensorstore) if a file of the
        checkpoint is damaged; a metadata file that is not JSON is named.
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
    return self._read(step, template)

  def restore_newest_readable(
    self, template: PyTree, warn: Callable[[str], None]
  ) -> tuple[PyTree, int | None]:
    """Restores the newest checkpoint whose files can be read.

    A checkpoint damaged on disk (a truncated, overwritten or missing file)
    would otherwise stop every restart of the run although older checkpoints
    are intact. Each unreadable one, newest first, is renamed to
    `<step>.unreadable-<time>` (kept, for inspection, and ignored by orbax
    and by `all_steps`), reported through `warn`, and the next older one is
    tried. Later saves continue from the step restored.

    Only damage that makes orbax or tensorstore fail is detected: array data
    carry no checksum, so bytes changed inside a compressed chunk that still
    decompresses restore silently with wrong values.

    Args:
      template: As for `restore`.
      warn: Called with one line per checkpoint set aside, naming its new
        path, the error and the step tried next.

    Returns:
      `(state, step)` of the newest readable checkpoint, or `(template, None)`
      when the directory holds no checkpoint and none set aside.

    Raises:
      TypeError: if `template` holds a typed PRNG key (`jax.random.key`).
      CheckpointMismatchError: if a readable checkpoint differs from
        `template`; that is the caller's state, not the files, so nothing is
        set aside.
      UnreadableCheckpointError: if checkpoints were found (or set aside
        earlier) but none is readable: starting afresh silently would discard
        the run's history.
    """
    _reject_typed_keys(template, "restore template")
    steps = self.all_steps()
    while steps:
      step = steps.pop()
      try:
        return self._read(step, template), step
      except Exception as error:
        # Orbax's and tensorstore's errors about damaged files have no common type.
        if not _is_file_error(error):
          raise
        # Lets asyncio report the reads orbax abandoned now, while the
        # Checkpointer's filters drop those reports, rather than at some later
        # garbage collection.
        gc.collect()
        _keep_dropping_abandoned_reports()
        set_aside = self._set_aside(step)
        steps = self.all_steps()
        fallback = f"falling back to step {steps[-1]}" if steps else "no older checkpoint is left"
        warn(
          f"Checkpoint step {step} is unreadable ({_short_reason(error)}); set it aside"
          f" as {set_aside}; {fallback}."
        )
    set_aside = self._set_aside_paths()
    if set_aside:
      raise UnreadableCheckpointError(
        f"No readable checkpoint in {self.directory}: {len(set_aside)} unreadable"
        f" checkpoint(s) set aside there as <step>{_SET_ASIDE_MARK}<time>. Repair one and"
        " rename it back to its step number, or start afresh in another work directory."
      )
    return template, None

  def _read(self, step: int, template: PyTree) -> PyTree:
    """Reads `step` into `template`, checking the stored tree against it first."""
    try:
      metadata = self._manager.metadata(step).item_metadata
    except json.JSONDecodeError as error:
      # Orbax's error names no file.
      raise ValueError(f"{self._invalid_json_file(step)} is not valid JSON: {error}") from None
    if metadata is None:
      raise FileNotFoundError(f"No readable item metadata (_METADATA) in {self._step_path(step)}.")
    self._raise_on_mismatch(step, _stored_leaf_differences(metadata.tree, template))
    return self._manager.restore(step, args=ocp.args.StandardRestore(template))

  def _invalid_json_file(self, step: int) -> str:
    """The metadata file of `step` that does not parse, for error messages."""
    candidates = [
      os.path.join(self._step_path(step), ocp.checkpoint_manager.DEFAULT_ITEM_NAME, "_METADATA"),
      os.path.join(self._step_path(step), "_CHECKPOINT_METADATA"),
    ]
    for path in candidates:
      try:
        with open(path, encoding="utf-8") as f:
          json.load(f)
      except (OSError, ValueError):
        return path
    return f"A metadata file in {self._step_path(step)}"

  def _step_path(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def _set_aside_paths(self, step: int | None = None) -> list[str]:
    """Paths of the checkpoint directories set aside (for `step`), by name.

    The names of one step sort in the order they were set aside.
    """
    names = [
      name
      for name in os.listdir(self.directory)
      if (match := _SET_ASIDE_NAME.match(name)) and (step is None or int(match[1]) == step)
    ]
    return [os.path.join(self.directory, name) for name in sorted(names)]

  def _set_aside(self, step: int) -> str:
    """Renames the directory of `step` out of orbax's view; returns its new path.

    Every process of a multi-process run reads the same directory, so only the
    primary one renames, and all wait for it before listing the steps again.
    """
    source = self._step_path(step)
    target = None
    if ocp.multihost.is_primary_host(0):
      stamped = f"{source}{_SET_ASIDE_MARK}{time.strftime('%Y%m%d-%H%M%S')}"
      target, copies = stamped, 0
      # The same step can be set aside again (saved anew and damaged again).
      while os.path.exists(target):
        copies += 1
        target = f"{stamped}.{copies}"
      os.rename(source, target)
    self._set_aside_count += 1
    ocp.multihost.sync_global_processes(
      f"vae_jax_checkpoint_set_aside_{step}_{self._set_aside_count}"
    )
    # The manager caches its list of steps; it would still offer this one, and
    # `save` would refuse steps older than it.
    self._manager.reload()
    return target or self._set_aside_paths(step)[-1]

  def _raise_on_mismatch(self, step: int, differences: list[str]) -> None:
    if differences:
      raise CheckpointMismatchError(
        f"Checkpoint for step {step} in {self.directory} does not match the"
        " restore template:\n" + "\n".join(differences)
      )

  def close(self) -> None:
    """Waits for pending deletions and releases orbax resources.

    After a failed read or write, orbax raises that failure again here; it
    was raised (and reported) where it happened, so it is not raised twice.
    """
    try:
      self._manager.close()
    except Exception:
      if not _abandoned_operations:
        raise
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
