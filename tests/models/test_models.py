"""Flax encoders and decoders: shapes, initialisation, likelihood heads, arguments."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import vae_jax
from vae_jax.models import vae as models


def _leaves(tree):
  return jax.tree_util.tree_leaves(tree)


def test_paper_initialisation_is_normal_with_stddev_0_01():
  model = vae_jax.make_vae(784, 20, hidden_sizes=(500,))
  params = vae_jax.init_params(model, jax.random.key(0))
  values = np.concatenate([np.ravel(leaf) for leaf in _leaves(params)])
  n = values.size
  encoder = (784 * 500 + 500) + 2 * (500 * 20 + 20)
  decoder = (20 * 500 + 500) + (500 * 784 + 784)
  assert n == encoder + decoder
  # The sample std of n normals has standard error sigma / sqrt(2 (n - 1)).
  assert abs(values.std() - 0.01) < 4 * 0.01 / np.sqrt(2 * (n - 1))
  assert abs(values.mean()) < 4 * 0.01 / np.sqrt(n)
  assert stats.kstest(values / 0.01, "norm").pvalue > 1e-3


def test_flax_initialisation_has_zero_biases():
  model = vae_jax.make_vae(10, 2, hidden_sizes=(8,), init="flax")
  params = vae_jax.init_params(model, jax.random.key(0))
  biases = [
    leaf
    for path, leaf in jax.tree_util.tree_leaves_with_path(params)
    if "bias" in jax.tree_util.keystr(path)
  ]
  assert biases and all(np.all(b == 0) for b in biases)


def test_glorot_initialisation_is_uniform_within_the_fan_limit_with_zero_biases():
  model = vae_jax.make_vae(784, 50, hidden_sizes=(200, 200), init="glorot")
  params = vae_jax.init_params(model, jax.random.key(0))
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    if "bias" in jax.tree_util.keystr(path):
      assert np.all(leaf == 0)
      continue
    fan_in, fan_out = leaf.shape
    limit = np.sqrt(6 / (fan_in + fan_out))
    assert np.abs(leaf).max() <= limit
    assert stats.kstest(np.ravel(leaf), "uniform", args=(-limit, 2 * limit)).pvalue > 1e-3


def test_hidden_sizes_and_activation_shape_the_network():
  model = vae_jax.make_vae(10, 2, hidden_sizes=(8, 6), activation="relu", init="flax")
  params = vae_jax.init_params(model, jax.random.key(0))["params"]
  assert params["encoder"]["mlp"]["hidden_0"]["kernel"].shape == (10, 8)
  assert params["encoder"]["mlp"]["hidden_1"]["kernel"].shape == (8, 6)
  assert params["decoder"]["mlp"]["hidden_0"]["kernel"].shape == (2, 8)
  x = jnp.full((1, 10), 0.5)
  relu_mean = models.MLP((8,), "relu", init_scheme="flax").init_with_output(jax.random.key(1), x)[0]
  assert np.all(relu_mean >= 0)


def test_gaussian_decoder_sigmoid_mean_and_variance_floor():
  decoder = models.GaussianDecoder(data_dim=5, hidden_sizes=(4,), min_variance=0.01)
  z = jnp.asarray(np.random.default_rng(0).normal(size=(3, 2)) * 100)
  (mean, logvar), _ = decoder.init_with_output(jax.random.key(0), z)
  assert mean.shape == logvar.shape == (3, 5)
  assert np.all((mean >= 0) & (mean <= 1))
  assert np.all(np.exp(logvar) >= 0.01)


@pytest.mark.parametrize("min_variance, sigmoid_mean", [(0.0, True), (0.5, False)])
def test_gaussian_log_likelihood_matches_scipy_on_the_decoders_outputs(min_variance, sigmoid_mean):
  settings = {
    "likelihood": "gaussian",
    "hidden_sizes": (16,),
    "init": "flax",
    "sigmoid_mean": sigmoid_mean,
  }
  model = vae_jax.make_vae(6, 3, min_variance=min_variance, **settings)
  # The same networks without the floor give the raw log-variance; min_variance adds no parameters.
  unfloored = vae_jax.make_vae(6, 3, **settings)
  # Scaled weights spread logvar far from 0 (exp(logvar) == logvar only there).
  params = jax.tree.map(lambda leaf: 3.0 * leaf, vae_jax.init_params(model, jax.random.key(0)))
  rng = np.random.default_rng(1)
  z = jnp.asarray(rng.normal(size=(3, 4, 3)), jnp.float32)
  x = jnp.asarray(rng.normal(0.5, 1.5, size=(3, 4, 6)), jnp.float32)

  mean, logvar = model.apply(params, z, method=models.VAE.decode)
  raw_mean, raw_logvar = unfloored.apply(params, z, method=models.VAE.decode)
  raw_logvar = np.asarray(raw_logvar, np.float64)
  assert raw_logvar.std() > 1.0 and np.abs(raw_logvar).max() > 3.0
  if min_variance > 0:
    assert np.any(np.exp(raw_logvar) < min_variance)  # the floor matters
  variance = np.exp(raw_logvar) + min_variance  # GaussianDecoder's floor
  np.testing.assert_allclose(mean, raw_mean, rtol=1e-6)
  np.testing.assert_allclose(logvar, np.log(variance), rtol=1e-5, atol=1e-5)

  expected = stats.norm.logpdf(
    np.asarray(x, np.float64), np.asarray(mean, np.float64), np.sqrt(variance)
  ).sum(-1)
  actual = model.apply(params, x, z, method=models.VAE.log_likelihood)
  assert actual.shape == (3, 4)
  np.testing.assert_allclose(actual, expected, rtol=1e-5)


def test_categorical_decoder_logits_shape_and_mean_in_range():
  decoder = models.CategoricalDecoder(data_dim=5, num_categories=7, hidden_sizes=(4,))
  z = jnp.zeros((3, 2))
  params = decoder.init(jax.random.key(0), z)
  assert decoder.apply(params, z).shape == (3, 5, 7)
  mean = decoder.apply(params, z, method=decoder.mean)
  assert mean.shape == (3, 5) and np.all((mean >= 0) & (mean <= 6))


def test_a_log_std_head_is_a_logvar_head_of_half_the_weights():
  """The same q: doubling the log_std head's output is exactly the logvar
  head with twice its parameters (scaling by 2 rounds nothing)."""
  x = jnp.asarray(np.random.default_rng(0).uniform(size=(5, 10)), jnp.float32)
  log_std = vae_jax.make_vae(10, 3, hidden_sizes=(8,), init="glorot", encoder_variance="log_std")
  params = vae_jax.init_params(log_std, jax.random.key(0))
  encoder = params["params"]["encoder"]
  assert set(encoder) == {"mlp", "mean", "log_std"}
  logvar = vae_jax.make_vae(10, 3, hidden_sizes=(8,), init="glorot")
  head = {name: 2.0 * value for name, value in encoder["log_std"].items()}
  logvar_encoder = {"mlp": encoder["mlp"], "mean": encoder["mean"], "logvar": head}
  logvar_params = {"params": {**params["params"], "encoder": logvar_encoder}}
  for got, expected in zip(
    log_std.apply(params, x, method="encode"),
    logvar.apply(logvar_params, x, method="encode"),
    strict=True,
  ):
    np.testing.assert_array_equal(got, expected)


def test_data_mean_decoder_bias_is_the_clipped_logit_of_the_mean_pixel():
  train = np.random.default_rng(0).uniform(size=(50, 6)).astype(np.float32)
  train[:, 0], train[:, 1] = 0.0, 1.0  # clipped to 0.001 and 0.999
  model = vae_jax.make_vae(
    6, 2, hidden_sizes=(4,), init="glorot", decoder_bias="data_mean", train_data=train
  )
  bias = vae_jax.init_params(model, jax.random.key(0))["params"]["decoder"]["logits"]["bias"]
  mean = np.clip(train.astype(np.float64).mean(0), 0.001, 0.999)
  np.testing.assert_allclose(bias, np.log(mean / (1 - mean)), rtol=1e-6)
  # Every other parameter starts as without it.
  plain = vae_jax.init_params(
    vae_jax.make_vae(6, 2, hidden_sizes=(4,), init="glorot"), jax.random.key(0)
  )
  others = jax.tree_util.tree_map(
    lambda a, b: np.array_equal(a, b), plain, vae_jax.init_params(model, jax.random.key(0))
  )
  others["params"]["decoder"]["logits"]["bias"] = True
  assert all(jax.tree_util.tree_leaves(others))


def test_model_properties():
  model = vae_jax.make_vae(12, 3, likelihood="categorical", num_categories=4)
  assert (model.data_dim, model.latent_dim, model.likelihood) == (12, 3, "categorical")


@pytest.mark.parametrize(
  "kwargs, message",
  [
    ({"likelihood": "poisson"}, "Unknown likelihood 'poisson'"),
    ({"activation": "swish9"}, "Unknown activation"),
    ({"init": "xavier"}, "Unknown init"),
    ({"hidden_sizes": ()}, "hidden_sizes"),
    ({"hidden_sizes": (0,)}, "hidden_sizes"),
    ({"likelihood": "categorical"}, "num_categories is required"),
    ({"num_categories": 4}, "num_categories is required"),
    ({"min_variance": -1.0, "likelihood": "gaussian"}, "min_variance"),
    ({"encoder_variance": "std"}, "Unknown encoder_variance 'std'"),
    ({"decoder_bias": "data_mean"}, r'decoder_bias="data_mean" needs the training data \[N, 10\]'),
    (
      {"decoder_bias": "data_mean", "likelihood": "gaussian"},
      "decoder_bias='data_mean' is for the Bernoulli likelihood only",
    ),
  ],
)
def test_make_vae_rejects_bad_arguments(kwargs, message):
  with pytest.raises(ValueError, match=message):
    vae_jax.make_vae(10, 2, **kwargs)


@pytest.mark.parametrize("bad", [0, -3, 2.5])
def test_make_vae_rejects_bad_dimensions(bad):
  with pytest.raises(ValueError, match="latent_dim"):
    vae_jax.make_vae(10, bad)
