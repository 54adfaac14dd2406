"""Training metrics: a JSON-lines log on disk and a human-readable progress line.

`MetricsWriter` appends one JSON object per line to `<workdir>/metrics.jsonl`
and flushes it, so a killed run loses at most the line being written;
`read_metrics` skips such a truncated last line. Non-finite floats are written
as `NaN`/`Infinity`, which Python's `json` reads back (strict JSON parsers do
not), because a diverged bound is worth recording.

`ProgressLogger` prints lines like::

  step 1,200/100,000 (1.2%) | 120,000 samples | 5,432 samples/s |
  bound -123.45 nats | ETA 0:05:12

through an injectable `print_fn` (default `print`; pass `absl.logging.info` in
an absl app).

`final_summary` and `summary_table` turn the last records of several runs into
the markdown tables the paper-figure runners write.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

import numpy as np

METRICS_FILENAME = "metrics.jsonl"

Scalar = int | float | bool | str | None


def _to_json_scalar(name: str, value: Any) -> Scalar:
  """Converts Python, numpy and jax scalars (0-d arrays) to Python scalars."""
  if value is None or isinstance(value, (bool, int, float, str)):
    return value
  array = np.asarray(value)
  if array.ndim != 0:
    raise TypeError(
        f"Metric {name!r} must be a scalar, got an array of shape"
        f" {array.shape}."
    )
  return array.item()


def _read_complete_lines(path: str) -> list[str]:
  """Lines ending in a newline; a partial last line (killed write) is dropped."""
  with open(path, encoding="utf-8") as f:
    text = f.read()
  lines = text.split("\n")
  # The element after the last "\n" is "" for a complete file, else partial.
  return lines[:-1]


class MetricsWriter:
  """Appends metric records to `<workdir>/metrics.jsonl`, one JSON per line.

  Resuming a run: pass the step of the restored checkpoint as `resume_step`.
  Records logged after that checkpoint by the killed run are removed, since the
  resumed run logs those steps again; otherwise the file is only appended to.
  Either way a partial last line left by a killed write is removed first, so
  that the next record starts on its own line.
  """

  def __init__(
      self, workdir: str | os.PathLike[str], resume_step: int | None = None
  ):
    os.makedirs(workdir, exist_ok=True)
    self.path = os.path.join(os.fspath(workdir), METRICS_FILENAME)
    if os.path.exists(self.path):
      self._rewrite_complete_lines(resume_step)
    self._file: TextIO = open(self.path, "a", encoding="utf-8")

  def _rewrite_complete_lines(self, resume_step: int | None) -> None:
    lines = _read_complete_lines(self.path)
    if resume_step is not None:
      lines = [
          line
          for line in lines
          if json.loads(line).get("step", resume_step) <= resume_step
      ]
    # Write-then-rename, so a kill during the rewrite keeps the old file.
    tmp_path = self.path + ".tmp"
    with open(tmp_path, "w", encoding="utf-8") as f:
      f.writelines(line + "\n" for line in lines)
    os.replace(tmp_path, self.path)

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    """Appends `{"step": step, **metrics}` as one line and flushes it.

    Args:
      step: Training step the metrics belong to.
      metrics: Name -> scalar (Python, numpy or jax; 0-d arrays) or `None`.
    """
    if "step" in metrics:
      raise ValueError("Pass the step as `step`, not inside `metrics`.")
    record = {"step": int(step)}
    record.update(
        (name, _to_json_scalar(name, value)) for name, value in metrics.items()
    )
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()

  def close(self) -> None:
    self._file.close()

  def __enter__(self) -> MetricsWriter:
    return self

  def __exit__(self, *exc_info: object) -> None:
    self.close()


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


def final_summary(records: Sequence[Mapping[str, Any]], value: str = "bound") -> dict[str, Any]:
  """A run's result: samples_seen, train_<value>, test_<value> and seconds of
  its last record (value "bound", or e.g. "log_likelihood")."""
  if not records:
    raise ValueError("No metrics records: the run was never evaluated.")
  keys = ("samples_seen", f"train_{value}", f"test_{value}", "seconds")
  return {key: records[-1][key] for key in keys}


def summary_table(
    caption: str,
    columns: Sequence[tuple[str, Callable[[Mapping[str, Any]], Any]]],
    rows: Sequence[Mapping[str, Any]],
    value: str = "bound",
    value_header: str = "bound",
) -> str:
  """A markdown table of runs' final values, one line per run.

  Args:
    caption: the line above the table.
    columns: the leading columns, (header, row -> cell) pairs; a column of
      numbers is right-aligned.
    rows: dicts holding the `final_summary(records, value)` keys and what
      `columns` read.
    value: which final values: "bound" or e.g. "log_likelihood".
    value_header: their name in the headers ("train <value_header>").

  Returns:
    The caption, a blank line and the table: the leading columns, then
    training samples, the train and test values (nats) and training seconds.
  """
  cells = [[cell(row) for _, cell in columns] for row in rows]
  align = ["---:" if all(isinstance(line[i], (int, float)) for line in cells) else "---"
           for i in range(len(columns))]
  headers = [header for header, _ in columns]
  headers += ["training samples", f"train {value_header}", f"test {value_header}", "training s"]
  lines = [caption, "", "| " + " | ".join(headers) + " |",
           "|" + "|".join(align + ["---:"] * 4) + "|"]
  lines += [
      "| " + " | ".join(map(str, line)) + f" | {row['samples_seen']:,} | "
      f"{row[f'train_{value}']:.2f} | {row[f'test_{value}']:.2f} | {row['seconds']:.0f} |"
      for line, row in zip(cells, rows)
  ]
  return "\n".join(lines) + "\n"


def write_summary(
    directory: str | os.PathLike[str], name: str, table: str, rows: Sequence[Mapping[str, Any]]
) -> None:
  """Writes a runner's results as `<name>.md` (the `summary_table`) and
  `<name>.json` (the rows) in `directory`."""
  with open(os.path.join(directory, f"{name}.md"), "w", encoding="utf-8") as f:
    f.write(table)
  with open(os.path.join(directory, f"{name}.json"), "w", encoding="utf-8") as f:
    json.dump(list(rows), f, indent=2)


def format_duration(seconds: float) -> str:
  """Formats seconds as `h:mm:ss` (hours unbounded); `-:--:--` if unknown."""
  if not math.isfinite(seconds) or seconds < 0:
    return "-:--:--"
  minutes, secs = divmod(int(round(seconds)), 60)
  hours, minutes = divmod(minutes, 60)
  return f"{hours}:{minutes:02d}:{secs:02d}"


def format_progress(
    step: int,
    total_steps: int,
    samples_seen: int,
    samples_per_second: float,
    bound: float,
    eta_seconds: float,
) -> str:
  """One human-readable progress line; `bound` is in nats per example."""
  return (
      f"step {step:,}/{total_steps:,} ({100 * step / total_steps:.1f}%)"
      f" | {samples_seen:,} samples | {samples_per_second:,.0f} samples/s"
      f" | bound {bound:.2f} nats | ETA {format_duration(eta_seconds)}"
  )


class ProgressLogger:
  """Emits a `format_progress` line every `every_steps` steps and at the end.

  Rates are measured over the steps since the previous line, so they reflect
  the current throughput and exclude time spent before `start_step` (e.g. in
  a run resumed from a checkpoint).
  """

  def __init__(
      self,
      total_steps: int,
      every_steps: int,
      *,
      start_step: int = 0,
      start_samples: int = 0,
      print_fn: Callable[[str], None] = print,
      clock: Callable[[], float] = time.monotonic,
  ):
    """Starts the clock.

    Args:
      total_steps: Step at which training ends; used for the ETA.
      every_steps: Interval between lines, in steps.
      start_step: Step training (re)starts from.
      start_samples: Training examples processed before `start_step`.
      print_fn: Receives each formatted line.
      clock: Seconds, monotonic; injectable for tests.
    """
    if every_steps < 1:
      raise ValueError(f"every_steps must be >= 1, got {every_steps}.")
    self._total_steps = total_steps
    self._every_steps = every_steps
    self._print_fn = print_fn
    self._clock = clock
    self._last_step = start_step
    self._last_samples = start_samples
    self._last_time = clock()

  def __call__(self, step: int, samples_seen: Any, bound: Any) -> str | None:
    """Reports progress after `step`; returns the line if one was emitted.

    Args:
      step: Steps completed.
      samples_seen: Training examples processed so far (Python/numpy/jax
        integer).
      bound: Current lower bound per example in nats (Python/numpy/jax
        scalar).
    """
    if step % self._every_steps and step != self._total_steps:
      return None
    samples_seen = int(samples_seen)
    now = self._clock()
    elapsed = now - self._last_time
    steps_done = step - self._last_step
    if elapsed > 0 and steps_done > 0:
      samples_per_second = (samples_seen - self._last_samples) / elapsed
      eta = (self._total_steps - step) * elapsed / steps_done
    else:
      samples_per_second, eta = math.nan, math.nan
    line = format_progress(
        step,
        self._total_steps,
        samples_seen,
        samples_per_second,
        float(np.asarray(bound)),
        eta,
    )
    self._print_fn(line)
    self._last_step, self._last_samples = step, samples_seen
    self._last_time = now
    return line
