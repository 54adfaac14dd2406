"""The loop's standard hooks: checkpoints with their metrics records, progress lines.

Figures are drawn by a hook of the figures layer
(`vae_jax.figures.run_figures.RunFigures`), so that training never imports
matplotlib.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence

from vae_jax.training.checkpoints import Checkpointer
from vae_jax.training.files import write_atomically
from vae_jax.training.loop import Evaluation, Hook, LoopPlan
from vae_jax.training.metrics import MetricWriter
from vae_jax.training.progress import format_progress

# The records up to a checkpoint, kept in its directory.
HISTORY_FILENAME = "history.jsonl"


class CheckpointAndRecordHook(Hook):
  """Saves the evaluated state (every process takes part), then writes its
  record through every writer (the main process's; none elsewhere).

  The record is staged in `pending_path` before the save, so that a process
  killed after the checkpoint and before the record leaves the record for the
  next run to write (`RunDirectory.resume`); a record is never written for a
  state that is not on disk. After the record, the whole history up to it is
  written into the checkpoint's directory (`HISTORY_FILENAME`), from which
  `RunDirectory.resume` restores a metrics.jsonl that lost records.
  """

  def __init__(
    self, checkpointer: Checkpointer, writers: Sequence[MetricWriter], pending_path: str
  ):
    self._checkpointer = checkpointer
    self._writers = writers
    self._pending_path = pending_path

  def on_evaluation(self, evaluation: Evaluation) -> None:
    if self._writers:
      write_atomically(
        self._pending_path, json.dumps({"step": evaluation.step, "record": evaluation.record})
      )
    self._checkpointer.save(evaluation.step, evaluation.state)
    if not self._writers:
      return
    for writer in self._writers:
      writer.write(evaluation.step, evaluation.record)
    write_atomically(
      os.path.join(self._checkpointer.directory, str(evaluation.step), HISTORY_FILENAME),
      "".join(json.dumps(record) + "\n" for record in evaluation.history),
    )
    os.remove(self._pending_path)


class ProgressHook(Hook):
  """Logs, per evaluation, the progress line (`format_progress`) and the scores.

  The rate is the record's training rate since the last evaluation, per run
  like the line's sample count (the record counts the examples of all runs
  trained together), and the ETA the training left at that rate:
  evaluations and checkpoints are not counted, so that a long estimate
  (k = 5000 takes minutes) does not make the next line promise days.
  """

  def __init__(self, plan: LoopPlan, log: Callable[[str], None], value: str = "train_bound"):
    self._plan = plan
    self._log = log
    self._value = value

  def on_evaluation(self, evaluation: Evaluation) -> None:
    record, plan = evaluation.record, self._plan
    if record["examples_per_second"]:  # None before training, which has no rate
      run_rate = record["examples_per_second"] / plan.num_runs
      examples_left = (plan.total_steps - evaluation.step) * plan.batch_size
      self._log(
        format_progress(
          evaluation.step,
          plan.total_steps,
          record["samples_seen"],
          run_rate,
          record.get(self._value, math.nan),
          examples_left / run_rate,
        )
      )
    scores = ", ".join(
      f"{name} {value:.4g}"
      for name, value in record.items()
      if isinstance(value, float)
      and name not in ("seconds", "examples_per_second")
      and "_run" not in name
    )
    self._log(f"epoch {evaluation.epoch}: {scores}")
