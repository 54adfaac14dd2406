"""ProgressLogger and its formatting: intervals, rates, ETA and durations."""

import math

import jax.numpy as jnp
import pytest

from vae_jax.training.progress import ProgressLogger, format_duration, format_progress


@pytest.mark.parametrize(
  "seconds, expected",
  [
    (0, "0:00:00"),
    (59.4, "0:00:59"),
    (59.6, "0:01:00"),
    (3599, "0:59:59"),
    (3600, "1:00:00"),
    (27 * 3600 + 3 * 60 + 9, "27:03:09"),
    (math.nan, "-:--:--"),
    (math.inf, "-:--:--"),
    (-1, "-:--:--"),
  ],
)
def test_format_duration(seconds, expected):
  assert format_duration(seconds) == expected


def test_format_progress():
  line = format_progress(
    step=1200,
    total_steps=100_000,
    samples_seen=120_000,
    samples_per_second=5432.1,
    bound=-123.456,
    eta_seconds=312,
  )
  assert line == (
    "step 1,200/100,000 (1.2%) | 120,000 samples | 5,432 samples/s"
    " | bound -123.46 nats | ETA 0:05:12"
  )


class _FakeClock:
  def __init__(self):
    self.now = 0.0

  def __call__(self) -> float:
    return self.now


def test_progress_logger_interval_rate_and_eta():
  clock, lines = _FakeClock(), []
  logger = ProgressLogger(
    total_steps=1000,
    every_steps=100,
    start_step=200,
    start_samples=20_000,
    print_fn=lines.append,
    clock=clock,
  )
  clock.now = 5.0
  assert logger(250, 25_000, -150.0) is None
  clock.now = 10.0
  # 100 steps = 10,000 samples in 10 s; 700 steps left at 10 steps/s.
  line = logger(300, 30_000, jnp.float32(-140.25))
  assert line == lines[-1]
  assert "step 300/1,000 (30.0%)" in line
  assert "1,000 samples/s" in line
  assert "bound -140.25 nats" in line
  assert line.endswith("ETA 0:01:10")
  # The rate is measured since the previous line, not since the start.
  clock.now = 12.0
  line = logger(400, 40_000, -130.0)
  assert "5,000 samples/s" in line and line.endswith("ETA 0:00:12")
  # The final step is always reported, even off the interval.
  clock.now = 13.0
  logger2 = ProgressLogger(total_steps=1050, every_steps=100, print_fn=lines.append, clock=clock)
  clock.now = 14.0
  assert logger2(1050, 105_000, -100.0).endswith("ETA 0:00:00")
  assert len(lines) == 3
