"""`python -m experiments.benchmark` at toy size, and its FLOP count."""

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl import app
from runners import run_runner

import vae_jax
from experiments import plain_jax
from experiments.benchmark import (
  hlo_name,
  matmul_flops_per_example,
  op_category,
  parse_estimate_form,
  parse_work,
)


def test_flop_count_of_the_papers_mnist_model():
  # Issue 5 quotes about 4.9 MFLOP per example for 784-500-20 at L = 1.
  assert matmul_flops_per_example(784, (500,), 20, 1) == 3 * 2 * (
    784 * 500 + 500 * 40 + 20 * 500 + 500 * 784
  )
  assert abs(matmul_flops_per_example(784, (500,), 20, 1) - 4.88e6) < 0.01e6
  # Forward only, k = 5000 decoder passes: 2 * (412,000 + 5000 * 402,000).
  assert matmul_flops_per_example(784, (500,), 20, 5000, backward=False) == 2 * (
    412_000 + 5000 * 402_000
  )
  assert matmul_flops_per_example(784, (200, 200), 50, 1) == 3 * 2 * (
    784 * 200 + 200 * 200 + 200 * 100 + 50 * 200 + 200 * 200 + 200 * 784
  )


def test_work_specifications_are_parsed_and_bad_ones_named():
  assert parse_work("train", "784-200-200-50/20/adam") == {
    "kind": "train",
    "spec": "784-200-200-50/20/adam",
    "data_dim": 784,
    "hidden": [200, 200],
    "latent_dim": 50,
    "batch_size": 20,
    "optimizer": "adam",
  }
  assert parse_work("eval", "784-500-20/5000")["num_samples"] == 5000
  for kind, spec in [
    ("train", "784-500-20/100"),
    ("eval", "784-500-20/5000/adam"),
    ("train", "784/1/sgd"),
  ]:
    with pytest.raises(app.UsageError, match=f"--{kind} entry"):
      parse_work(kind, spec)


def test_reference_estimate_forms_are_parsed_and_bad_ones_named():
  assert parse_estimate_form("10/100", 5000, 100) == (10, 100)
  assert parse_estimate_form("1/all", 5000, 100) == (1, None)
  for text, problem in [
    ("10", "not of the form"),
    ("10/x", "not of the form"),
    ("3/100", "E = 3 does not divide --num_eval = 100"),
    ("0/100", "E = 0"),
    ("10/300", "S = 300 does not divide k = 5000"),
    ("10/0", "S = 0"),
  ]:
    with pytest.raises(app.UsageError, match=f"{text!r}.*{problem}"):
      parse_estimate_form(text, 5000, 100)


def test_the_reference_epochs_gathers_train_alike():
  """Both gathers walk the same order with the same keys: the same epoch."""
  optimizer = optax.adam(1e-3)
  data = jnp.asarray(np.random.default_rng(0).integers(0, 2, (60, 6)), jnp.float32)
  params, bounds = {}, {}
  for gather in plain_jax.GATHERS:
    start = plain_jax.init(jax.random.key(0), 6, [5], 2)
    epoch = plain_jax.make_epoch(optimizer, 20, gather)
    params[gather], _, bounds[gather] = epoch(start, optimizer.init(start), data, jax.random.key(1))
  np.testing.assert_allclose(bounds["step"], bounds["epoch"], rtol=1e-6)
  chex.assert_trees_all_close(params["step"], params["epoch"], rtol=1e-6)
  with pytest.raises(ValueError, match="gather must be one of"):
    plain_jax.make_epoch(optimizer, 20, "chunk")


def test_benchmark_compares_every_work_with_the_plain_jax_reference(tmp_path):
  output = tmp_path / "bench.json"
  preset = tmp_path / "preset.flags"
  preset.write_text("--dataset=digits\n--hidden_sizes=8\n--latent_dim=2\n--batch_size=50\n")
  result = run_runner(
    "benchmark",
    "--train=64-8-2/50/adagrad",
    "--eval=16-8-2/6",
    f"--preset={preset}",
    "--preset_bare=64-8-2/50/adagrad",
    "--preset_epochs=2",
    "--preset_flags=",
    "--num_train=400",
    "--num_eval=10",
    "--reference_epochs=epoch",
    "--reference_estimates=5/all,2/3",
    "--alternations=2",
    "--samples_per_pass=3",
    "--processes=1",
    "--repeats=1",
    "--matmul_size=256",
    f"--profile_dir={tmp_path / 'trace'}",
    f"--output={output}",
    check=True,
  )
  results = json.loads(output.read_text())
  assert results["matmul_flops_per_second"] > 0
  rows = results["rows"]
  assert [row["work"]["spec"] for row in rows] == ["64-8-2/50/adagrad", "16-8-2/6", str(preset)]
  references = [
    ["minimal JAX, gather per epoch"],
    ["minimal JAX, 5/all samples a pass", "minimal JAX, 2/3 samples a pass"],
  ]
  for row, forms in zip(rows[:2], references, strict=True):
    for implementation in ["vae-jax", *forms]:
      figures = row[implementation]
      assert len(figures["processes"]) == 1
      assert figures["examples_per_second"] > 0 and figures["fraction_of_matmul_rate"] > 0
      assert figures["peak_rss_mib"] > 0
    together = row["one process"]
    assert sorted(together["library_ratio"]) == sorted(["vae-jax", *forms])
    assert together["library_ratio"]["vae-jax"] == 1.0
    assert all(rate > 0 for rate in together["examples_per_second"].values())
  for measurement in ("runner", "its epoch"):
    assert len(rows[2][measurement]["processes"]) == 1
    assert rows[2][measurement]["examples_per_second"] > 0
  assert rows[2]["its epoch"]["bare_examples_per_second"] > 0
  assert rows[2]["its epoch"]["ratio_to_bare"] > 0
  assert "| epoch 64-8-2, M=50, adagrad |" in result.stdout
  assert "| log p(x) 16-8-2, k=6 |" in result.stdout
  assert "| log p(x) 16-8-2, k=6 | minimal JAX, 2/3 samples a pass |" in result.stdout
  assert result.stdout.count(f"| {preset} |") == 1
  # Which ops a toy model's trace holds is XLA's choice: check the accounting.
  profile = results["profile"]
  assert profile["categories"] and 0 < profile["op_ms"] <= profile["wall_ms"]
  assert profile["ops_per_step"] >= 1
  assert np.isclose(sum(profile["categories"].values()), profile["op_ms"])
  assert "| where | ms | share of op time |" in result.stdout


def _library_params(reference):
  """The reference's parameters as the Flax model's pytree."""
  (encoder_hidden, encoder_out), (decoder_hidden, decoder_out) = (
    reference["encoder"],
    reference["decoder"],
  )
  dense = lambda layer: {"kernel": layer[0], "bias": layer[1]}
  latent = encoder_out[1].shape[0] // 2
  return {
    "params": {
      "encoder": {
        "mlp": {"hidden_0": dense(encoder_hidden)},
        "mean": dense((encoder_out[0][:, :latent], encoder_out[1][:latent])),
        "logvar": dense((encoder_out[0][:, latent:], encoder_out[1][latent:])),
      },
      "decoder": {"mlp": {"hidden_0": dense(decoder_hidden)}, "logits": dense(decoder_out)},
    }
  }


def test_the_reference_computes_the_librarys_bound():
  """The speed ratios compare equal work: on the same parameters, data and
  key the reference's ELBO is the library's estimator B, and its k-sample
  estimate, its k samples at once or in passes, agrees with the library's
  within the Monte-Carlo error."""
  model = vae_jax.make_vae(6, 2, hidden_sizes=(5,))
  reference = plain_jax.init(jax.random.key(0), 6, [5], 2)
  params = _library_params(reference)
  x = jnp.asarray(np.random.default_rng(0).integers(0, 2, (4, 6)), jnp.float32)
  key = jax.random.key(1)
  np.testing.assert_allclose(
    plain_jax.elbo(reference, x, key),
    vae_jax.make_elbo(model, "B")(params, x, key).mean(),
    rtol=1e-6,
  )
  keys = jax.random.split(jax.random.key(2), 16)
  ours = jax.vmap(lambda k: vae_jax.make_log_likelihood_estimate(model, 200, 50)(params, x, k))(
    keys
  )
  for samples_per_pass in (None, 40):
    estimate = plain_jax.make_log_likelihood(200, 2, samples_per_pass)
    theirs = jax.vmap(lambda k, estimate=estimate: estimate(reference, x, k))(keys)
    standard_error = np.sqrt((np.var(theirs, 0, ddof=1) + np.var(ours, 0, ddof=1)) / len(keys))
    # Four standard errors for each of 4 examples and 2 forms (Bonferroni at about 1e-4).
    assert np.all(np.abs(np.mean(theirs, 0) - np.mean(ours, 0)) < 4 * standard_error)
  with pytest.raises(ValueError, match="samples_per_pass 30 must divide k = 200"):
    plain_jax.make_log_likelihood(200, 2, 30)


@pytest.mark.parametrize(
  "line, category",
  [
    (
      '%dot.64 = f32[500,784]{1,0} dot(%a, %b), metadata={op_name="x/bound_and_gradient/transpose"}',  # noqa: E501
      "matmuls",
    ),
    (
      "%ynn_fusion.6 = f32[100,500]{1,0} fusion(%a), kind=kCustom, "
      'metadata={op_name="x/decoder/logits/dot_general"}',
      "matmuls",
    ),
    (
      "%cublas-gemm.1 = (f32[100,500]{1,0}, s8[0]{0}) custom-call(%a, %b), "
      'custom_call_target="__cublas$gemm", metadata={op_name="x/encoder/dot_general"}',
      "matmuls",
    ),
    # Consuming a matmul's output does not make an op a matmul.
    (
      "%add_select_fusion = f32[100,784]{1,0} fusion(%copy.196, %ynn_fusion.8), kind=kLoop, "
      'metadata={op_name="bound_and_gradient/decoder.log_prob/jit(softplus)/select_n"}',
      "other ops (elementwise, reductions)",
    ),
    (
      "%ynn_fusion.7 = f32[784]{0} fusion(%a), kind=kCustom, "
      'metadata={op_name="x/decoder/logits/reduce_sum"}',
      "other ops (elementwise, reductions)",
    ),
    (
      '%f.1 = f32[784,500]{1,0} fusion(%a), metadata={op_name="while/body/optimizer_update/add"}',
      "optimizer update",
    ),
    (
      '%g = f32[60000,784]{1,0} fusion(%a), metadata={op_name="jit(e)/shuffle_and_binarize/gather"}',  # noqa: E501
      "shuffle, binarise",
    ),
    (
      '%b = u32[100] fusion(%a), metadata={op_name="bound_and_gradient/jit(_normal)/jit(_uniform)/add"}',  # noqa: E501
      "random numbers",
    ),
    ("%while.207 = (s32[]) while(%t), condition=%c, body=%b", "loop control"),
    ("%copy.197 = f32[500,784]{1,0} copy(%p)", "copies and padding"),
    # XLA:GPU (H100): a Triton gemm fusion, a pad to its tiles, a multi-output fusion.
    (
      "%gemm_fusion_dot.31 = f32[500,784]{1,0} fusion(%a, %b), kind=kCustom, "
      'calls=%gemm_fusion_dot.31_computation, metadata={op_name="x/decoder/logits/transpose"}',
      "matmuls",
    ),
    (
      "%loop_pad_fusion.9 = f32[20,512]{1,0} fusion(%a), kind=kLoop, calls=%fused_pad.9",
      "copies and padding",
    ),
    (
      "%loop_add_fusion = (f32[500,784]{1,0}, f32[500,784]{1,0}) fusion(%a, %b), kind=kLoop, "
      'calls=%fused_add, metadata={op_name="jit(e)/while/body/optimizer_update/add"}',
      "optimizer update",
    ),
  ],
)
def test_op_category(line, category):
  assert op_category(line) == category


def test_gpu_kernels_are_named_like_their_hlo_instructions():
  assert hlo_name("gemm_fusion_dot.31") == hlo_name("gemm_fusion_dot_31") == "gemm_fusion_dot_31"
  assert hlo_name("get-tuple-element.3") == "get_tuple_element_3"
