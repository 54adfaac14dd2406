"""The progress line: its formatting, and the rate and ETA ProgressHook gives it."""

import math

import pytest

from vae_jax.training.hooks import ProgressHook
from vae_jax.training.loop import Evaluation, LoopPlan
from vae_jax.training.progress import format_duration, format_progress


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


def _evaluation(epoch, plan, rate, bound=-140.25):
  step = epoch * plan.steps_per_epoch
  record = {
    "epoch": epoch,
    "samples_seen": step * plan.batch_size,
    "train_bound": bound,
    "test_bound": bound - 1.0,
    "seconds": 12.5,
    "examples_per_second": rate,
  }
  return Evaluation(epoch, step, None, record, ({"step": step, **record},))


def test_progress_hook_takes_the_training_rate_and_eta_from_the_record():
  plan = LoopPlan(
    num_epochs=10, steps_per_epoch=100, batch_size=100, evaluate_at=lambda epoch: True
  )
  lines = []
  hook = ProgressHook(plan, lines.append)
  hook.on_evaluation(_evaluation(0, plan, None))
  # The untrained state has no rate: only its scores.
  assert lines == ["epoch 0: train_bound -140.2, test_bound -141.2"]
  # 7 epochs = 70,000 examples left at 1,000 examples/s of training, however
  # long the evaluations took.
  hook.on_evaluation(_evaluation(3, plan, 1000.0, bound=-130.5))
  assert lines[1] == (
    "step 300/1,000 (30.0%) | 30,000 samples | 1,000 samples/s | bound -130.50 nats | ETA 0:01:10"
  )
  assert lines[2].startswith("epoch 3: train_bound -130.5")
  hook.on_evaluation(_evaluation(10, plan, 5000.0))
  assert lines[3].endswith("ETA 0:00:00")


def test_progress_hook_gives_one_runs_rate_when_runs_train_together():
  # The record's 4,000 examples/s count the four runs: 1,000 each, as the
  # line's sample count is one run's; the ETA as for the single run above.
  plan = LoopPlan(num_epochs=10, steps_per_epoch=100, batch_size=100, evaluate_at=bool, num_runs=4)
  lines = []
  ProgressHook(plan, lines.append).on_evaluation(_evaluation(3, plan, 4000.0))
  assert lines[0] == (
    "step 300/1,000 (30.0%) | 30,000 samples | 1,000 samples/s | bound -140.25 nats | ETA 0:01:10"
  )
