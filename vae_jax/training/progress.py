"""A human-readable progress line for training loops.

`ProgressLogger` prints lines like::

  step 1,200/100,000 (1.2%) | 120,000 samples | 5,432 samples/s |
  bound -123.45 nats | ETA 0:05:12

through an injectable `print_fn` (default `print`; pass `absl.logging.info` in
an absl app). The metric records themselves go to `vae_jax.training.metrics`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np


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
