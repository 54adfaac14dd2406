"""Metric writers (JSON lines, TensorBoard) round trips."""

import json
import math
import struct
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from tensorboardX.proto import event_pb2
from tensorboardX.record_writer import masked_crc32c

from vae_jax.training import metrics
from vae_jax.training.metrics import (
  METRICS_FILENAME,
  JsonlWriter,
  MetricWriter,
  TensorBoardWriter,
  read_metrics,
)


def test_write_converts_scalars_and_flushes_each_line(tmp_path):
  with JsonlWriter(tmp_path) as writer:
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


def test_reopening_appends(tmp_path):
  with JsonlWriter(tmp_path) as writer:
    writer.write(1, {"a": 1.0})
  with JsonlWriter(tmp_path) as writer:
    writer.write(2, {"a": 2.0})
  records = read_metrics(tmp_path / METRICS_FILENAME)
  assert [r["step"] for r in records] == [1, 2]


def test_read_tolerates_truncated_last_line(tmp_path):
  path = tmp_path / METRICS_FILENAME
  with JsonlWriter(tmp_path) as writer:
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
  with JsonlWriter(tmp_path) as writer:
    for step in (100, 200, 300):
      writer.write(step, {"a": float(step)})
  with open(path, "a") as f:
    f.write('{"step": 400, "a"')
  # Resumed from the checkpoint of step 200: steps 300 and 400 are redone.
  with JsonlWriter(tmp_path, resume_step=200) as writer:
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
  with JsonlWriter(tmp_path) as writer:
    writer.write(400, {"a": 4.0})
  assert [r["step"] for r in read_metrics(path)] == [100, 200, 300, 400]


def _read_events(path) -> list[event_pb2.Event]:
  """Parses a TFRecord file of events, checking each record's framing.

  A record is: 8-byte little-endian length, 4-byte masked crc32c of the length,
  the serialized `Event`, 4-byte masked crc32c of the data.
  """
  data = path.read_bytes()
  events, offset = [], 0
  while offset < len(data):
    header = data[offset : offset + 8]
    (length,) = struct.unpack("<Q", header)
    (header_crc,) = struct.unpack("<I", data[offset + 8 : offset + 12])
    payload = data[offset + 12 : offset + 12 + length]
    (payload_crc,) = struct.unpack("<I", data[offset + 12 + length : offset + 16 + length])
    assert header_crc == masked_crc32c(header)
    assert payload_crc == masked_crc32c(payload)
    events.append(event_pb2.Event.FromString(payload))
    offset += 16 + length
  return events


def _scalars_by_step(events) -> list[tuple[int, dict[str, float]]]:
  return [
    (event.step, {value.tag: value.simple_value for value in event.summary.value})
    for event in events
    if event.HasField("summary")
  ]


def test_tensorboard_writer_writes_numbers_as_scalars_by_tag_and_step(tmp_path):
  with TensorBoardWriter(tmp_path) as writer:
    writer.write(
      np.int64(10),
      {
        "train_bound": jnp.float32(-101.5),
        "samples_seen": jnp.asarray(1000, jnp.int32),
        "lr": np.float64(1e-3),
        "test_bound": None,
        "dataset": "mnist",
        "converged": True,
        "flag": np.bool_(False),
        "diverged": math.nan,
        "overflow": -math.inf,
      },
    )
    writer.write(20, {"train_bound": -99.25, "samples_seen": 2000})
    # Readable before close: each write was flushed.
    [path] = tmp_path.glob("events.out.tfevents.*")
    events = _read_events(path)
  assert str(path) == writer.path
  assert events[0].file_version == "brain.Event:2"
  (step, first), second = _scalars_by_step(events)
  assert step == 10
  assert math.isnan(first.pop("diverged"))
  # simple_value is a float32.
  assert first == {
    "train_bound": -101.5,
    "samples_seen": 1000.0,
    "lr": float(np.float32(1e-3)),
    "overflow": -math.inf,
  }
  assert second == (20, {"train_bound": -99.25, "samples_seen": 2000.0})
  assert len(events) == 3


def test_tensorboard_writer_skips_records_without_numbers(tmp_path):
  with TensorBoardWriter(tmp_path) as writer:
    writer.write(1, {"test_bound": None, "dataset": "mnist", "converged": True})
    writer.write(2, {})
  [path] = tmp_path.glob("events.out.tfevents.*")
  assert _scalars_by_step(_read_events(path)) == []


def test_resumed_tensorboard_writer_purges_later_steps_in_a_new_file(tmp_path):
  with TensorBoardWriter(tmp_path) as writer:
    for step in (100, 200, 300):
      writer.write(step, {"a": float(step)})
  first_path = writer.path
  # Resumed from the checkpoint of step 200: TensorBoard drops the old 300.
  with TensorBoardWriter(tmp_path, resume_step=200) as writer:
    writer.write(300, {"a": -1.0})
  assert writer.path != first_path
  assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 2
  _, start, resumed = _read_events(tmp_path / writer.path)
  assert start.step == 201
  assert start.session_log.status == event_pb2.SessionLog.START
  assert _scalars_by_step([resumed]) == [(300, {"a": -1.0})]
  assert _scalars_by_step(_read_events(tmp_path / first_path)) == [
    (100, {"a": 100.0}),
    (200, {"a": 200.0}),
    (300, {"a": 300.0}),
  ]


@pytest.mark.parametrize("writer_class", [JsonlWriter, TensorBoardWriter])
def test_writers_reject_arrays_and_step_in_record(tmp_path, writer_class):
  with writer_class(tmp_path) as writer:
    assert isinstance(writer, MetricWriter)
    with pytest.raises(TypeError, match="'bound' must be a scalar"):
      writer.write(1, {"bound": jnp.zeros(3)})
    with pytest.raises(ValueError, match="step"):
      writer.write(1, {"step": 2})


def test_tensorboard_writer_does_not_import_tensorflow(tmp_path):
  # A fresh interpreter: this test process may have imported TensorFlow already.
  # It loads metrics.py by path, not through the vae_jax package, whose JAX
  # imports take over a second and are not what this test is about.
  script = f"""
import importlib.util, sys
spec = importlib.util.spec_from_file_location("metrics", {metrics.__file__!r})
metrics = importlib.util.module_from_spec(spec)
spec.loader.exec_module(metrics)
with metrics.TensorBoardWriter({str(tmp_path)!r}) as writer:
  writer.write(1, {{"bound": -100.0}})
print(sorted(name for name in sys.modules if name.split(".")[0] == "tensorflow"))
"""
  result = subprocess.run(
    [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
  )
  assert result.stdout.strip() == "[]"
  [path] = tmp_path.glob("events.out.tfevents.*")
  assert _scalars_by_step(_read_events(path)) == [(1, {"bound": -100.0})]
