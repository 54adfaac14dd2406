"""M2 (vae_jax.models.m2, its bounds in vae_jax.inference.semi_supervised): its
bounds against exact values, the sampled label's unbiasedness, the labelled
subset, training (vae_jax.training.semi_supervised), and the runner."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from runners import run_runner

from vae_jax.inference import semi_supervised as ss
from vae_jax.models import m2
from vae_jax.training import semi_supervised as sst
from vae_jax.training.state import TrainConfig

NUM_CLASSES = 3
# Monte-Carlo checks fail beyond this many standard errors (p ~ 6e-5 each).
Z_TOLERANCE = 4.0


@pytest.fixture(scope="module")
def tiny():
  """A 1-D-latent M2 over 5 binary pixels, its parameters made less trivial
  than the near-zero initialisation, and a few binary examples."""
  model = m2.make_m2(5, NUM_CLASSES, 1, hidden_sizes=(8,), activation="tanh", init="flax")
  params = m2.init_params(model, jax.random.key(0))
  params = jax.tree.map(lambda p: 1.5 * p, params)
  x = (jax.random.uniform(jax.random.key(1), (6, 5)) < 0.5).astype(jnp.float32)
  return model, params, x


def _exact_log_joint(model, params, x):
  """log p(x, y) for every y by quadrature over the 1-D z: [batch, K]."""
  z = jnp.linspace(-8.0, 8.0, 4001)[:, None]
  log_dz = math.log(16.0 / 4000)
  log_prior_z = -0.5 * z[:, 0] ** 2 - 0.5 * math.log(2 * math.pi)

  def per_label(y):
    log_lik = jax.vmap(
      lambda zi: model.apply(
        params,
        x,
        jnp.full(x.shape[:1], y),
        jnp.broadcast_to(zi, (x.shape[0], 1)),
        method=m2.M2.log_likelihood,
      )
    )(z)  # [grid, batch]
    return jax.nn.logsumexp(log_lik + log_prior_z[:, None], axis=0) + log_dz

  return jnp.stack([per_label(y) for y in range(NUM_CLASSES)], axis=1) - math.log(NUM_CLASSES)


def _replicates(fn, num):
  return np.asarray(jax.jit(jax.vmap(fn))(jax.random.split(jax.random.key(7), num)), np.float64)


def _within_standard_errors(a, b, exact=None):
  """Mean of replicates a agrees with that of b (or with exact) within
  Z_TOLERANCE standard errors, elementwise."""
  a_mean = a.mean(0)
  if exact is None:
    se = np.sqrt(a.var(0) / len(a) + b.var(0) / len(b))
    return np.all(np.abs(a_mean - b.mean(0)) <= Z_TOLERANCE * se)
  return np.all(np.abs(a_mean - exact) <= Z_TOLERANCE * np.sqrt(a.var(0) / len(a)))


def test_enumerated_unlabelled_bound_is_q_weighted_labelled_bounds_plus_entropy(tiny):
  model, params, x = tiny
  key = jax.random.key(3)
  unlabelled = ss.make_unlabelled_bound(model, "B", 4)(params, x, key)
  # The unlabelled bound draws its eps from the first half of its key.
  noise_key = jax.random.split(key)[0]
  labelled = ss.make_labelled_bound(model, "B", 4)
  bounds = jnp.stack(
    [labelled(params, x, jnp.full(6, y), noise_key) for y in range(NUM_CLASSES)], axis=1
  )
  log_q = jax.nn.log_softmax(m2.classify(model, params, x))
  expected = jnp.sum(jnp.exp(log_q) * (bounds - log_q), axis=1)
  np.testing.assert_allclose(unlabelled, expected, rtol=1e-5)


def test_bounds_are_below_the_exact_log_likelihoods_and_estimators_agree(tiny):
  model, params, x = tiny
  log_joint = np.asarray(_exact_log_joint(model, params, x), np.float64)
  y = jnp.arange(6) % NUM_CLASSES
  exact_joint = log_joint[np.arange(6), np.asarray(y)]
  bound_a = _replicates(lambda k: ss.make_labelled_bound(model, "A")(params, x, y, k), 2000)
  bound_b = _replicates(lambda k: ss.make_labelled_bound(model, "B")(params, x, y, k), 2000)
  # A and B are unbiased for the same ELBO of log p(x, y).
  assert _within_standard_errors(bound_a, bound_b)
  assert np.all(bound_b.mean(0) < exact_joint)
  # The importance-weighted bound with many samples closes most of the gap.
  iwae = _replicates(lambda k: ss.make_labelled_bound(model, "iwae", 500)(params, x, y, k), 50)
  iwae_se = iwae.std(0) / math.sqrt(len(iwae))
  assert np.all(iwae.mean(0) < exact_joint + Z_TOLERANCE * iwae_se)
  assert np.all(
    exact_joint - iwae.mean(0) < 0.2 * (exact_joint - bound_b.mean(0)) + Z_TOLERANCE * iwae_se
  )
  # U(x) bounds log p(x) = logsumexp_y log p(x, y).
  unlabelled = _replicates(lambda k: ss.make_unlabelled_bound(model)(params, x, k), 500)
  assert np.all(unlabelled.mean(0) < jax.nn.logsumexp(log_joint, axis=1))


def _tree_dot(a, b):
  return sum(jnp.vdot(u, v) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=False))


NUM_REPLICATES = 1000


def test_sampled_label_is_unbiased_in_value_and_gradient(tiny):
  model, params, x = tiny
  direction = jax.tree.map(lambda p: jax.random.normal(jax.random.key(p.size), p.shape), params)

  def value_and_projected_gradient(label_inference):
    bound = ss.make_unlabelled_bound(model, "B", 1, label_inference)
    mean_bound = lambda p, k: jnp.mean(bound(p, x, k))

    def one(key):
      value, grads = jax.value_and_grad(mean_bound)(params, key)
      # The classifier's gradient is where the score-function term acts.
      classifier = {n: v for n, v in grads["params"].items() if n.startswith("classifier")}
      classifier_direction = {n: direction["params"][n] for n in classifier}
      return jnp.stack(
        [value, _tree_dot(grads, direction), _tree_dot(classifier, classifier_direction)]
      )

    return _replicates(one, NUM_REPLICATES)

  sampled = value_and_projected_gradient("sample")
  enumerated = value_and_projected_gradient("enumerate")
  assert _within_standard_errors(sampled, enumerated)
  # The check has power: the classifier's gradient is far from zero.
  assert abs(enumerated[:, 2].mean()) > Z_TOLERANCE * enumerated[:, 2].std() / math.sqrt(
    NUM_REPLICATES
  )


def test_objective_weights_the_terms_by_set_sizes(tiny):
  model, params, x = tiny
  y = jnp.arange(6) % NUM_CLASSES
  config = ss.ObjectiveConfig(alpha=0.5)
  value, aux = ss.make_objective(model, config, 20, 80)(params, x, y, x, jax.random.key(0))
  expected = (
    0.2 * aux["labelled_bound"] + 0.8 * aux["unlabelled_bound"] - 0.5 * aux["classification_loss"]
  )
  np.testing.assert_allclose(value, expected, rtol=1e-6)
  log_q = jax.nn.log_softmax(m2.classify(model, params, x))
  np.testing.assert_allclose(
    aux["classification_loss"], -jnp.mean(log_q[jnp.arange(6), y]), rtol=1e-6
  )


def test_objective_without_unlabelled_examples_is_the_labelled_terms_alone(tiny):
  model, params, x = tiny
  y = jnp.arange(6) % NUM_CLASSES
  objective = ss.make_objective(model, ss.ObjectiveConfig(alpha=0.5), 20, 0)
  # x_unlabelled is not read: NaNs there reach neither the value nor the gradient.
  nans = jnp.full_like(x, jnp.nan)
  (value, aux), grads = jax.value_and_grad(objective, has_aux=True)(
    params, x, y, nans, jax.random.key(0)
  )
  assert set(aux) == {"labelled_bound", "classification_loss"}
  np.testing.assert_allclose(
    value, aux["labelled_bound"] - 0.5 * aux["classification_loss"], rtol=1e-6
  )
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))


def test_supervised_baseline_epoch_ignores_the_unlabelled_set():
  """With use_unlabelled=False two different unlabelled sets train the same
  parameters (the set only sets the number of steps); with it they do not."""
  model = m2.make_m2(5, NUM_CLASSES, 1, hidden_sizes=(8,), activation="tanh", init="flax")
  config = TrainConfig(
    optimizer="adam", learning_rate=0.01, batch_size=4, dynamic_binarization=False
  )
  x_labelled = (jax.random.uniform(jax.random.key(1), (6, 5)) < 0.5).astype(jnp.float32)
  y_labelled = jnp.arange(6) % NUM_CLASSES
  sets = [
    (jax.random.uniform(jax.random.key(k), (12, 5)) < 0.5).astype(jnp.float32) for k in (2, 3)
  ]

  def trained(use_unlabelled, unlabelled):
    epoch = sst.make_train_epoch(
      model,
      config,
      sst.SemiSupervisedConfig(labelled_batch_size=3, use_unlabelled=use_unlabelled),
      6,
      12,
    )
    state = sst.init_state(model, config, jax.random.key(0), 12)
    state, metrics = epoch(state, unlabelled, x_labelled, y_labelled)
    assert metrics["objective"].shape == (3,)
    assert ("unlabelled_bound" in metrics) == use_unlabelled
    return jax.tree.leaves(state.params)

  for a, b in zip(trained(False, sets[0]), trained(False, sets[1]), strict=False):
    np.testing.assert_array_equal(a, b)
  assert any(
    not np.array_equal(a, b)
    for a, b in zip(trained(True, sets[0]), trained(True, sets[1]), strict=True)
  )


def test_style_transfer_draws_every_label_from_one_style(tiny):
  model, params, x = tiny
  # Full float32 products: on GPUs, TF32 rounds the vmapped and the direct
  # decoder's products differently.
  with jax.default_matmul_precision("float32"):
    images = m2.style_transfer(model, params, x)
    mean, _ = model.apply(params, x, m2.predict(model, params, x), method=m2.M2.encode)
    expected = model.apply(params, jnp.full(6, 2), mean, method=m2.M2.decode_mean)
  assert images.shape == (6, NUM_CLASSES, 5)
  np.testing.assert_allclose(images[:, 2], expected, rtol=1e-6)


def test_select_labelled_is_balanced_and_reproducible():
  labels = np.repeat(np.arange(10), 30)
  chosen = sst.select_labelled(labels, 50, 10, seed=4)
  np.testing.assert_array_equal(np.bincount(labels[chosen]), np.full(10, 5))
  np.testing.assert_array_equal(chosen, sst.select_labelled(labels, 50, 10, seed=4))
  assert not np.array_equal(chosen, sst.select_labelled(labels, 50, 10, seed=5))
  with pytest.raises(ValueError, match="multiple of the 10 classes"):
    sst.select_labelled(labels, 15, 10, seed=0)
  with pytest.raises(ValueError, match="fewer than the 40 per class"):
    sst.select_labelled(labels, 400, 10, seed=0)


@pytest.mark.parametrize(
  "bad, match",
  [
    (dict(kl_weight=0.5), "kl_weight"),
    (dict(algorithm="wake_sleep"), "algorithm"),
    (dict(estimator="A", posterior="laplace"), "posterior"),
  ],
)
def test_m2_rejects_vae_only_settings(bad, match):
  with pytest.raises(ValueError, match=match):
    sst.check_train_config(TrainConfig(**bad))


def test_bad_inputs_name_the_problem(tiny):
  model, params, x = tiny
  with pytest.raises(ValueError, match="5"):
    ss.make_unlabelled_bound(model)(params, x[:, :4], jax.random.key(0))
  with pytest.raises(TypeError, match="integers"):
    ss.make_labelled_bound(model)(params, x, jnp.zeros(6), jax.random.key(0))
  with pytest.raises(ValueError, match="label_inference"):
    ss.make_unlabelled_bound(model, label_inference="gumbel")
  with pytest.raises(ValueError, match="num_classes"):
    m2.make_m2(5, 1, 2)
  with pytest.raises(ValueError, match="alpha"):
    sst.SemiSupervisedConfig(alpha=-1.0)


def _runner(tmp_path, *flags):
  return run_runner(
    "semi_supervised",
    "--dataset=digits",
    "--num_labels=50",
    "--latent_dim=5",
    "--hidden_sizes=16",
    "--activation=softplus",
    "--optimizer=adam",
    "--learning_rate=0.003",
    "--eval_every=5",
    "--eval_train_examples=300",
    "--style_examples=3",
    f"--workdir={tmp_path}",
    *flags,
  )


def test_runner_learns_the_digit_classes_from_50_labels(tmp_path):
  result = _runner(tmp_path, "--num_epochs=10")
  assert result.returncode == 0, result.stderr[-3000:]
  records = [
    json.loads(line) for line in (tmp_path / "labels50" / "metrics.jsonl").read_text().splitlines()
  ]
  # The initial state, then every 5th epoch; "step" counts minibatches (15 per epoch).
  assert [(r["epoch"], r["step"]) for r in records] == [(0, 0), (5, 75), (10, 150)]
  # 10 classes: chance is 90% error; these 10 epochs reach 37% (and 20 epochs
  # with --alpha=0 85%): the labels are learned through the runner. Resuming
  # is the training loop's (vae_jax.training.loop, tests/training/test_loop.py).
  assert records[-1]["test_error"] < 0.5
  assert records[-1]["test_unlabelled_bound"] > records[0]["test_unlabelled_bound"]
  assert "| 50 | 10 |" in result.stdout
  assert (tmp_path / "style_transfer.png").stat().st_size > 5000
  rows = json.loads((tmp_path / "semi_supervised.json").read_text())
  assert rows[0]["epochs"] == 10 and rows[0]["samples_seen"] == 10 * 1500


def test_runner_trains_the_supervised_baseline_and_keeps_it_apart(tmp_path):
  result = _runner(tmp_path, "--num_epochs=1", "--nouse_unlabelled")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "trained on the labels alone (no U(x))" in result.stdout
  settings = json.loads((tmp_path / "labels50" / "run_config.json").read_text())
  assert settings["semi_supervised"]["use_unlabelled"] is False
  # M2 in the baseline's directory would resume the wrong run: refused.
  result = _runner(tmp_path, "--num_epochs=2")
  assert result.returncode == 1
  assert "semi_supervised.use_unlabelled: saved False, now True" in result.stderr
