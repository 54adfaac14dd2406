"""`python -m experiments.train` end to end, as a user runs it."""

import dataclasses
import json
import signal
import subprocess
import time
from pathlib import Path

import chex
import jax
import numpy as np
import pytest
from runners import run_python, run_runner, start_runner

from vae_jax import data, training
from vae_jax.models import vae as models
from vae_jax.training.checkpoints import Checkpointer
from vae_jax.training.metrics import read_metrics

DIGITS_FLAGS = ["--dataset=digits", "--latent_dim=2", "--hidden_sizes=32", "--batch_size=100"]


def _train(*args, check=True):
  return run_runner("train", *args, check=check)


def _final_params(workdir):
  model = models.make_vae(64, 2, hidden_sizes=(32,))
  template = training.init_train_state(model, training.TrainConfig(), jax.random.key(0))
  with Checkpointer(Path(workdir) / "checkpoints") as checkpointer:
    return checkpointer.restore(template)


def test_runner_takes_the_iwae_codes_variance_head_and_output_bias(tmp_path):
  workdir = tmp_path / "run"
  flags = ["--encoder_variance=log_std", "--decoder_bias=data_mean", "--init=glorot"]
  # And an estimator with a setting, through the flags to the recorded run.
  estimator = ["--estimator=piwae", "--num_samples=4", "--num_groups=2"]
  _train(*DIGITS_FLAGS, *flags, *estimator, "--num_epochs=1", f"--workdir={workdir}")
  settings = json.loads((workdir / "run_config.json").read_text())
  assert (settings["train"]["estimator"], settings["train"]["num_groups"]) == ("piwae", 2)
  assert np.isfinite(read_metrics(workdir / "metrics.jsonl")[-1]["test_bound"])
  assert settings["encoder"]["variance_head"] == "log_std"
  assert settings["decoder"]["initial_logits_bias"] == "data_mean"
  model = models.make_vae(
    64,
    2,
    data.load_dataset("digits").train,
    hidden_sizes=(32,),
    init="glorot",
    encoder_variance="log_std",
    decoder_bias="data_mean",
  )
  template = training.init_train_state(model, training.TrainConfig(), jax.random.key(0))
  with Checkpointer(workdir / "checkpoints") as checkpointer:
    initial = checkpointer.restore(template, step=0)
  np.testing.assert_array_equal(
    initial.params["params"]["decoder"]["logits"]["bias"],
    np.asarray(model.decoder.initial_logits_bias, np.float32),
  )


def test_two_stochastic_layers_train_score_sample_and_guard_their_settings(tmp_path):
  workdir = tmp_path / "run"
  two_layers = ["--stochastic_layers=2", "--top_latent_dim=3", "--top_hidden_sizes=16"]
  result = _train(
    *DIGITS_FLAGS,
    *two_layers,
    "--estimator=iwae",
    "--num_samples=2",
    "--num_epochs=2",
    "--log_likelihood_samples=20",
    f"--workdir={workdir}",
  )
  settings = json.loads((workdir / "run_config.json").read_text())
  assert settings["top_encoder"]["latent_dim"] == 3
  assert settings["top_decoder"]["latent_dim"] == 2  # p(h1 | h2) outputs h1
  final = read_metrics(workdir / "metrics.jsonl")[-1]
  assert final["epoch"] == 2 and final["test_log_likelihood"] >= final["test_bound"] - 1.0
  assert 0 <= final["active_units_layer1"] <= 2 and 0 <= final["active_units_layer2"] <= 3
  assert (workdir / "samples.png").exists() and (workdir / "reconstructions.png").exists()
  assert "manifold.png" in result.stderr  # h1 is 2-D: the manifold of p(x | h1)

  one_layer = _train(
    *DIGITS_FLAGS,
    "--estimator=iwae",
    "--num_samples=2",
    "--num_epochs=2",
    f"--workdir={workdir}",
    check=False,
  )
  assert one_layer.returncode != 0
  assert "holds a run with other settings" in one_layer.stderr
  assert "top_encoder.latent_dim: saved 3, now None" in one_layer.stderr


def test_runner_on_digits_writes_its_files_and_resumes_as_a_no_op(tmp_path):
  workdir = tmp_path / "run"
  result = _train(*DIGITS_FLAGS, "--num_epochs=4", "--eval_every=2", f"--workdir={workdir}")
  assert "samples/s" in result.stderr and "ETA" in result.stderr
  for name in (
    "flags.txt",
    "run_config.json",
    "metrics.jsonl",
    "samples.png",
    "reconstructions.png",
    "learning_curve.png",
    "manifold.png",
  ):
    assert (workdir / name).is_file(), name
  assert "--dataset=digits" in (workdir / "flags.txt").read_text()
  records = read_metrics(workdir / "metrics.jsonl")
  assert [r["epoch"] for r in records] == [0, 2, 4]
  assert [r["samples_seen"] for r in records] == [0, 3000, 6000]
  assert records[-1]["test_bound"] > records[0]["test_bound"]
  assert json.loads((workdir / "run_config.json").read_text())["encoder"]["latent_dim"] == 2
  again = _train(*DIGITS_FLAGS, "--num_epochs=4", "--eval_every=2", f"--workdir={workdir}")
  assert "nothing to do" in again.stderr
  assert len(read_metrics(workdir / "metrics.jsonl")) == 3


def test_learning_rate_sweep_through_the_runner_and_a_mismatched_rerun(tmp_path):
  workdir = tmp_path / "sweep"
  result = _train(
    *DIGITS_FLAGS,
    "--num_epochs=1",
    "--learning_rates=0.01,0.1",
    "--num_seeds=2",
    f"--workdir={workdir}",
  )
  assert (
    "Runs (the metrics' _run<i>): 0: seed 0, learning rate 0.01; 1: seed 1, learning "
    "rate 0.01; 2: seed 0, learning rate 0.1; 3: seed 1, learning rate 0.1"
  ) in result.stderr
  last = read_metrics(workdir / "metrics.jsonl")[-1]
  bounds = [last[f"test_bound_run{i}"] for i in range(4)]
  assert np.isclose(last["test_bound"], np.mean(bounds))
  assert len(set(bounds)) == 4
  flags_text = (workdir / "flags.txt").read_text()
  assert "--learning_rates=0.01,0.1" in flags_text
  # The same directory without the sweep: one FATAL line, and nothing of it is overwritten.
  again = _train(*DIGITS_FLAGS, "--num_epochs=2", f"--workdir={workdir}", check=False)
  assert again.returncode == 1
  assert "FATAL: " in again.stderr and "holds a run with other settings" in again.stderr
  assert "learning_rates: saved [0.01, 0.1], now None" in again.stderr
  assert "Traceback" not in again.stderr
  assert (workdir / "flags.txt").read_text() == flags_text
  assert read_metrics(workdir / "metrics.jsonl")[-1] == last


def _wait_for_records(process, metrics, count, seconds=240):
  deadline = time.monotonic() + seconds
  while time.monotonic() < deadline and process.poll() is None:
    if metrics.exists() and len(read_metrics(metrics)) >= count:
      return
    time.sleep(0.05)
  raise AssertionError("the run ended or stalled before it could be signalled")


# SIGINT takes the same path (tests/training/test_interrupt.py sends both to real processes).
@pytest.mark.parametrize("signal_name", ["SIGTERM", pytest.param("SIGINT", marks=pytest.mark.slow)])
def test_a_second_run_is_refused_and_a_signal_saves_and_stops_with_one_line(tmp_path, signal_name):
  """One writer per directory; Ctrl-C (SIGINT) and SIGTERM finish the epoch in
  flight, save it and say how to resume, with the shell's exit status."""
  # Epochs of digits take milliseconds: a budget the test never reaches.
  flags = [*DIGITS_FLAGS, "--num_epochs=1000000", "--eval_every=100", f"--workdir={tmp_path}"]
  first = start_runner(
    "train", *flags, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
  )
  try:
    _wait_for_records(first, tmp_path / "metrics.jsonl", 1)  # epoch 0: it is training
    second = _train(*flags, check=False)
    assert second.returncode == 1
    (line,) = [line for line in second.stderr.splitlines() if line.startswith("FATAL")]
    assert f"{tmp_path} is in use by another run, pid {first.pid}" in line
    assert "Traceback" not in second.stderr
    first.send_signal(getattr(signal, signal_name))
    _, stderr = first.communicate(timeout=120)
  finally:
    first.kill()
  assert first.returncode == 128 + getattr(signal, signal_name)
  assert "Traceback" not in stderr, stderr[-2000:]
  last_line = stderr.strip().splitlines()[-1]
  assert last_line.startswith(f"Stopped by {signal_name} after epoch "), last_line
  assert "rerun the same command to resume" in last_line
  last = read_metrics(tmp_path / "metrics.jsonl")[-1]
  assert f"after epoch {last['epoch']} " in last_line and last["epoch"] > 0
  with Checkpointer(tmp_path / "checkpoints") as checkpointer:
    assert checkpointer.latest_step() == last["step"]


def test_sigkilled_run_resumes_to_the_same_parameters_as_an_uninterrupted_one(tmp_path):
  flags = [*DIGITS_FLAGS, "--num_epochs=6", "--eval_every=1"]
  _train(*flags, f"--workdir={tmp_path / 'straight'}")
  killed = tmp_path / "killed"
  process = start_runner(
    "train", *flags, f"--workdir={killed}", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
  )
  deadline = time.monotonic() + 240
  while time.monotonic() < deadline and process.poll() is None:
    metrics = killed / "metrics.jsonl"
    if metrics.exists() and len(read_metrics(metrics)) >= 3:
      break
    time.sleep(0.05)
  assert process.poll() is None, "the run ended before it could be killed"
  process.send_signal(signal.SIGKILL)
  process.wait()
  records_at_kill = read_metrics(killed / "metrics.jsonl")
  assert 0 < records_at_kill[-1]["epoch"] < 6
  resumed = _train(*flags, f"--workdir={killed}")
  assert "Resumed from the checkpoint" in resumed.stderr
  chex.assert_trees_all_equal(_final_params(tmp_path / "straight"), _final_params(killed))
  epochs = [r["epoch"] for r in read_metrics(killed / "metrics.jsonl")]
  assert epochs == list(range(7))


@pytest.mark.parametrize(
  "flags, message",
  [
    (["--dataset=cifar"], "dataset"),
    (
      ["--hidden_sizes=500,abc"],
      "FATAL: --hidden_sizes: hidden_sizes must be comma-separated ints",
    ),
    (["--num_epochs=0"], "FATAL: --num_epochs: num_epochs must be >= 1, got 0."),
    (
      ["--num_train_samples=300", "--num_steps=5"],
      "FATAL: --num_steps: Give at most one of num_train_samples, num_steps.",
    ),
    (
      ["--estimator=iwae", "--kl_weight=0.5"],
      "FATAL: --kl_weight: kl_weight = 0.5 is defined only for the estimators",
    ),
    (
      ["--binarization=dynamic", "--likelihood=gaussian"],
      "FATAL: --binarization: binarization=dynamic needs a Bernoulli likelihood",
    ),
    (["--batch_size=5000"], "FATAL: --batch_size: batch_size=5000 exceeds the 1500"),
    (
      ["--num_devices=2"],
      "FATAL: --num_devices: num_devices=2 exceeds the 1 devices (1 processes)",
    ),
    (
      ["--stochastic_layers=2", "--estimator=B"],
      "FATAL: --estimator: Estimator 'B' needs KL(q(z|x) || p(z)) in closed form",
    ),
    (
      ["--stochastic_layers=2", "--algorithm=wake_sleep", "--estimator=A"],
      "FATAL: --algorithm: algorithm='wake_sleep' is written for one stochastic layer",
    ),
    (["--stochastic_layers=3"], "FATAL: --stochastic_layers: Unknown stochastic_layers 3"),
    (
      ["--estimator=miwae", "--num_samples=6", "--num_groups=4"],
      "FATAL: --num_groups: num_samples L = 6 is not a multiple of num_groups M = 4",
    ),
    # Settings that cannot fit are refused before the run directory is written.
    (["--num_samples=100000"], "needs about"),
    # A DataError as one FATAL line (the TFDS errors themselves: tests/data).
    (
      ["--dataset=mnist", "--arrays_dir=/nonexistent/arrays"],
      "cannot load --dataset=mnist: mnist: array file /nonexistent/arrays/mnist.npz not found",
    ),
  ],
)
def test_bad_flags_fail_at_start_naming_the_flag(tmp_path, flags, message):
  result = _train(*flags, f"--workdir={tmp_path}", check=False)
  assert result.returncode != 0
  assert message in result.stderr, result.stderr[-2000:]
  assert not (tmp_path / "checkpoints").exists()


def test_a_diverging_run_ends_with_one_fatal_line_and_resumes_with_a_lower_rate(tmp_path):
  result = _train(
    *DIGITS_FLAGS,
    "--optimizer=sgd",
    "--learning_rate=1e30",
    "--num_epochs=1",
    f"--workdir={tmp_path}",
    check=False,
  )
  assert result.returncode == 1
  assert "Traceback" not in result.stderr, result.stderr[-2000:]
  last_line = result.stderr.strip().splitlines()[-1]
  assert last_line.startswith("FATAL: training diverged. The training value"), last_line
  assert f"checkpoint (step 0) is kept in {tmp_path}" in last_line
  assert (tmp_path / "checkpoints" / "0").is_dir()
  # The advice can be followed: the same command with a lower rate resumes the run.
  resumed = _train(
    *DIGITS_FLAGS,
    "--optimizer=sgd",
    "--learning_rate=0.01",
    "--num_epochs=1",
    f"--workdir={tmp_path}",
  )
  assert "Resumed from the checkpoint at step 0" in resumed.stderr
  assert "train.learning_rate 1e+30 -> 0.01" in resumed.stderr
  assert [r["epoch"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [0, 1]


@pytest.mark.parametrize(
  "model_flags, estimator, sample_counts",
  [
    ([], "miwae:2", [2, 4, 8]),
    (
      ["--stochastic_layers=2", "--top_latent_dim=2", "--top_hidden_sizes=8", "--estimator=A"],
      "score",
      [4],
    ),
  ],
)
def test_estimator_variance_runner_at_toy_size(tmp_path, model_flags, estimator, sample_counts):
  """Both stages measured for every L; with three values of L, the fitted
  SNR slopes; the tables, CSV and figures written."""
  result = run_runner(
    "estimator_variance",
    *DIGITS_FLAGS,
    *model_flags,
    f"--workdir={tmp_path}",
    "--stages=0,1500",
    f"--estimators={estimator}",
    f"--sample_counts={','.join(map(str, sample_counts))}",
    "--num_examples=5",
    "--num_draws=10",
    "--num_repetitions=2",
    check=True,
  )
  outdir = tmp_path / "variance"
  results = json.loads((outdir / "results.json").read_text())
  rows = results["rows"]
  assert {(r["stage"], r["estimator"], r["num_samples"]) for r in rows} == {
    (stage, estimator, count) for stage in (0, 1500) for count in sample_counts
  }
  assert all(r["encoder_variance"] > 0 and r["encoder_variance_ci"] >= 0 for r in rows)
  assert all(r["decoder_parameter_snr"] > 0 for r in rows)
  assert rows[-1]["step"] == 15  # 1500 examples at M=100
  assert (outdir / "results.csv").read_text().startswith("stage,step,estimator,num_samples")
  assert f"| {estimator} | {sample_counts[0]} |" in (outdir / "table.md").read_text()
  assert "After 1,500 training examples" in result.stdout
  assert "s measuring" in result.stdout
  slopes = results["slopes"]
  assert len(slopes) == (2 * 2 * 2 if len(sample_counts) >= 3 else 0)  # stage, part, definition
  assert all(np.isfinite([s["slope"], s["slope_ci"]]).all() for s in slopes)
  assert ("SNR ∝ L^a after 1,500" in result.stdout) == bool(slopes)
  for stage in (0, 1500):
    for figure in ("variance", "snr"):
      assert (outdir / f"{figure}_stage_{stage}.png").stat().st_size > 1000


def test_data_flags_every_runner_loads_through(tmp_path):
  """experiments.export_arrays writes <arrays_dir>/<name>.npz; --arrays_dir
  reads such a file, --num_categories quantises what was read and
  --resplit_seed splits it at random (one subprocess: flags are process-wide)."""
  digits = data.load_dataset("digits")
  # A valid but different data set, so that reading the file is observable.
  clipped = dataclasses.replace(digits, train=np.minimum(digits.train, 0.5))
  data.export_arrays(clipped, tmp_path / "clipped")
  code = (
    "from absl import flags\n"
    "from experiments import config_flags, export_arrays\n"
    f"flags.FLAGS(['runner', '--datasets=digits', '--arrays_dir={tmp_path / 'exported'}',"
    " '--num_categories=17'])\n"
    "export_arrays.main(['runner'])\n"
    f"flags.FLAGS.arrays_dir = {str(tmp_path / 'clipped')!r}\n"
    "load = lambda: config_flags.load_data(config_flags.config_from_flags().data)\n"
    "dataset = load()\n"
    "print(dataset.train.dtype, dataset.train.sum(dtype='int64'))\n"
    "flags.FLAGS.resplit_seed = 5\n"
    "print(*load().test_labels[:20])\n"
  )
  result = run_python("-c", code, timeout=120, check=True)
  exported = data.load_dataset("digits", arrays_dir=tmp_path / "exported")
  np.testing.assert_array_equal(exported.train, digits.train)
  # digits' grey levels are k / 16: 17 bins give back the counts k.
  counts = int((clipped.train * 16).sum(dtype=np.int64))
  dtype_line, labels_line = result.stdout.splitlines()[-2:]
  assert dtype_line.split() == ["int32", str(counts)]
  assert labels_line.split() == [str(y) for y in data.resplit(clipped, 5).test_labels[:20]]


@pytest.mark.slow
def test_categorical_preset_runs_on_digits(tmp_path):
  """The mnist_categorical preset's decoder on digits' 17 levels, a smoke test."""
  workdir = tmp_path / "run"
  _train(
    "--flagfile=experiments/configs/mnist_categorical.flags",
    *DIGITS_FLAGS,
    "--num_categories=17",
    "--num_epochs=2",
    "--eval_every=1",
    f"--workdir={workdir}",
  )
  records = read_metrics(workdir / "metrics.jsonl")
  assert records[-1]["test_bound"] > records[0]["test_bound"]
  settings = json.loads((workdir / "run_config.json").read_text())
  assert settings["likelihood"] == "categorical"
  assert settings["decoder"]["num_categories"] == 17


@pytest.fixture
def small_disk(tmp_path):
  """A 1 MiB tmpfs: a file system that fills up during a run."""
  mount_point = tmp_path / "disk"
  mount_point.mkdir()
  mounted = subprocess.run(
    ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)], capture_output=True
  )
  if mounted.returncode:
    pytest.skip(f"cannot mount a tmpfs here (needs root and mount rights): {mounted.stderr!r}")
  yield mount_point
  subprocess.run(["umount", "-l", str(mount_point)], check=True)


def test_a_full_disk_ends_with_one_line_and_keeps_the_history_consistent(small_disk):
  """The run fills the disk with checkpoints (none deleted): one FATAL line that
  names the cause, and metrics.jsonl still holds exactly the checkpointed steps."""
  workdir = small_disk / "run"
  result = _train(
    *DIGITS_FLAGS,
    "--num_epochs=100000",
    "--eval_every=1",
    "--keep_checkpoints=100000",
    f"--workdir={workdir}",
    check=False,
  )
  assert result.returncode == 1, result.stderr[-2000:]
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  last_line = result.stderr.strip().splitlines()[-1]
  assert last_line.startswith("FATAL: ") and "No space left on device" in last_line, last_line
  assert "free disk space" in last_line
  with Checkpointer(workdir / "checkpoints") as checkpointer:
    steps = checkpointer.all_steps()
  assert [r["step"] for r in read_metrics(workdir / "metrics.jsonl")] == steps
