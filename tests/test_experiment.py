"""Whole runs in a work directory: files, resume, divergence, settings checks."""

import json
import os

import chex
import jax
import numpy as np
import pytest

from vae_jax import experiment, models, training
from vae_jax.checkpoints import Checkpointer
from vae_jax.metrics import read_metrics

DATA_DIM = 16


def _data():
  rng = np.random.default_rng(0)
  train = (rng.uniform(size=(300, DATA_DIM)) < 0.3).astype(np.float32)
  test = (rng.uniform(size=(60, DATA_DIM)) < 0.3).astype(np.float32)
  return train, test


def _run(workdir, num_epochs, config=None, latent_dim=2, **run_kwargs):
  model = models.make_vae(DATA_DIM, latent_dim, hidden_sizes=(8,))
  config = config or training.TrainConfig(
      batch_size=50, optimizer="adam", learning_rate=1e-2
  )
  run = experiment.RunConfig(str(workdir), num_epochs=num_epochs, **run_kwargs)
  return experiment.train_and_evaluate(
      model, config, run, *_data(), image_shape=(4, 4), log=lambda line: None
  )


def test_run_writes_metrics_checkpoints_and_figures(tmp_path):
  state = _run(tmp_path, num_epochs=4, eval_every=2, log_likelihood_samples=50)
  assert int(state.step) == 4 * (300 // 50)
  records = read_metrics(tmp_path / "metrics.jsonl")
  assert [r["epoch"] for r in records] == [0, 2, 4]
  assert [r["samples_seen"] for r in records] == [0, 600, 1200]
  for record in records[1:]:
    assert record["examples_per_second"] > 0
    assert record["seconds"] > 0
    assert np.isfinite(record["train_bound"]) and np.isfinite(record["test_bound"])
  # Adam at this rate must improve on the initial bound within 4 epochs.
  assert records[-1]["test_bound"] > records[0]["test_bound"]
  # The k = 50 estimate of log p(x) is logged once, at the end, with the run's
  # evaluation key (seed + 1).
  assert [("test_log_likelihood" in r) for r in records] == [False, False, True]
  model = models.make_vae(DATA_DIM, 2, hidden_sizes=(8,))
  estimate = training.make_evaluate(model, "iwae", 50)(
      state.params, _data()[1], jax.random.key(1))
  assert np.isclose(records[-1]["test_log_likelihood"], training.mean_nats(estimate))
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["0", "12", "24"]
  for figure in ("samples", "reconstructions", "learning_curve", "manifold"):
    assert (tmp_path / f"{figure}.png").stat().st_size > 1000, figure
  settings = json.loads((tmp_path / "run_config.json").read_text())
  assert settings["decoder"]["data_dim"] == DATA_DIM


# Slow: test_train_runner's SIGKILL test checks the same equality through the runner.
@pytest.mark.slow
def test_resumed_run_ends_bitwise_equal_to_an_uninterrupted_one(tmp_path):
  uninterrupted = _run(tmp_path / "straight", num_epochs=4)
  _run(tmp_path / "resumed", num_epochs=2)
  resumed = _run(tmp_path / "resumed", num_epochs=4)
  chex.assert_trees_all_equal(uninterrupted, resumed)
  records = read_metrics(tmp_path / "resumed" / "metrics.jsonl")
  assert [r["epoch"] for r in records] == [0, 1, 2, 3, 4]


def test_no_manifold_figure_unless_latent_space_is_2d(tmp_path):
  _run(tmp_path, num_epochs=1, latent_dim=3)
  assert not (tmp_path / "manifold.png").exists()
  assert (tmp_path / "samples.png").exists()


def test_divergence_stops_with_a_clear_error_and_keeps_the_last_checkpoint(tmp_path):
  _run(tmp_path, num_epochs=1)
  exploding = training.TrainConfig(batch_size=50, optimizer="sgd", learning_rate=1e30)
  with pytest.raises(ValueError, match=r"other settings(.|\n)*train.learning_rate: saved 0.01, now 1e\+30"):
    _run(tmp_path, num_epochs=3, config=exploding)
  fresh = tmp_path / "fresh"
  with pytest.raises(experiment.TrainingDivergedError, match="last good checkpoint"):
    _run(fresh, num_epochs=3, config=exploding)
  assert os.listdir(fresh / "checkpoints") == ["0"]


def test_a_run_saved_before_a_setting_existed_resumes_with_its_default(tmp_path):
  model = models.make_vae(DATA_DIM, 2, hidden_sizes=(8,))
  experiment._check_run_config(
      str(tmp_path), experiment.describe(model, training.TrainConfig(), 0), write=True)
  path = tmp_path / "run_config.json"
  saved = json.loads(path.read_text())
  del saved["train"]["adam_epsilon"], saved["train"]["learning_rate_schedule"]
  del saved["train"]["kl_weight"]
  path.write_text(json.dumps(saved))
  experiment._check_run_config(
      str(tmp_path), experiment.describe(model, training.TrainConfig(), 0), write=True)
  with pytest.raises(ValueError, match="train.adam_epsilon: saved 1e-08, now 0.0001"):
    experiment._check_run_config(
        str(tmp_path),
        experiment.describe(model, training.TrainConfig(adam_epsilon=1e-4), 0), write=True)


def test_bad_training_data_is_named(tmp_path):
  model = models.make_vae(DATA_DIM, 2, hidden_sizes=(8,))
  train, test = _data()
  test = test * 255
  with pytest.raises(ValueError, match=r"test_data: Bernoulli targets must lie in \[0, 1\]"):
    experiment.train_and_evaluate(
        model, training.TrainConfig(batch_size=50), experiment.RunConfig(str(tmp_path), 1),
        train, test, (4, 4),
    )


def test_multi_run_logs_each_run_and_its_first_run_is_the_single_run(tmp_path):
  single = _run(tmp_path / "single", num_epochs=2)
  multi = _run(tmp_path / "multi", num_epochs=2, num_runs=2)
  chex.assert_trees_all_close(
      single.params, jax.tree_util.tree_map(lambda a: a[0], multi.params), rtol=1e-5, atol=1e-6)
  last_single = read_metrics(tmp_path / "single" / "metrics.jsonl")[-1]
  last_multi = read_metrics(tmp_path / "multi" / "metrics.jsonl")[-1]
  assert np.isclose(last_multi["test_bound_run0"], last_single["test_bound"], rtol=1e-5)
  assert last_multi["test_bound_run1"] != last_multi["test_bound_run0"]
  assert np.isclose(last_multi["test_bound"],
                    (last_multi["test_bound_run0"] + last_multi["test_bound_run1"]) / 2)
  assert (tmp_path / "multi" / "samples.png").exists()


def test_learning_rate_sweep_orders_its_runs_rate_major_and_records_the_rates(tmp_path):
  run = experiment.RunConfig("unused", 1, seed=3, num_runs=2, learning_rates=(0.01, 0.05))
  assert run.runs == [{"seed": 3, "learning_rate": 0.01}, {"seed": 4, "learning_rate": 0.01},
                      {"seed": 3, "learning_rate": 0.05}, {"seed": 4, "learning_rate": 0.05}]
  assert run.multi_run and experiment.RunConfig("unused", 1, learning_rates=(0.1,)).multi_run
  sweep = _run(tmp_path / "sweep", num_epochs=1, seed=3, num_runs=2, learning_rates=(0.01, 0.05))
  # Run 2 is seed 3 at rate 0.05 (the config's 0.01 unused): the single run with those
  # (evaluated with the same key, seed + 1).
  single_config = training.TrainConfig(batch_size=50, optimizer="adam", learning_rate=0.05)
  single = _run(tmp_path / "single", num_epochs=1, config=single_config, seed=3)
  chex.assert_trees_all_close(
      single.params, jax.tree_util.tree_map(lambda a: a[2], sweep.params), rtol=1e-5, atol=1e-6)
  last_sweep = read_metrics(tmp_path / "sweep" / "metrics.jsonl")[-1]
  last_single = read_metrics(tmp_path / "single" / "metrics.jsonl")[-1]
  assert np.isclose(last_sweep["test_bound_run2"], last_single["test_bound"], rtol=1e-5)
  settings = json.loads((tmp_path / "sweep" / "run_config.json").read_text())
  assert settings["learning_rates"] == [0.01, 0.05] and settings["num_runs"] == 2
  with pytest.raises(experiment.RunSettingsMismatchError,
                     match=r"learning_rates: saved \[0.01, 0.05\], now \[0.01, 0.1\]"):
    _run(tmp_path / "sweep", num_epochs=2, seed=3, num_runs=2, learning_rates=(0.01, 0.1))


def test_train_epochs_resumably_resumes_an_interrupted_loop_to_the_same_end(tmp_path):
  """The loop of the Fig. 3 and M2 runners: a run stopped by an error in its
  third evaluation resumes from its second checkpoint to the same state and
  records as a run never stopped."""
  def epoch(state):
    return {"x": state["x"] * 1.5 + 1.0}, state["x"]

  def run(workdir, fail_at=None, rate=1.5):
    def score(state, number, aux):
      if number == fail_at:
        raise experiment.TrainingDivergedError("stop")
      return {"x": float(state["x"]), "aux": float(aux)}
    return experiment.train_epochs_resumably(
        str(workdir), {"x": jax.numpy.zeros(())}, epoch, 5, lambda n: n % 2 == 0, score,
        samples_per_epoch=10, log=lambda _: None, settings={"rate": rate, "sizes": (8, 4)})

  straight_state, straight = run(tmp_path / "straight")
  with pytest.raises(experiment.TrainingDivergedError):
    run(tmp_path / "stopped", fail_at=4)
  assert [r["step"] for r in read_metrics(tmp_path / "stopped" / "metrics.jsonl")] == [2]
  resumed_state, resumed = run(tmp_path / "stopped")
  assert [r["step"] for r in straight] == [2, 4, 5]  # every 2nd epoch and the last
  assert [r["samples_seen"] for r in straight] == [20, 40, 50]
  strip = lambda records: [{k: v for k, v in r.items() if k != "seconds"} for r in records]
  assert strip(resumed) == strip(straight)
  assert float(resumed_state["x"]) == float(straight_state["x"])
  # Other settings in the same directory: an error, and the run's files untouched.
  files = {p: p.read_bytes() for p in (tmp_path / "straight").rglob("*") if p.is_file()}
  with pytest.raises(experiment.RunSettingsMismatchError, match="rate: saved 1.5, now 2.0"):
    run(tmp_path / "straight", rate=2.0)
  assert {p: p.read_bytes() for p in (tmp_path / "straight").rglob("*") if p.is_file()} == files


def test_train_epochs_resumably_reads_a_setting_added_later_as_its_default(tmp_path):
  """A run saved before a setting existed resumes when the setting is at the
  default given for it, and not when it is set otherwise."""
  def run(settings, num_epochs):
    return experiment.train_epochs_resumably(
        str(tmp_path), {"x": jax.numpy.zeros(())}, lambda s: ({"x": s["x"] + 1.0}, {}),
        num_epochs, lambda n: True, lambda state, number, aux: {"x": float(state["x"])},
        samples_per_epoch=10, log=lambda _: None, settings=settings,
        setting_defaults={"part": {"new": True}})

  run({"part": {"old": 1}}, 1)
  with pytest.raises(experiment.RunSettingsMismatchError,
                     match="part.new: saved True, now False"):
    run({"part": {"old": 1, "new": False}}, 2)
  state, records = run({"part": {"old": 1, "new": True}}, 2)
  assert float(state["x"]) == 2.0 and [r["step"] for r in records] == [1, 2]


def test_train_epochs_resumably_neither_writes_nor_checkpoints_a_non_finite_score(tmp_path):
  def epoch(state):
    return {"x": state["x"] + 1.0}, {}

  def score(state, number, aux):
    return {"test_bound": float("nan") if number == 4 else -float(state["x"])}

  with pytest.raises(experiment.TrainingDivergedError,
                     match=r"evaluated value \['test_bound'\] became nan in epoch 4(.|\n)*step 2"):
    experiment.train_epochs_resumably(
        str(tmp_path), {"x": jax.numpy.zeros(())}, epoch, 10, lambda n: n % 2 == 0, score,
        samples_per_epoch=10, log=lambda _: None, settings={})
  assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [2]
  with Checkpointer(str(tmp_path / "checkpoints")) as checkpointer:
    assert checkpointer.latest_step() == 2


def test_train_epochs_resumably_stops_at_the_first_non_finite_epoch(tmp_path):
  """A NaN in an epoch's outputs stops the loop in that epoch, though no
  evaluation is due, and keeps the checkpoint of the last evaluation."""
  def epoch(state):
    x = state["x"] + 1.0
    bounds = jax.numpy.where(x >= 3.0, jax.numpy.nan, -x) * jax.numpy.ones(2)
    return {"x": x}, {"bounds": bounds}

  with pytest.raises(experiment.TrainingDivergedError,
                     match=r"\['bounds'\] became nan in epoch 3"):
    experiment.train_epochs_resumably(
        str(tmp_path), {"x": jax.numpy.zeros(())}, epoch, 10, lambda n: n % 2 == 0,
        lambda state, number, aux: {"x": float(state["x"])}, samples_per_epoch=10,
        log=lambda _: None, settings={})
  assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [2]
  with Checkpointer(str(tmp_path / "checkpoints")) as checkpointer:
    assert checkpointer.latest_step() == 2
