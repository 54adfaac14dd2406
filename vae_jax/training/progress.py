"""A human-readable progress line for training loops::

  step 1,200/100,000 (1.2%) | 120,000 samples | 5,432 samples/s |
  bound -123.45 nats | ETA 0:05:12

`vae_jax.training.hooks.ProgressHook` logs one per evaluation. The metric
records themselves go to `vae_jax.training.metrics`.
"""

from __future__ import annotations

import math


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
