"""Training metrics: where a run's metric records go, and the summaries of runs.

A record is the scalars of one training step: name -> Python, numpy or jax
scalar (0-d array) or `None`. `MetricWriter` is the interface training loops
write records through; its writers are:

* `JsonlWriter`: one JSON object per line in `<workdir>/metrics.jsonl`, the
  file `read_metrics` and the experiment runners read back. Non-finite floats
  are written as `NaN`/`Infinity`, which Python's `json` reads back (strict
  JSON parsers do not), because a diverged bound is worth recording.
* `TensorBoardWriter`: TensorBoard event files in the run directory, so that
  `tensorboard --logdir runs/` plots every run under `runs/`.

Both flush each record as it is written, so a killed run loses at most the
record being written.

The runners' tables of several runs' last records are `experiments.tables`'.
"""

from __future__ import annotations

import abc
import itertools
import json
import os
import socket
import time
from collections.abc import Mapping
from typing import Any, TextIO, TypeVar

import numpy as np

from vae_jax.training.files import write_atomically

METRICS_FILENAME = "metrics.jsonl"

Scalar = int | float | bool | str | None

_WriterT = TypeVar("_WriterT", bound="MetricWriter")


def _to_json_scalar(name: str, value: Any) -> Scalar:
  """Converts Python, numpy and jax scalars (0-d arrays) to Python scalars."""
  if value is None or isinstance(value, (bool, int, float, str)):
    return value
  array = np.asarray(value)
  if array.ndim != 0:
    raise TypeError(f"Metric {name!r} must be a scalar, got an array of shape {array.shape}.")
  return array.item()


def _to_scalars(record: Mapping[str, Any]) -> dict[str, Scalar]:
  """Checks a record and converts its values to Python scalars.

  Every writer applies the same checks, so that a record one writer accepts is
  not rejected by another.
  """
  if "step" in record:
    raise ValueError("Pass the step as `step`, not inside the record.")
  return {name: _to_json_scalar(name, value) for name, value in record.items()}


def _read_complete_lines(path: str) -> list[str]:
  """Lines ending in a newline; a partial last line (killed write) is dropped."""
  with open(path, encoding="utf-8") as f:
    text = f.read()
  lines = text.split("\n")
  # The element after the last "\n" is "" for a complete file, else partial.
  return lines[:-1]


class MetricWriter(abc.ABC):
  """Where a training run's metric records go; use as a context manager.

  Implementations flush each record before `write` returns, so that a killed
  run loses at most the record being written.
  """

  @abc.abstractmethod
  def write(self, step: int, record: Mapping[str, Any]) -> None:
    """Writes the metrics of one training step.

    Args:
      step: Training step the metrics belong to.
      record: Name -> scalar (Python, numpy or jax; 0-d arrays) or `None`;
        must not hold "step", which is passed as `step`.

    Raises:
      TypeError: A value is an array that is not 0-d.
      ValueError: `record` holds "step".
    """

  @abc.abstractmethod
  def close(self) -> None:
    """Releases the writer's file; later writes fail."""

  def __enter__(self: _WriterT) -> _WriterT:
    return self

  def __exit__(self, *exc_info: object) -> None:
    self.close()


class JsonlWriter(MetricWriter):
  """Appends metric records to `<workdir>/metrics.jsonl`, one JSON per line.

  Each line is `{"step": step, **record}`.

  Resuming a run: pass the step of the restored checkpoint as `resume_step`.
  Records logged after that checkpoint by the killed run are removed, since the
  resumed run logs those steps again; otherwise the file is only appended to.
  Either way a partial last line left by a killed write is removed first, so
  that the next record starts on its own line.
  """

  def __init__(self, workdir: str | os.PathLike[str], resume_step: int | None = None):
    os.makedirs(workdir, exist_ok=True)
    self.path = os.path.join(os.fspath(workdir), METRICS_FILENAME)
    if os.path.exists(self.path):
      self._rewrite_complete_lines(resume_step)
    # Open for the writer's life, closed by close(): a context manager cannot span it.
    self._file: TextIO = open(self.path, "a", encoding="utf-8")  # noqa: SIM115

  def _rewrite_complete_lines(self, resume_step: int | None) -> None:
    lines = _read_complete_lines(self.path)
    if resume_step is not None:
      lines = [line for line in lines if json.loads(line).get("step", resume_step) <= resume_step]
    write_atomically(self.path, "".join(line + "\n" for line in lines))

  def write(self, step: int, record: Mapping[str, Any]) -> None:
    """Appends `{"step": step, **record}` as one line and flushes it.

    See `MetricWriter.write`.
    """
    line = {"step": int(step), **_to_scalars(record)}
    self._file.write(json.dumps(line) + "\n")
    self._file.flush()

  def close(self) -> None:
    self._file.close()


# Numbers the event files this process opens, so that two writers opened in
# the same second never share (and truncate) a file name.
_event_file_numbers = itertools.count()


class TensorBoardWriter(MetricWriter):
  """Writes metric records as TensorBoard scalars to an event file in `logdir`.

  Each numeric value of a record becomes a scalar with the record's name as tag
  at global step `step`; `None`, strings and bools are skipped, non-finite
  floats are written as they are. TensorBoard stores scalars as float32, so
  integers above 2**24 (e.g. samples seen) are plotted rounded.

  Each writer opens a new `events.out.tfevents.*` file in `logdir`; TensorBoard
  reads all of a directory's event files as one run. Pass the run directory
  (not a shared parent) so that `tensorboard --logdir <parent>` shows each run
  separately.

  Events are written synchronously with tensorboardX's `RecordWriter` (no
  TensorFlow): its `SummaryWriter` queues events to a background thread, and
  its `flush()` does not wait for that queue, so the record just written could
  still be lost by a kill.
  """

  def __init__(self, logdir: str | os.PathLike[str], resume_step: int | None = None):
    """Opens a new event file in `logdir`, creating the directory.

    Args:
      logdir: Local directory of the run's event files.
      resume_step: Step of the checkpoint a resumed run restarted from. The
        killed run's events after it are then hidden by TensorBoard, since
        the resumed run writes those steps again (the `SessionLog.START`
        purge that tensorboardX's `purge_step` also uses).
    """
    # Imported here, not with the module: tensorboardX imports PyTorch where
    # it is installed, which runs that only read or write JSON lines skip.
    import tensorboardX  # pylint: disable=g-import-not-at-top
    from tensorboardX.proto import event_pb2, summary_pb2  # pylint: disable=g-import-not-at-top

    self._event_pb2 = event_pb2
    self._summary_pb2 = summary_pb2
    os.makedirs(logdir, exist_ok=True)
    # The name TensorFlow gives event files: time, host, process, number.
    self.path = os.path.join(
      os.fspath(logdir),
      f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}"
      f".{os.getpid()}.{next(_event_file_numbers)}",
    )
    self._records = tensorboardX.RecordWriter(self.path)
    # Readers identify the format by the first event's file_version.
    self._write_event(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))
    if resume_step is not None:
      # TensorBoard drops the events of steps >= a START event's step that it
      # read before it.
      self._write_event(
        event_pb2.Event(
          wall_time=time.time(),
          step=int(resume_step) + 1,
          session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START),
        )
      )

  def _write_event(self, event: Any) -> None:
    self._records.write(event.SerializeToString())
    self._records.flush()

  def write(self, step: int, record: Mapping[str, Any]) -> None:
    """Writes the record's numbers as one event of scalars and flushes it.

    See `MetricWriter.write`. A record without numbers writes nothing.
    """
    summary_values = [
      self._summary_pb2.Summary.Value(tag=name, simple_value=float(value))
      for name, value in _to_scalars(record).items()
      # bool is an int subclass, but a flag is not a curve.
      if isinstance(value, (int, float)) and not isinstance(value, bool)
    ]
    if not summary_values:
      return
    self._write_event(
      self._event_pb2.Event(
        wall_time=time.time(),
        step=int(step),
        summary=self._summary_pb2.Summary(value=summary_values),
      )
    )

  def close(self) -> None:
    self._records.close()


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
  """Reads the records of a metrics file, in file order.

  A truncated last line (a run killed mid-write) is skipped; a malformed line
  anywhere else raises `ValueError`, since that is not how a kill corrupts the
  file.
  """
  with open(path, encoding="utf-8") as f:
    lines = f.read().split("\n")
  records = []
  for number, line in enumerate(lines, start=1):
    if not line:
      continue
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError as error:
      if number == len(lines):
        break
      raise ValueError(f"{path}:{number}: malformed record: {error}") from error
  return records
