"""The public entry points: transformations, dtypes, shapes, wiring and bad input."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special, stats

import vae_jax
from vae_jax.errors import ConfigError
from vae_jax.math import distributions
from vae_jax.training import TrainConfig

DATA_DIM, LATENT_DIM, BATCH = 12, 3, 5


def _model(likelihood="bernoulli", **kwargs):
  if likelihood == "categorical":
    kwargs.setdefault("num_categories", 4)
  return vae_jax.make_vae(DATA_DIM, LATENT_DIM, likelihood=likelihood, hidden_sizes=(16,), **kwargs)


def _data(likelihood, seed=0):
  rng = np.random.default_rng(seed)
  if likelihood == "bernoulli":
    return jnp.asarray(rng.integers(0, 2, (BATCH, DATA_DIM)), jnp.float32)
  if likelihood == "gaussian":
    return jnp.asarray(rng.uniform(size=(BATCH, DATA_DIM)), jnp.float32)
  return jnp.asarray(rng.integers(0, 4, (BATCH, DATA_DIM)), jnp.int32)


LIKELIHOODS = ["bernoulli", "gaussian", "categorical"]
ESTIMATORS = ["A", "B", "iwae"]


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_elbo_jit_matches_eager_shape_batch_and_float32(likelihood, estimator):
  model = _model(likelihood, init="flax")
  params = vae_jax.init_params(model, jax.random.key(0))
  elbo = vae_jax.make_elbo(model, estimator=estimator, num_samples=3)
  x, key = _data(likelihood), jax.random.key(1)
  eager = elbo(params, x, key)
  jitted = jax.jit(elbo)(params, x, key)
  assert eager.shape == (BATCH,)
  assert eager.dtype == jnp.float32
  assert np.all(np.isfinite(eager))
  np.testing.assert_allclose(jitted, eager, rtol=1e-5)


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_grad_of_mean_bound_is_finite_and_touches_encoder_and_decoder(likelihood):
  model = _model(likelihood, init="flax")
  params = vae_jax.init_params(model, jax.random.key(0))
  elbo = vae_jax.make_elbo(model, "A", num_samples=2)
  x = _data(likelihood)
  grads = jax.jit(jax.grad(lambda p: elbo(p, x, jax.random.key(2)).mean()))(params)
  for part in ("encoder", "decoder"):
    leaves = jax.tree_util.tree_leaves(grads["params"][part])
    assert all(np.all(np.isfinite(leaf)) for leaf in leaves)
    assert any(np.any(leaf != 0) for leaf in leaves), part


@pytest.mark.parametrize(
  "estimator, settings, same_as",
  [
    ("miwae", {"num_groups": 1}, "iwae"),  # one group: IWAE of all L samples
    ("miwae", {"num_groups": 4}, "A"),  # groups of one: the L-sample ELBO
    ("ciwae", {"ciwae_beta": 0.0}, "iwae"),
    ("ciwae", {"ciwae_beta": 1.0}, "A"),
    ("piwae", {"num_groups": 2}, "iwae"),  # its value is the decoder's IWAE bound
  ],
)
def test_make_elbo_passes_the_rainforth_settings(estimator, settings, same_as):
  model = _model()
  params = vae_jax.init_params(model, jax.random.key(0))
  x, key = _data("bernoulli"), jax.random.key(4)
  ours = vae_jax.make_elbo(model, estimator, num_samples=4, **settings)(params, x, key)
  theirs = vae_jax.make_elbo(model, same_as, num_samples=4)(params, x, key)
  np.testing.assert_allclose(ours, theirs, rtol=1e-5)


def test_train_config_refuses_estimator_settings_that_do_not_apply():
  with pytest.raises(ConfigError, match="not of 'B'") as error:
    TrainConfig(estimator="B", num_groups=2)
  assert error.value.parameter == "num_groups"
  with pytest.raises(ConfigError, match="ciwae needs ciwae_beta"):
    TrainConfig(estimator="ciwae", num_samples=5)
  grouped = TrainConfig(estimator="miwae", num_samples=8, num_groups=2)
  assert grouped.estimator_label == "miwae (M = 2, K = 4)"
  assert TrainConfig(estimator="ciwae", ciwae_beta=0.05).estimator_label == "ciwae (beta = 0.05)"


def test_vmap_over_keys_gives_independent_draws():
  model = _model()
  params = vae_jax.init_params(model, jax.random.key(0))
  elbo = vae_jax.make_elbo(model, "B", num_samples=1)
  x = _data("bernoulli")
  keys = jax.random.split(jax.random.key(3), 4)
  batched = jax.vmap(elbo, in_axes=(None, None, 0))(params, x, keys)
  assert batched.shape == (4, BATCH)
  np.testing.assert_allclose(batched[2], elbo(params, x, keys[2]), rtol=1e-6)
  assert len(np.unique(np.asarray(batched[:, 0]))) == 4


def test_make_elbo_wires_encoder_decoder_and_noise_as_documented():
  """elbo(params, x, key) must equal the estimator written out by hand, with
  eps = normal(key, [L, batch, latent]) and z = mean + sigma * eps."""
  num_samples = 4
  model = _model(init="flax")
  params = vae_jax.init_params(model, jax.random.key(0))
  x, key = _data("bernoulli"), jax.random.key(5)
  mean, logvar = vae_jax.encode(model, params, x)
  eps = jax.random.normal(key, (num_samples, BATCH, LATENT_DIM))
  z = mean + jnp.exp(0.5 * logvar) * eps
  logits = vae_jax.decode(model, params, z)
  assert z.shape == (num_samples, BATCH, LATENT_DIM)
  assert logits.shape == (num_samples, BATCH, DATA_DIM)
  log_px_z = distributions.bernoulli_log_prob(logits, x)
  log_w = (
    log_px_z
    + distributions.standard_normal_log_prob(z)
    - distributions.gaussian_log_prob(mean, logvar, z)
  )
  expected = {
    "A": log_w.mean(0),
    "B": log_px_z.mean(0) - vae_jax.kl_divergence(model, params, x),
    "iwae": jax.nn.logsumexp(log_w, axis=0) - np.log(num_samples),
  }
  for name, value in expected.items():
    got = vae_jax.make_elbo(model, name, num_samples)(params, x, key)
    np.testing.assert_allclose(got, value, rtol=1e-5, err_msg=name)


def test_sample_and_decode_mean_shapes_and_ranges():
  model = _model("bernoulli")
  params = vae_jax.init_params(model, jax.random.key(0))
  means = vae_jax.sample(model, params, jax.random.key(1), 7)
  draws = vae_jax.sample(model, params, jax.random.key(1), 7, mean=False)
  assert means.shape == draws.shape == (7, DATA_DIM)
  assert np.all((means > 0) & (means < 1))
  assert set(np.unique(np.asarray(draws))) <= {0.0, 1.0}
  categorical = _model("categorical")
  cat_params = vae_jax.init_params(categorical, jax.random.key(0))
  cat_draws = vae_jax.sample(categorical, cat_params, jax.random.key(1), 7, mean=False)
  assert cat_draws.shape == (7, DATA_DIM)
  assert jnp.issubdtype(cat_draws.dtype, jnp.integer)


# --- Bad input at the public boundary -------------------------------------


@pytest.fixture
def bernoulli_setup():
  model = _model()
  return model, vae_jax.init_params(model, jax.random.key(0)), vae_jax.make_elbo(model)


@pytest.mark.parametrize(
  "x, message",
  [
    (np.zeros(DATA_DIM, np.float32), "rank 2"),
    (np.zeros((2, 3, DATA_DIM), np.float32), "rank 2"),
    (np.zeros((BATCH, DATA_DIM + 1), np.float32), "data_dim 13"),
    (np.zeros((0, DATA_DIM), np.float32), "empty batch"),
    (np.full((BATCH, DATA_DIM), 2.0, np.float32), r"\[0, 1\]"),
    (np.full((BATCH, DATA_DIM), -0.5, np.float32), r"\[0, 1\]"),
    (np.full((BATCH, DATA_DIM), np.nan, np.float32), "NaN"),
  ],
)
def test_bad_bernoulli_data_is_a_clear_value_error(bernoulli_setup, x, message):
  model, params, elbo = bernoulli_setup
  with pytest.raises(ValueError, match=message):
    elbo(params, jnp.asarray(x), jax.random.key(0))


def test_integer_pixels_for_bernoulli_is_a_type_error(bernoulli_setup):
  model, params, elbo = bernoulli_setup
  with pytest.raises(TypeError, match="floating point.*uint8"):
    elbo(params, np.zeros((BATCH, DATA_DIM), np.uint8), jax.random.key(0))


def test_shape_errors_are_raised_under_jit_too(bernoulli_setup):
  model, params, elbo = bernoulli_setup
  with pytest.raises(ValueError, match="data_dim"):
    jax.jit(elbo)(params, jnp.zeros((BATCH, 3)), jax.random.key(0))


def test_gaussian_data_with_inf_is_rejected():
  model = _model("gaussian")
  params = vae_jax.init_params(model, jax.random.key(0))
  x = np.zeros((BATCH, DATA_DIM), np.float32)
  x[0, 0] = np.inf
  with pytest.raises(ValueError, match="inf"):
    vae_jax.make_elbo(model)(params, x, jax.random.key(0))


@pytest.mark.parametrize(
  "x, error, message",
  [
    (np.full((BATCH, DATA_DIM), 4, np.int32), ValueError, r"\[0, 4\)"),
    (np.full((BATCH, DATA_DIM), -1, np.int32), ValueError, r"\[0, 4\)"),
    (np.zeros((BATCH, DATA_DIM), np.float32), TypeError, "integer"),
  ],
)
def test_bad_categorical_data(x, error, message):
  model = _model("categorical")
  params = vae_jax.init_params(model, jax.random.key(0))
  with pytest.raises(error, match=message):
    vae_jax.make_elbo(model)(params, x, jax.random.key(0))


@pytest.mark.parametrize(
  "kwargs, error, message",
  [
    ({"num_samples": 0}, ValueError, "num_samples"),
    ({"num_samples": -2}, ValueError, "num_samples"),
    ({"num_samples": 1.5}, TypeError, "num_samples"),
    ({"estimator": "C"}, ValueError, "Unknown estimator 'C'"),
  ],
)
def test_bad_make_elbo_arguments(bernoulli_setup, kwargs, error, message):
  model = bernoulli_setup[0]
  with pytest.raises(error, match=message):
    vae_jax.make_elbo(model, **kwargs)


def test_check_data_is_usable_on_its_own(bernoulli_setup):
  model = bernoulli_setup[0]
  vae_jax.check_data(np.ones((3, DATA_DIM), np.float32), model)
  with pytest.raises(ValueError, match="NaN"):
    vae_jax.check_data(np.full((3, DATA_DIM), np.nan, np.float32), model)


def _log_weights_by_hand(model, params, x, eps):
  """log p(x, z) - log q(z|x) for eps [k, batch, latent] -> [k, batch], float64."""
  mean, logvar = vae_jax.encode(model, params, x)
  z = mean + jnp.exp(0.5 * logvar) * eps
  log_w = (
    distributions.bernoulli_log_prob(vae_jax.decode(model, params, z), x)
    + distributions.standard_normal_log_prob(z)
    - distributions.gaussian_log_prob(mean, logvar, z)
  )
  return np.asarray(log_w, np.float64)


@pytest.mark.parametrize("samples_per_pass", [4, 5, 12, 100])
def test_log_likelihood_estimate_combines_its_passes_exactly(samples_per_pass):
  """k = 12 log-weights drawn 4 at a time (5 rounds down to 4, the largest
  divisor of 12; 12 and 100 mean one pass) must give the logmeanexp of all 12."""
  model = _model(init="flax")
  params = vae_jax.init_params(model, jax.random.key(0))
  x, key = _data("bernoulli"), jax.random.key(6)
  estimate = vae_jax.make_log_likelihood_estimate(model, 12, samples_per_pass)(params, x, key)
  per_pass = 4 if samples_per_pass < 12 else 12
  eps = jnp.concatenate(
    [
      jax.random.normal(k, (per_pass, BATCH, LATENT_DIM))
      for k in jax.random.split(key, 12 // per_pass)
    ]
  )
  log_w = _log_weights_by_hand(model, params, x, eps)
  expected = special.logsumexp(log_w, axis=0) - np.log(12)
  assert estimate.shape == (BATCH,)
  np.testing.assert_allclose(estimate, expected, rtol=1e-5)


def test_log_likelihood_estimate_at_k_5000_matches_quadrature_within_its_standard_error():
  """With one latent dimension, log p(x) = log int p(x|z) N(z; 0, 1) dz is
  computed to high precision on a grid. The k = 5000 estimate must agree
  within its Monte-Carlo error: its delta-method standard error
  sqrt(v / k) plus its bias v / (2k), with v the relative variance of the
  importance weights estimated from the same k draws."""
  model = vae_jax.make_vae(DATA_DIM, 1, hidden_sizes=(16,), init="flax")
  params = vae_jax.init_params(model, jax.random.key(1))
  x, key, k = _data("bernoulli", seed=3), jax.random.key(7), 5000
  estimate = np.asarray(vae_jax.make_log_likelihood_estimate(model, k)(params, x, key))

  grid = np.linspace(-12.0, 12.0, 24001)
  logits = vae_jax.decode(model, params, jnp.asarray(grid[:, None, None], jnp.float32))
  log_joint = (
    np.asarray(distributions.bernoulli_log_prob(logits, x), np.float64)
    + stats.norm.logpdf(grid)[:, None]
  )
  exact = special.logsumexp(log_joint, axis=0) + np.log(grid[1] - grid[0])

  eps = jnp.concatenate(
    [jax.random.normal(kk, (100, BATCH, 1)) for kk in jax.random.split(key, 50)]
  )
  log_w = _log_weights_by_hand(model, params, x, eps)
  weights = np.exp(log_w - log_w.max(0))
  relative_variance = weights.var(0) / weights.mean(0) ** 2
  standard_error = np.sqrt(relative_variance / k)
  bias = relative_variance / (2 * k)
  z = stats.norm.isf(1e-3 / (2 * BATCH))
  assert np.all(np.abs(estimate + bias - exact) < z * standard_error + 1e-4), (
    estimate,
    exact,
    standard_error,
  )
  assert np.all(estimate <= exact + z * standard_error)


@pytest.mark.parametrize(
  "kwargs, message",
  [({"num_samples": 0}, "num_samples"), ({"samples_per_pass": 0}, "samples_per_pass")],
)
def test_bad_log_likelihood_estimate_arguments(bernoulli_setup, kwargs, message):
  with pytest.raises(ValueError, match=message):
    vae_jax.make_log_likelihood_estimate(bernoulli_setup[0], **kwargs)


def test_moved_modules_answer_at_their_old_names_with_a_deprecation_warning():
  """Code written against the flat layout of 0.1 keeps working, and is told
  where each module went and when the old name goes."""
  with pytest.warns(DeprecationWarning) as caught:
    from vae_jax import api, estimators, marginal_likelihood, mcem, posteriors
  # (`from ... import` may look a name up twice, warning each time.)
  messages = {str(warning.message): warning for warning in caught}
  assert len(messages) == 5
  estimators_warning = messages[
    "vae_jax.estimators moved to vae_jax.math.estimators; import it from there "
    f"(the old name goes in vae_jax {vae_jax.MOVED_MODULES_REMOVED_IN})."
  ]
  assert estimators_warning.filename == __file__  # it points at the importing line
  from vae_jax.inference import marginal_likelihood as new_marginal_likelihood
  from vae_jax.math import estimators as new_estimators
  from vae_jax.math import posteriors as new_posteriors
  from vae_jax.training import mcem as new_mcem

  assert api.make_elbo is vae_jax.make_elbo
  assert (estimators, posteriors, marginal_likelihood, mcem) == (
    new_estimators,
    new_posteriors,
    new_marginal_likelihood,
    new_mcem,
  )
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # the public lazy function is not deprecated
    assert vae_jax.make_marginal_likelihood_estimate is (
      new_marginal_likelihood.make_marginal_likelihood_estimate
    )
  with pytest.raises(AttributeError, match="no attribute 'experiment'"):
    vae_jax.experiment  # noqa: B018
