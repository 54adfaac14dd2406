"""The loop's standard hooks: checkpoints, metrics records, progress lines.

Figures are drawn by a hook of the figures layer
(`vae_jax.figures.run_figures.RunFigures`), so that training never imports
matplotlib.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from vae_jax.training.checkpoints import Checkpointer
from vae_jax.training.loop import Evaluation, Hook, LoopPlan
from vae_jax.training.metrics import MetricWriter
from vae_jax.training.progress import ProgressLogger


class CheckpointHook(Hook):
  """Saves the evaluated state, named by its step (every process takes part)."""

  def __init__(self, checkpointer: Checkpointer):
    self._checkpointer = checkpointer

  def on_evaluation(self, evaluation: Evaluation) -> None:
    self._checkpointer.save(evaluation.step, evaluation.state)


class MetricsHook(Hook):
  """Writes each evaluation's record, at its step, through every writer."""

  def __init__(self, writers: Sequence[MetricWriter]):
    self._writers = writers

  def on_evaluation(self, evaluation: Evaluation) -> None:
    for writer in self._writers:
      writer.write(evaluation.step, evaluation.record)


class ProgressHook(Hook):
  """Logs, per evaluation, the progress line (`ProgressLogger`: rate, ETA)
  and the scores."""

  def __init__(
    self, plan: LoopPlan, start_step: int, log: Callable[[str], None], value: str = "train_bound"
  ):
    self._logger = ProgressLogger(
      plan.total_steps,
      1,
      start_step=start_step,
      start_samples=start_step * plan.batch_size,
      print_fn=log,
    )
    self._log = log
    self._value = value

  def on_evaluation(self, evaluation: Evaluation) -> None:
    record = evaluation.record
    if evaluation.epoch:
      self._logger(evaluation.step, record["samples_seen"], record.get(self._value, math.nan))
    scores = ", ".join(
      f"{name} {value:.4g}"
      for name, value in record.items()
      if isinstance(value, float)
      and name not in ("seconds", "examples_per_second")
      and "_run" not in name
    )
    self._log(f"epoch {evaluation.epoch}: {scores}")
