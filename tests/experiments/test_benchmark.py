"""`python -m experiments.benchmark` at toy size, and its FLOP count."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from experiments.benchmark import hlo_name, matmul_flops_per_example, op_category

REPO = Path(__file__).resolve().parents[2]


def test_flop_count_of_the_papers_mnist_model():
  # Issue 5 quotes about 4.9 MFLOP per example for 784-500-20 at L = 1.
  assert matmul_flops_per_example(784, 500, 20, 1) == 3 * 2 * (
    784 * 500 + 500 * 40 + 20 * 500 + 500 * 784
  )
  assert abs(matmul_flops_per_example(784, 500, 20, 1) - 4.88e6) < 0.01e6


def test_benchmark_runs_and_reports_every_configuration(tmp_path):
  output = tmp_path / "bench.json"
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "experiments.benchmark",
      "--data_dim=16",
      "--hidden_size=8",
      "--latent_dim=2",
      "--num_train=400",
      "--num_eval=100",
      "--batch_sizes=100",
      "--estimators=B",
      "--sample_counts=3",
      "--eval_sample_counts=1,5",
      "--repeats=1",
      "--num_runs=1,2",
      "--samples_per_pass=2",
      "--matmul_size=256",
      f"--profile_dir={tmp_path / 'trace'}",
      f"--output={output}",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
    check=True,
  )
  results = json.loads(output.read_text())
  assert results["matmul_flops_per_second"] > 0
  assert [(r["batch_size"], r["estimator"], r["num_samples"]) for r in results["train"]] == [
    (100, "B", 3)
  ]
  for row in results["train"]:
    assert row["epoch_examples_per_second"] > 0 and row["fraction_of_matmul_rate"] > 0
  assert [r["estimator"] for r in results["eval"]] == ["B", "iwae"]
  assert "| 100 | B | 3 |" in result.stdout
  assert [r["num_runs"] for r in results["runs"]] == [1, 2]
  assert all(r["epoch_ms"] > 0 for r in results["runs"])
  assert "vs one run" in result.stdout
  # Which ops a toy model's trace holds is XLA's choice: check the accounting.
  profile = results["profile"]
  assert profile["categories"] and 0 < profile["op_ms"] <= profile["wall_ms"]
  assert profile["ops_per_step"] >= 1
  assert np.isclose(sum(profile["categories"].values()), profile["op_ms"])
  assert "| where | ms | share of op time |" in result.stdout


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
