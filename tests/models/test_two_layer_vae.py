"""The IWAE paper's two stochastic layers as a Flax model (`TwoLayerVAE`):
shapes, what is refused, and its k-sample log-likelihood against log p(x)
integrated over both layers on a grid."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from linear_gaussian import z_score
from scipy import special, stats

import vae_jax
from vae_jax.errors import ConfigError
from vae_jax.math import distributions, posteriors

DATA_DIM, BATCH = 5, 4


def _model(**settings):
  return vae_jax.make_vae(
    DATA_DIM,
    1,
    hidden_sizes=(8,),
    stochastic_layers=2,
    top_latent_dim=1,
    top_hidden_sizes=(8,),
    init="flax",
    **settings,
  )


def _data(seed=0):
  return jax.random.bernoulli(jax.random.key(seed), 0.4, (BATCH, DATA_DIM)).astype(jnp.float32)


def test_shapes_of_the_networks_the_bounds_and_the_samples():
  model = vae_jax.make_vae(
    12, 6, hidden_sizes=(10,), stochastic_layers=2, top_latent_dim=3, top_hidden_sizes=(7, 5)
  )
  assert isinstance(model, vae_jax.TwoLayerVAE)
  assert (model.latent_dim, model.top_latent_dim, model.noise_dim) == (6, 3, 9)
  params = vae_jax.init_params(model, jax.random.key(0))["params"]
  assert params["top_encoder"]["mlp"]["hidden_0"]["kernel"].shape == (6, 7)
  assert params["top_encoder"]["mean"]["kernel"].shape == (5, 3)
  assert params["top_decoder"]["mlp"]["hidden_0"]["kernel"].shape == (3, 7)
  assert params["top_decoder"]["logvar"]["kernel"].shape == (5, 6)
  assert params["decoder"]["mlp"]["hidden_0"]["kernel"].shape == (6, 10)
  x = jax.random.bernoulli(jax.random.key(1), 0.3, (4, 12)).astype(jnp.float32)
  params = {"params": params}
  for estimator in ("A", "iwae", "stl", "score", "score_baseline"):
    assert vae_jax.make_elbo(model, estimator, 3)(params, x, jax.random.key(2)).shape == (4,)
  assert vae_jax.encode(model, params, x)[0].shape == (4, 6)
  assert vae_jax.sample(model, params, jax.random.key(3), 7).shape == (7, 12)
  draws = vae_jax.sample(model, params, jax.random.key(3), 7, mean=False)
  assert set(np.unique(draws)) <= {0.0, 1.0}


@pytest.mark.parametrize(
  "call, parameter",
  [
    (lambda m: vae_jax.make_elbo(m, "B"), "estimator"),
    (lambda m: vae_jax.make_elbo(m, "dreg", 5), "estimator"),
    (lambda m: vae_jax.make_elbo(m, "A", kl_weight=0.5), "kl_weight"),
    (
      lambda m: vae_jax.make_elbo(m, "A", posterior=posteriors.make_posterior("laplace")),
      "posterior",
    ),
  ],
)
def test_what_two_layers_do_not_define_is_refused_naming_the_setting(call, parameter):
  with pytest.raises(ConfigError) as error:
    call(_model())
  assert error.value.parameter == parameter
  assert "\n" not in str(error.value)


def test_bad_layer_settings_and_the_one_layer_kl_are_refused():
  with pytest.raises(ConfigError, match="Unknown stochastic_layers 3"):
    vae_jax.make_vae(5, 1, stochastic_layers=3)
  with pytest.raises(ConfigError, match="top_hidden_sizes must be a non-empty"):
    vae_jax.make_vae(5, 1, stochastic_layers=2, top_hidden_sizes=())
  model = _model()
  params = vae_jax.init_params(model, jax.random.key(0))
  with pytest.raises(ValueError, match="no closed-form KL"):
    vae_jax.kl_divergence(model, params, _data())


def test_log_likelihood_estimate_at_k_5000_matches_the_integral_over_both_layers():
  """One unit in each layer: log p(x) = log of the integral of
  p(x | h1) p(h1 | h2) N(h2; 0, 1) over a grid of (h1, h2). The k = 5000
  estimate must agree within its delta-method standard error plus its bias,
  from the relative variance of the weights over 5000 draws of the same q."""
  model = _model()
  params = vae_jax.init_params(model, jax.random.key(1))
  x, key, k = _data(3), jax.random.key(7), 5000
  estimate = np.asarray(vae_jax.make_log_likelihood_estimate(model, k)(params, x, key))

  h1 = np.linspace(-10.0, 10.0, 801)
  h2 = np.linspace(-8.0, 8.0, 641)
  logits = vae_jax.decode(model, params, jnp.asarray(h1[:, None], jnp.float32))
  log_px = np.asarray(distributions.bernoulli_log_prob(logits[:, None, :], x), np.float64)
  mean, logvar = model.apply(
    params, jnp.asarray(h2[:, None], jnp.float32), method=vae_jax.TwoLayerVAE.top_decode
  )
  log_h1_given_h2 = stats.norm.logpdf(
    h1[:, None],
    np.asarray(mean, np.float64)[None, :, 0],
    np.exp(0.5 * np.asarray(logvar, np.float64))[None, :, 0],
  )
  log_prior = log_h1_given_h2 + stats.norm.logpdf(h2)[None, :]  # [h1, h2]
  log_p_h1 = special.logsumexp(log_prior, axis=1) + np.log(h2[1] - h2[0])
  exact = special.logsumexp(log_px + log_p_h1[:, None], axis=0) + np.log(h1[1] - h1[0])

  log_w = np.asarray(
    jax.vmap(lambda e: vae_jax.make_elbo(model, "A", 1)(params, x, e))(
      jax.random.split(jax.random.key(8), k)
    ),
    np.float64,
  )
  weights = np.exp(log_w - log_w.max(0))
  relative_variance = weights.var(0) / weights.mean(0) ** 2
  standard_error, bias = np.sqrt(relative_variance / k), relative_variance / (2 * k)
  z = z_score(BATCH)
  assert np.all(np.abs(estimate + bias - exact) < z * standard_error + 1e-4), (
    estimate,
    exact,
    standard_error,
  )
