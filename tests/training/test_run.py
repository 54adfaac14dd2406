"""A whole VAE run in a work directory (`train_and_evaluate`): files, resume,
divergence, settings checks, several runs."""

import json
import os

import chex
import jax
import numpy as np
import pytest

from vae_jax import training
from vae_jax.errors import ConfigError
from vae_jax.figures.run_figures import RunFigures
from vae_jax.inference import variance
from vae_jax.models import vae as models
from vae_jax.training import run_dir
from vae_jax.training.checkpoints import Checkpointer
from vae_jax.training.metrics import read_metrics

DATA_DIM = 16


def _data():
  rng = np.random.default_rng(0)
  train = (rng.uniform(size=(300, DATA_DIM)) < 0.3).astype(np.float32)
  test = (rng.uniform(size=(60, DATA_DIM)) < 0.3).astype(np.float32)
  return train, test


def _run(workdir, num_epochs, config=None, latent_dim=2, data=None, **run_kwargs):
  model = models.make_vae(DATA_DIM, latent_dim, hidden_sizes=(8,))
  config = config or training.TrainConfig(batch_size=50, optimizer="adam", learning_rate=1e-2)
  run = training.RunConfig(str(workdir), num_epochs=num_epochs, **run_kwargs)
  train, test = data or _data()
  figures = RunFigures(model, test, (4, 4), str(workdir), jax.random.key(2), log=lambda _: None)
  return training.train_and_evaluate(
    model, config, run, train, test, hooks=[figures], log=lambda line: None
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
  estimate = training.make_evaluate(model, "iwae", 50)(state.params, _data()[1], jax.random.key(1))
  assert np.isclose(records[-1]["test_log_likelihood"], training.mean_nats(estimate))
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["0", "12", "24"]
  for figure in ("samples", "reconstructions", "learning_curve", "manifold"):
    assert (tmp_path / f"{figure}.png").stat().st_size > 1000, figure
  settings = json.loads((tmp_path / "run_config.json").read_text())
  assert settings["decoder"]["data_dim"] == DATA_DIM


def test_a_run_saved_before_the_variance_head_and_output_bias_settings_resumes(tmp_path):
  _run(tmp_path, num_epochs=1)
  path = tmp_path / "run_config.json"
  settings = json.loads(path.read_text())
  del settings["encoder"]["variance_head"], settings["decoder"]["initial_logits_bias"]
  path.write_text(json.dumps(settings))
  _run(tmp_path, num_epochs=2)
  assert [r["epoch"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [0, 1, 2]


def test_log_likelihood_epochs_add_evaluations_with_the_estimate(tmp_path):
  _run(
    tmp_path / "estimated",
    num_epochs=5,
    eval_every=4,
    log_likelihood_samples=20,
    log_likelihood_epochs=(1, 3, 9),
  )
  records = read_metrics(tmp_path / "estimated" / "metrics.jsonl")
  # Epoch 9 is past the budget; the last epoch always has the estimate.
  assert [r["epoch"] for r in records] == [0, 1, 3, 4, 5]
  assert [r["epoch"] for r in records if "test_log_likelihood" in r] == [1, 3, 5]
  assert sorted(os.listdir(tmp_path / "estimated" / "checkpoints"), key=int) == ["18", "24", "30"]
  # k = 0 skips every estimate; the extra evaluations stay.
  _run(tmp_path / "bounds", num_epochs=3, eval_every=4, log_likelihood_epochs=(2,))
  records = read_metrics(tmp_path / "bounds" / "metrics.jsonl")
  assert [r["epoch"] for r in records] == [0, 2, 3]
  assert not any("test_log_likelihood" in r for r in records)


def test_log_likelihood_epochs_must_be_positive(tmp_path):
  with pytest.raises(ConfigError, match=r"log_likelihood_epochs must be >= 1, got \[0, 5\]"):
    training.RunConfig(str(tmp_path), num_epochs=5, log_likelihood_epochs=(0, 5))


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
  with pytest.raises(
    ValueError, match=r"other settings(.|\n)*train.optimizer: saved 'adam', now 'sgd'"
  ):
    _run(tmp_path, num_epochs=3, config=exploding)
  fresh = tmp_path / "fresh"
  with pytest.raises(training.TrainingDivergedError, match="last good checkpoint"):
    _run(fresh, num_epochs=3, config=exploding)
  assert os.listdir(fresh / "checkpoints") == ["0"]


def test_a_run_saved_before_a_setting_existed_resumes_with_its_default(tmp_path):
  model = models.make_vae(DATA_DIM, 2, hidden_sizes=(8,))
  run_dir.check_run_settings(
    str(tmp_path), training.describe(model, training.TrainConfig(), 0), write=True
  )
  path = tmp_path / "run_config.json"
  saved = json.loads(path.read_text())
  del saved["train"]["adam_epsilon"], saved["train"]["learning_rate_schedule"]
  del saved["train"]["kl_weight"]
  path.write_text(json.dumps(saved))
  run_dir.check_run_settings(
    str(tmp_path), training.describe(model, training.TrainConfig(), 0), write=True
  )
  with pytest.raises(ValueError, match="train.kl_weight: saved 1.0, now 0.5"):
    run_dir.check_run_settings(
      str(tmp_path),
      training.describe(model, training.TrainConfig(kl_weight=0.5), 0),
      write=True,
    )


def test_bad_training_data_is_named(tmp_path):
  model = models.make_vae(DATA_DIM, 2, hidden_sizes=(8,))
  train, test = _data()
  test = test * 255
  with pytest.raises(ValueError, match=r"test_data: Bernoulli targets must lie in \[0, 1\]"):
    training.train_and_evaluate(
      model,
      training.TrainConfig(batch_size=50),
      training.RunConfig(str(tmp_path), 1),
      train,
      test,
    )


def test_multi_run_logs_each_run_and_its_first_run_is_the_single_run(tmp_path):
  single = _run(tmp_path / "single", num_epochs=2)
  multi = _run(tmp_path / "multi", num_epochs=2, num_runs=2)
  chex.assert_trees_all_close(
    single.params, jax.tree_util.tree_map(lambda a: a[0], multi.params), rtol=1e-5, atol=1e-6
  )
  last_single = read_metrics(tmp_path / "single" / "metrics.jsonl")[-1]
  last_multi = read_metrics(tmp_path / "multi" / "metrics.jsonl")[-1]
  assert np.isclose(last_multi["test_bound_run0"], last_single["test_bound"], rtol=1e-5)
  assert last_multi["test_bound_run1"] != last_multi["test_bound_run0"]
  assert np.isclose(
    last_multi["test_bound"], (last_multi["test_bound_run0"] + last_multi["test_bound_run1"]) / 2
  )
  assert (tmp_path / "multi" / "samples.png").exists()


def test_learning_rate_sweep_orders_its_runs_rate_major_and_records_the_rates(tmp_path):
  run = training.RunConfig("unused", 1, seed=3, num_runs=2, learning_rates=(0.01, 0.05))
  assert run.runs == [
    {"seed": 3, "learning_rate": 0.01},
    {"seed": 4, "learning_rate": 0.01},
    {"seed": 3, "learning_rate": 0.05},
    {"seed": 4, "learning_rate": 0.05},
  ]
  assert run.multi_run and training.RunConfig("unused", 1, learning_rates=(0.1,)).multi_run
  sweep = _run(tmp_path / "sweep", num_epochs=1, seed=3, num_runs=2, learning_rates=(0.01, 0.05))
  # Run 2 is seed 3 at rate 0.05 (the config's 0.01 unused): the single run with those
  # (evaluated with the same key, seed + 1).
  single_config = training.TrainConfig(batch_size=50, optimizer="adam", learning_rate=0.05)
  single = _run(tmp_path / "single", num_epochs=1, config=single_config, seed=3)
  chex.assert_trees_all_close(
    single.params, jax.tree_util.tree_map(lambda a: a[2], sweep.params), rtol=1e-5, atol=1e-6
  )
  last_sweep = read_metrics(tmp_path / "sweep" / "metrics.jsonl")[-1]
  last_single = read_metrics(tmp_path / "single" / "metrics.jsonl")[-1]
  assert np.isclose(last_sweep["test_bound_run2"], last_single["test_bound"], rtol=1e-5)
  settings = json.loads((tmp_path / "sweep" / "run_config.json").read_text())
  assert settings["learning_rates"] == [0.01, 0.05] and settings["num_runs"] == 2
  with pytest.raises(
    training.RunSettingsMismatchError,
    # A sweep's rates may change on resume, their number (the runs' state) may not.
    match=r"learning_rates: saved \[0.01, 0.05\], now \[0.01, 0.05, 0.1\]",
  ):
    _run(tmp_path / "sweep", num_epochs=2, seed=3, num_runs=2, learning_rates=(0.01, 0.05, 0.1))


def test_the_reported_bounds_are_those_of_the_training_and_test_sets(tmp_path):
  """The records' train and test bounds are the final state's bounds on the
  sets passed as train_data and test_data (the evaluation key is seed + 1);
  the test set here is far from the training set, so swapping them fails."""
  train, _ = _data()
  test = (np.random.default_rng(1).uniform(size=(60, DATA_DIM)) < 0.9).astype(np.float32)
  state = _run(tmp_path, num_epochs=2, data=(train, test), seed=5)
  model = models.make_vae(DATA_DIM, 2, hidden_sizes=(8,))
  evaluate = training.make_evaluate(model, "B", 1)
  last = read_metrics(tmp_path / "metrics.jsonl")[-1]
  for name, data in (("train", train), ("test", test)):
    expected = training.mean_nats(evaluate(state.params, data, jax.random.key(6)))
    assert np.isclose(last[f"{name}_bound"], expected, rtol=1e-6), name
  assert abs(last["train_bound"] - last["test_bound"]) > 1.0


def test_every_record_counts_epochs_and_minibatch_steps_and_tensorboard_sees_them(tmp_path):
  _run(tmp_path, num_epochs=3, eval_every=2)
  records = read_metrics(tmp_path / "metrics.jsonl")
  assert [(r["epoch"], r["step"]) for r in records] == [(0, 0), (2, 12), (3, 18)]
  events = list(tmp_path.glob("events.out.tfevents.*"))
  assert len(events) == 1 and events[0].stat().st_size > 0


def test_variance_every_records_the_gradient_figures_in_the_metrics_and_tensorboard(tmp_path):
  """At epochs 0 and 3 (variance_every=3, evaluations at 0, 2, 3), the
  training estimator's gradient figures, as `variance` measures them on the
  first examples with the key seed + 4; TensorBoard gets them too."""
  config = training.TrainConfig(
    batch_size=50, optimizer="adam", learning_rate=1e-2, estimator="dreg", num_samples=3
  )
  run = {"variance_every": 3, "variance_examples": 5, "variance_draws": 10}
  state = _run(tmp_path, num_epochs=3, config=config, eval_every=2, seed=1, **run)
  records = read_metrics(tmp_path / "metrics.jsonl")
  assert [(r["epoch"], "gradient_encoder_snr" in r) for r in records] == [
    (0, True),
    (2, False),
    (3, True),
  ]
  assert records[-1]["gradient_seconds"] > 0
  model = models.make_vae(DATA_DIM, 2, hidden_sizes=(8,))
  moments = variance.make_gradient_moments(model, estimator="dreg", num_samples=3, num_draws=10)
  mean, var = moments(state.params, _data()[0][:5], jax.random.key(5))
  expected = variance.summarize(variance.Moments(mean[0], var[0], mean[1], var[1], 0.0))
  for name in training.run.GRADIENT_FIGURES:
    assert np.isclose(records[-1][f"gradient_{name}"], expected[name], rtol=1e-5), name
  (events,) = tmp_path.glob("events.out.tfevents.*")
  assert b"gradient_decoder_snr" in events.read_bytes()


def test_variance_every_is_refused_where_no_bound_is_ascended(tmp_path):
  config = training.TrainConfig(algorithm="wake_sleep", estimator="A")
  with pytest.raises(ConfigError, match="algorithm 'wake_sleep' ascends another objective"):
    _run(tmp_path, num_epochs=1, config=config, variance_every=1)
  with pytest.raises(ConfigError, match="variance_examples=400 exceeds the 300 training"):
    _run(tmp_path, num_epochs=1, variance_every=1, variance_examples=400)


def test_dynamic_binarisation_scores_the_same_bits_at_every_evaluation(tmp_path):
  """With grey levels and dynamic binarisation, every evaluation scores the
  sets binarised once (`binarize_for_evaluation`): each record's bounds are
  its checkpoint's bounds on those bits. A set binarised again per
  evaluation (a plausible slip) would score other bits."""
  grey = np.random.default_rng(3).uniform(size=(300, DATA_DIM)).astype(np.float32)
  config = training.TrainConfig(
    batch_size=50, optimizer="adam", learning_rate=1e-2, dynamic_binarization=True
  )
  _run(tmp_path, num_epochs=2, config=config, data=(grey, grey[:60]), keep_checkpoints=3)
  model = models.make_vae(DATA_DIM, 2, hidden_sizes=(8,))
  bits = training.binarize_for_evaluation({"train": grey, "test": grey[:60]})
  evaluate = training.make_evaluate(model, "B", 1)
  template = training.init_train_state(model, config, jax.random.key(0))
  with Checkpointer(tmp_path / "checkpoints") as checkpointer:
    for record in read_metrics(tmp_path / "metrics.jsonl"):
      params = checkpointer.restore(template, step=record["step"]).params
      for name in ("train", "test"):
        expected = training.mean_nats(evaluate(params, bits[name], jax.random.key(1)))
        assert np.isclose(record[f"{name}_bound"], expected, rtol=1e-6), (record["epoch"], name)
