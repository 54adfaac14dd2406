"""Train state, step, scanned epoch and evaluation."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import vae_jax
from vae_jax.data import binarize
from vae_jax.inference import wake_sleep
from vae_jax.inference.bounds import CPU_ROWS_PER_PASS
from vae_jax.math import estimators
from vae_jax.training import epoch as epoch_module
from vae_jax.training.epoch import (
  gather_minibatches,
  make_epoch,
  make_train_epoch,
  make_train_step,
  plan_epoch,
  steps_per_chunk,
)
from vae_jax.training.evaluation import make_evaluate, map_in_batches, mean_nats
from vae_jax.training.state import (
  TrainConfig,
  init_train_state,
  init_train_states,
  iwae_learning_rate,
  iwae_stage_ends,
  make_optimizer,
)

DATA_DIM, LATENT_DIM = 10, 2


def _setup(**config_kwargs):
  model = vae_jax.make_vae(DATA_DIM, LATENT_DIM, hidden_sizes=(6,), init="flax")
  config = TrainConfig(batch_size=8, **config_kwargs)
  state = init_train_state(model, config, jax.random.key(0))
  data = jnp.asarray(np.random.default_rng(0).uniform(size=(43, DATA_DIM)), jnp.float32)
  return model, config, state, data


@pytest.mark.parametrize("dynamic_binarization", [False, True])
@pytest.mark.parametrize("examples_per_chunk", [1000, 16])
def test_scanned_epoch_equals_a_python_loop_of_train_steps(
  dynamic_binarization, examples_per_chunk, monkeypatch
):
  # 1000: the 5 steps in one chunk; 16: five chunks of one step.
  monkeypatch.setattr(epoch_module, "EXAMPLES_PER_CHUNK", examples_per_chunk)
  num_chunks = 1 if examples_per_chunk == 1000 else 5
  model, config, state, data = _setup(
    optimizer="adam", learning_rate=1e-2, dynamic_binarization=dynamic_binarization
  )
  # The documented recipe: split the state's key, shuffle, then one step per
  # whole minibatch (43 // 8 = 5; the last 3 examples sit out), each chunk of
  # steps binarised with its own key.
  key, shuffle_key, binarize_key, step_key = jax.random.split(state.key, 4)
  batches = data[jax.random.permutation(shuffle_key, 43)[:40]].reshape(num_chunks, -1, 8, DATA_DIM)
  if dynamic_binarization:
    batches = jax.vmap(binarize)(jax.random.split(binarize_key, num_chunks), batches)
  batches = batches.reshape(5, 8, DATA_DIM)
  step = jax.jit(make_train_step(model, config, 43))
  loop_state, loop_bounds = state, []
  for batch, batch_key in zip(batches, jax.random.split(step_key, 5), strict=True):
    loop_state, bound = step(loop_state, batch, batch_key)
    loop_bounds.append(bound)
  # The epoch donates its input state, so it runs last.
  epoch_state, bounds = make_train_epoch(model, config, 43)(state, data)
  assert bounds.shape == (5,)
  assert int(epoch_state.step) == 5
  np.testing.assert_allclose(bounds, loop_bounds, rtol=1e-5)
  chex.assert_trees_all_close(epoch_state.params, loop_state.params, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(epoch_state.key_data, jax.random.key_data(key))


def test_make_epoch_scans_any_step_over_the_minibatches_with_its_arguments():
  _, config, state, data = _setup(dynamic_binarization=True)
  next_key, plan = plan_epoch(state.key, data.shape[0], config)
  assert plan.indices.shape == (1, 5, 8) and plan.step_keys.shape == (1, 5)
  batches = gather_minibatches(data, plan.indices[0], plan.binarize_keys[0], config)
  assert set(np.unique(batches)) <= {0.0, 1.0}
  # A step that only reports its minibatch, shifted by an argument of the epoch.
  epoch = make_epoch(
    lambda state, minibatch, shift: (state, (minibatch.indices, minibatch.x + shift)), config
  )
  new_state, (indices, shifted) = epoch(state, data, 2.0)  # donates state: it runs last
  np.testing.assert_array_equal(indices, plan.indices[0])
  np.testing.assert_array_equal(shifted, batches + 2.0)
  np.testing.assert_array_equal(new_state.key_data, jax.random.key_data(next_key))


def test_steps_per_chunk_is_the_largest_divisor_within_the_chunk_size():
  assert steps_per_chunk(3000, 20) == 50  # 1000 examples
  assert steps_per_chunk(600, 100) == 10
  assert steps_per_chunk(60, 1000) == 1
  assert steps_per_chunk(7, 100) == 7  # 700 examples
  assert steps_per_chunk(13, 100) == 1  # 13 is prime and 1300 > 1000
  assert steps_per_chunk(1, 5000) == 1


def test_chunked_binarisation_draws_each_pixel_from_its_bernoulli():
  """The epoch binarises a chunk of steps per key (since 0.3): each pixel is
  still an independent Bernoulli(x) draw, so the training objective's
  expectation is unchanged. Over 5 epochs of 1000 x 20 grey levels, the
  sum of (bit - x) is within 4 standard deviations of 0, and so is its
  correlation between the deviations of two epochs (two chunk keys)."""
  config = TrainConfig(batch_size=50, dynamic_binarization=True)
  grey = jnp.asarray(np.random.default_rng(0).uniform(size=(1000, 20)), jnp.float32)
  deviations = []
  for epoch_key in jax.random.split(jax.random.key(0), 5):
    _, plan = plan_epoch(epoch_key, 1000, config)  # 20 steps in chunks of 20: one chunk
    bits = gather_minibatches(grey, plan.indices[0], plan.binarize_keys[0], config)
    deviations.append(bits - grey[plan.indices[0]])
  deviations = jnp.stack(deviations).reshape(5, -1)
  variance = np.sum(np.asarray(grey) * (1 - np.asarray(grey)))
  assert abs(float(deviations.sum(axis=1).mean())) < 4 * np.sqrt(variance / 5)
  between_epochs = np.corrcoef(deviations[0], deviations[1])[0, 1]
  assert abs(between_epochs) < 4 / np.sqrt(deviations.shape[1])


def test_sgd_step_with_weight_prior_follows_the_map_objective_gradient():
  model, config, state, data = _setup(optimizer="sgd", learning_rate=0.1, weight_prior=True)
  batch, key, num_train = data[:8], jax.random.key(3), 1000
  new_state, _ = make_train_step(model, config, num_train)(state, batch, key)
  elbo = vae_jax.make_elbo(model, config.estimator, config.num_samples)
  # Eq. 8 / N: the batch's mean bound plus 1 / N of log p(theta).
  objective = lambda p: (
    elbo(p, batch, key).mean() + estimators.gaussian_weight_log_prior(p) / num_train
  )
  expected = optax.apply_updates(
    state.params, jax.tree_util.tree_map(lambda g: 0.1 * g, jax.grad(objective)(state.params))
  )
  chex.assert_trees_all_close(new_state.params, expected, rtol=1e-5, atol=1e-7)
  # Without the prior the update differs by exactly the prior's gradient share,
  # 0.1 w / N: 1e-4 of the weights, so the difference of the two updates is
  # taken in float64, where rounding cannot reach it.
  no_prior = TrainConfig(batch_size=8, optimizer="sgd", learning_rate=0.1)
  with jax.enable_x64():
    state64 = jax.tree_util.tree_map(
      lambda leaf: leaf.astype(jnp.float64) if jnp.issubdtype(leaf.dtype, jnp.floating) else leaf,
      state,
    )
    batch64 = batch.astype(jnp.float64)
    with_prior, _ = make_train_step(model, config, num_train)(state64, batch64, key)
    plain, _ = make_train_step(model, no_prior, num_train)(state64, batch64, key)
    decay = jax.tree_util.tree_map(lambda a, b: a - b, with_prior.params, plain.params)
    chex.assert_trees_all_close(
      decay,
      jax.tree_util.tree_map(lambda w: -0.1 * w / num_train, state64.params),
      rtol=1e-9,
      atol=1e-15,
    )


def test_wake_sleep_step_follows_the_surrogate_and_reports_the_bound():
  model, config, state, data = _setup(algorithm="wake_sleep", optimizer="sgd", learning_rate=0.1)
  batch, key = data[:8], jax.random.key(3)
  new_state, bound = make_train_step(model, config, 1000)(state, batch, key)
  surrogate = wake_sleep.make_wake_sleep_objective(model)
  grads = jax.grad(lambda p: surrogate(p, batch, key).mean())(state.params)
  expected = optax.apply_updates(state.params, jax.tree_util.tree_map(lambda g: 0.1 * g, grads))
  chex.assert_trees_all_close(new_state.params, expected, rtol=1e-5, atol=1e-7)
  assert np.isclose(bound, vae_jax.make_elbo(model, "B")(state.params, batch, key).mean())


def test_adagrad_initial_accumulator_is_passed_to_optax():
  _, _, state, _ = _setup(optimizer="adagrad", adagrad_initial_accumulator=0.25)
  accumulators = jax.tree_util.tree_leaves(state.opt_state[0].sum_of_squares)
  assert all(np.all(a == 0.25) for a in accumulators)


def test_iwae_schedule_gives_the_published_rate_in_every_stage():
  steps_per_epoch = 3000  # MNIST at M = 20
  steps, rates, first_epoch = [], [], 0
  for i in range(8):  # the first and the last step of stage i
    end_epoch = first_epoch + 3**i
    steps += [first_epoch * steps_per_epoch, end_epoch * steps_per_epoch - 1]
    rates += [1e-3 * 10 ** (-i / 7)] * 2
    first_epoch = end_epoch
    assert iwae_stage_ends()[i] == end_epoch
  assert first_epoch == 3280
  steps.append(10 * 3280 * steps_per_epoch)  # past the schedule: the last rate
  rates.append(1e-4)
  schedule = jax.vmap(iwae_learning_rate(1e-3, steps_per_epoch))
  np.testing.assert_allclose(schedule(jnp.array(steps)), rates, rtol=1e-6)


def test_scheduled_adam_uses_the_stage_rate_and_epsilon():
  # num_train = 2 M: two steps per epoch, so stage 1 starts at the third step.
  config = TrainConfig(
    batch_size=4,
    optimizer="adam",
    learning_rate=0.1,
    learning_rate_schedule="iwae",
    adam_epsilon=1e-2,
  )
  optimizer = make_optimizer(config, num_train=8)
  grads = {"w": jnp.array([1e-2, -3e-2])}
  opt_state = optimizer.init(grads)
  update = jax.jit(optimizer.update)
  for step, rate in enumerate([0.1, 0.1, 0.1 * 10 ** (-1 / 7)]):
    updates, opt_state = update(grads, opt_state)
    # A constant gradient g gives Adam's bias-corrected step -rate g / (|g| + eps).
    expected = -rate * grads["w"] / (jnp.abs(grads["w"]) + 1e-2)
    np.testing.assert_allclose(updates["w"], expected, rtol=1e-5, err_msg=f"step {step}")


def test_a_schedule_without_the_training_set_size_is_an_error():
  config = TrainConfig(optimizer="adam", learning_rate_schedule="iwae")
  with pytest.raises(
    ValueError, match="learning_rate_schedule='iwae' counts epochs: pass num_train"
  ):
    make_optimizer(config)


def test_evaluate_scores_every_example_once_whatever_the_batch_size():
  model, config, state, data = _setup()
  key = jax.random.key(4)
  elbo = vae_jax.make_elbo(model, "A", 1)
  full = make_evaluate(model, "A", 1, batch_size=43)(state.params, data, key)
  assert full.shape == (43,)
  np.testing.assert_allclose(full, elbo(state.params, data, jax.random.split(key, 1)[0]), rtol=1e-5)
  # Another batching draws other noise: check the padded evaluation against
  # per-batch evaluation done by hand.
  batched = make_evaluate(model, "A", 1, batch_size=10)(state.params, data, key)
  keys = jax.random.split(key, 5)
  padded = jnp.concatenate([data, data[:7]]).reshape(5, 10, DATA_DIM)
  by_hand = jnp.concatenate([elbo(state.params, b, k) for b, k in zip(padded, keys, strict=True)])
  by_hand = by_hand[:43]
  np.testing.assert_allclose(batched, by_hand, rtol=1e-5)
  small = make_evaluate(model, "A", 1, batch_size=1000)(state.params, data, key)
  np.testing.assert_allclose(small, full, rtol=1e-6)
  assert mean_nats(small).dtype == np.float64
  assert np.isclose(mean_nats(small), np.mean(np.asarray(small, np.float64)))


@pytest.mark.parametrize("rows_per_pass, examples_per_batch", [(100, 5), (1, 1), (None, 20)])
def test_the_log_likelihood_estimate_holds_at_most_rows_per_pass_per_pass(
  rows_per_pass, examples_per_batch
):
  """k = 40 drawn 20 at a time: rows_per_pass 100 cuts each batch to 5
  examples, 1 to one; None leaves the CPU default (CPU_ROWS_PER_PASS)
  or, elsewhere, the batch asked for, 20."""
  model, _, state, data = _setup()
  key = jax.random.key(5)
  estimate = vae_jax.make_log_likelihood_estimate(model, 40, 20)
  if rows_per_pass is None and jax.default_backend() == "cpu":
    examples_per_batch = min(20, CPU_ROWS_PER_PASS // 20)
  evaluate = make_evaluate(
    model, "iwae", 40, batch_size=20, samples_per_pass=20, rows_per_pass=rows_per_pass
  )
  by_hand = map_in_batches(
    lambda x, k: estimate(state.params, x, k), (data,), key, examples_per_batch
  )
  np.testing.assert_allclose(evaluate(state.params, data, key), by_hand, rtol=1e-6)


def test_the_bound_of_l_samples_is_evaluated_in_passes_of_rows_per_pass():
  """Estimator A at L = 10 with rows_per_pass 30: batches of 3 examples."""
  model, _, state, data = _setup()
  key = jax.random.key(7)
  evaluate = make_evaluate(model, "A", 10, rows_per_pass=30)
  elbo = vae_jax.make_elbo(model, "A", 10)
  by_hand = map_in_batches(lambda x, k: elbo(state.params, x, k), (data,), key, 3)
  np.testing.assert_array_equal(evaluate(state.params, data, key), by_hand)


def test_the_public_estimate_takes_the_runners_passes_and_equals_its_evaluation():
  """On a whole data set the public estimate cuts the batch as the runner's
  evaluation does (5 examples a pass at rows_per_pass 100 and 20 samples a
  pass) and returns the same numbers for the same key."""
  model, _, state, data = _setup()
  key = jax.random.key(6)
  public = vae_jax.make_log_likelihood_estimate(model, 40, 20, rows_per_pass=100)
  one_pass_for_all = vae_jax.make_log_likelihood_estimate(model, 40, 20, rows_per_pass=10**6)
  evaluate = make_evaluate(model, "iwae", 40, samples_per_pass=20, rows_per_pass=100)
  by_hand = map_in_batches(lambda x, k: one_pass_for_all(state.params, x, k), (data,), key, 5)
  np.testing.assert_array_equal(public(state.params, data, key), by_hand)
  np.testing.assert_array_equal(evaluate(state.params, data, key), by_hand)


@pytest.mark.parametrize(
  "kwargs, message",
  [
    ({"optimizer": "rmsprop"}, "Unknown optimizer 'rmsprop'"),
    ({"algorithm": "em"}, "Unknown algorithm 'em'"),
    ({"batch_size": 0}, "batch_size"),
    ({"num_samples": 0}, "num_samples"),
    ({"learning_rate": 0.0}, "learning_rate"),
    ({"adagrad_initial_accumulator": -1.0}, "adagrad_initial_accumulator"),
    ({"learning_rate_schedule": "cosine"}, "Unknown learning_rate_schedule 'cosine'"),
    ({"adam_epsilon": 0.0}, "adam_epsilon must be > 0, got 0.0"),
  ],
)
def test_bad_train_config_is_named(kwargs, message):
  with pytest.raises(ValueError, match=message):
    TrainConfig(**kwargs)


def test_batch_larger_than_training_set_is_an_error():
  model, _, _, _ = _setup()
  with pytest.raises(ValueError, match="batch_size 100 exceeds the 43"):
    make_train_epoch(model, TrainConfig(batch_size=100), 43)


@pytest.mark.parametrize("optimizer,schedule", [("adagrad", "constant"), ("sgd", "iwae")])
def test_learning_rate_sweep_trains_each_run_as_the_single_run_at_its_rate(optimizer, schedule):
  model, _, _, data = _setup()
  config = TrainConfig(
    batch_size=8, optimizer=optimizer, learning_rate=0.3, learning_rate_schedule=schedule
  )
  keys = jax.random.split(jax.random.key(7), 2)
  rates = [0.02, 0.1]  # in place of config's 0.3
  states = init_train_states(model, config, keys, 43)
  sweep = make_train_epoch(model, config, 43, multi_run=True, learning_rates=rates)
  for _ in range(2):  # with the IWAE schedule the second epoch is its stage 1
    states, _ = sweep(states, data)
  for i, (key, rate) in enumerate(zip(keys, rates, strict=False)):
    single_config = dataclasses.replace(config, learning_rate=rate)
    state = init_train_state(model, single_config, key, 43)
    epoch = make_train_epoch(model, single_config, 43)
    for _ in range(2):
      state, _ = epoch(state, data)
    chex.assert_trees_all_close(
      state.params, jax.tree_util.tree_map(lambda a, i=i: a[i], states.params), rtol=1e-6, atol=1e-7
    )


def test_learning_rate_sweep_needs_one_positive_rate_per_run():
  model, config, _, data = _setup()
  with pytest.raises(ValueError, match="one per run of a multi_run epoch"):
    make_train_epoch(model, config, 43, learning_rates=[0.1, 0.2])
  with pytest.raises(ValueError, match="positive rates"):
    make_train_epoch(model, config, 43, multi_run=True, learning_rates=[0.1, 0.0])
  states = init_train_states(model, config, jax.random.split(jax.random.key(0), 3))
  sweep = make_train_epoch(model, config, 43, multi_run=True, learning_rates=[0.1, 0.2])
  with pytest.raises(ValueError, match="holds 3 runs but learning_rates 2 rates"):
    sweep(states, data)


# Slow: test_experiment's multi-run test checks run 0 against a single run by default.
@pytest.mark.slow
def test_multi_run_epoch_trains_each_run_as_if_alone():
  model, config, _, data = _setup(optimizer="adam", learning_rate=1e-2, dynamic_binarization=True)
  keys = jax.random.split(jax.random.key(7), 3)
  states = init_train_states(model, config, keys)
  epoch = make_train_epoch(model, config, 43, multi_run=True)
  for _ in range(2):
    states, bounds = epoch(states, data)
  assert bounds.shape == (3, 5)
  evaluate = make_evaluate(model, multi_run=True)
  scores = mean_nats(evaluate(states.params, data, jax.random.key(8)))
  assert scores.shape == (3,)
  single_epoch = make_train_epoch(model, config, 43)
  for i, key in enumerate(keys):
    state = init_train_state(model, config, key)
    for _ in range(2):
      state, _ = single_epoch(state, data)
    chex.assert_trees_all_close(
      state.params, jax.tree_util.tree_map(lambda a, i=i: a[i], states.params), rtol=1e-5, atol=1e-6
    )
    score = mean_nats(make_evaluate(model)(state.params, data, jax.random.key(8)))
    assert np.isclose(score, scores[i], rtol=1e-5)


def test_parameters_and_the_runs_key_come_from_different_splits_of_the_seed():
  """The documented split: key -> (init key, run key). Initialising from the
  key itself, or handing the run the key the parameters came from, would
  correlate the first minibatch's noise and order with the weights."""
  model = vae_jax.make_vae(DATA_DIM, LATENT_DIM, hidden_sizes=(6,), init="flax")
  key = jax.random.key(7)
  state = init_train_state(model, TrainConfig(), key)
  init_key, run_key = jax.random.split(key)
  chex.assert_trees_all_equal(state.params, vae_jax.init_params(model, init_key))
  np.testing.assert_array_equal(state.key_data, jax.random.key_data(run_key))
  for other in (key, init_key):
    assert not np.array_equal(state.key_data, jax.random.key_data(other))
