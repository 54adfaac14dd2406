"""MetricsWriter / read_metrics round trips and ProgressLogger formatting."""

import json
import math

import jax.numpy as jnp
import numpy as np
import pytest

from vae_jax.metrics import (
    METRICS_FILENAME,
    MetricsWriter,
    ProgressLogger,
    format_duration,
    final_summary,
    format_progress,
    read_metrics,
    summary_table,
)


def test_write_converts_scalars_and_flushes_each_line(tmp_path):
  with MetricsWriter(tmp_path) as writer:
    writer.write(
        np.int64(10),
        {
            "train_bound": jnp.float32(-101.5),
            "samples_seen": jnp.asarray(1000, jnp.int32),
            "lr": np.float64(1e-3),
            "test_bound": None,
            "diverged": math.nan,
        },
    )
    # Readable before close: the line was flushed.
    lines = (tmp_path / METRICS_FILENAME).read_text().splitlines()
  assert len(lines) == 1
  record = json.loads(lines[0])
  assert math.isnan(record.pop("diverged"))
  assert record == {
      "step": 10,
      "train_bound": -101.5,
      "samples_seen": 1000,
      "lr": 1e-3,
      "test_bound": None,
  }
  assert isinstance(record["samples_seen"], int)


def test_write_rejects_arrays_and_step_in_metrics(tmp_path):
  with MetricsWriter(tmp_path) as writer:
    with pytest.raises(TypeError, match="'bound' must be a scalar"):
      writer.write(1, {"bound": jnp.zeros(3)})
    with pytest.raises(ValueError, match="step"):
      writer.write(1, {"step": 2})


def test_reopening_appends(tmp_path):
  with MetricsWriter(tmp_path) as writer:
    writer.write(1, {"a": 1.0})
  with MetricsWriter(tmp_path) as writer:
    writer.write(2, {"a": 2.0})
  records = read_metrics(tmp_path / METRICS_FILENAME)
  assert [r["step"] for r in records] == [1, 2]


def test_read_tolerates_truncated_last_line(tmp_path):
  path = tmp_path / METRICS_FILENAME
  with MetricsWriter(tmp_path) as writer:
    writer.write(1, {"a": 1.0})
    writer.write(2, {"a": 2.0})
  with open(path, "a") as f:
    f.write('{"step": 3, "a": 3.')  # a kill in the middle of a write
  assert [r["step"] for r in read_metrics(path)] == [1, 2]


def test_read_rejects_corruption_before_the_last_line(tmp_path):
  path = tmp_path / METRICS_FILENAME
  path.write_text('{"step": 1}\n{"step": 2, "a\n{"step": 3}\n')
  with pytest.raises(ValueError, match=":2: malformed record"):
    read_metrics(path)


def test_resumed_writer_drops_partial_line_and_later_steps(tmp_path):
  path = tmp_path / METRICS_FILENAME
  with MetricsWriter(tmp_path) as writer:
    for step in (100, 200, 300):
      writer.write(step, {"a": float(step)})
  with open(path, "a") as f:
    f.write('{"step": 400, "a"')
  # Resumed from the checkpoint of step 200: steps 300 and 400 are redone.
  with MetricsWriter(tmp_path, resume_step=200) as writer:
    writer.write(300, {"a": -1.0})
  records = read_metrics(path)
  assert [(r["step"], r["a"]) for r in records] == [
      (100, 100.0),
      (200, 200.0),
      (300, -1.0),
  ]
  # Without resume_step, only the partial line goes.
  with open(path, "a") as f:
    f.write('{"step": 4')
  with MetricsWriter(tmp_path) as writer:
    writer.write(400, {"a": 4.0})
  assert [r["step"] for r in read_metrics(path)] == [100, 200, 300, 400]


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
  logger2 = ProgressLogger(
      total_steps=1050, every_steps=100, print_fn=lines.append, clock=clock
  )
  clock.now = 14.0
  assert logger2(1050, 105_000, -100.0).endswith("ETA 0:00:00")
  assert len(lines) == 3


def test_summary_table_of_final_bounds():
  records = [{"samples_seen": 0, "train_bound": -500.0, "test_bound": -501.0, "seconds": 0.0},
             {"samples_seen": 600000, "train_bound": -127.714, "test_bound": -126.556,
              "seconds": 40.4, "epoch": 10}]
  row = {"latent_dim": 20, "method": "AEVB", **final_summary(records)}
  assert row == {"latent_dim": 20, "method": "AEVB", "samples_seen": 600000,
                 "train_bound": -127.714, "test_bound": -126.556, "seconds": 40.4}
  table = summary_table("Final bounds.", [("J", lambda r: r["latent_dim"]),
                                          ("method", lambda r: r["method"])], [row])
  assert table == ("Final bounds.\n\n"
                   "| J | method | training samples | train bound | test bound | training s |\n"
                   "|---:|---|---:|---:|---:|---:|\n"
                   "| 20 | AEVB | 600,000 | -127.71 | -126.56 | 40 |\n")
  with pytest.raises(ValueError, match="never evaluated"):
    final_summary([])


def test_summary_table_of_other_final_values():
  records = [{"samples_seen": 1000, "train_log_likelihood": -151.17, "test_log_likelihood": -155.02,
              "seconds": 12.0, "step": 10}]
  row = {"n": 1000, **final_summary(records, "log_likelihood")}
  assert "train_bound" not in row
  table = summary_table("Final.", [("N", lambda r: r["n"])], [row], value="log_likelihood",
                        value_header="log p(x)")
  assert table.splitlines()[2] == "| N | training samples | train log p(x) | test log p(x) | training s |"
  assert table.splitlines()[4] == "| 1000 | 1,000 | -151.17 | -155.02 | 12 |"
