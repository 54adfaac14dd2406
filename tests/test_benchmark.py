"""`python -m experiments.benchmark` at toy size, and its FLOP count."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from experiments.benchmark import matmul_flops_per_example, op_category

REPO = Path(__file__).resolve().parents[1]


def test_flop_count_of_the_papers_mnist_model():
  # Issue 5 quotes about 4.9 MFLOP per example for 784-500-20 at L = 1.
  assert matmul_flops_per_example(784, 500, 20, 1) == 3 * 2 * (784 * 500 + 500 * 40 + 20 * 500 + 500 * 784)
  assert abs(matmul_flops_per_example(784, 500, 20, 1) - 4.88e6) < 0.01e6


def test_benchmark_runs_and_reports_every_configuration(tmp_path):
  output = tmp_path / "bench.json"
  result = subprocess.run(
      [sys.executable, "-m", "experiments.benchmark", "--data_dim=16", "--hidden_size=8",
       "--latent_dim=2", "--num_train=400", "--num_eval=100", "--batch_sizes=100",
       "--estimators=A,B", "--sample_counts=1,3", "--eval_sample_counts=1,5", "--repeats=1",
       "--num_runs=1,3", "--samples_per_pass=2", f"--profile_dir={tmp_path / 'trace'}",
       f"--output={output}"],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=True,
  )
  results = json.loads(output.read_text())
  assert results["matmul_flops_per_second"] > 0
  assert {(r["batch_size"], r["estimator"], r["num_samples"]) for r in results["train"]} == {
      (100, e, L) for e in ("A", "B") for L in (1, 3)}
  for row in results["train"]:
    assert row["epoch_examples_per_second"] > 0 and 0 < row["fraction_of_matmul_rate"]
  assert [r["estimator"] for r in results["eval"]] == ["B", "iwae"]
  assert "| 100 | B | 3 |" in result.stdout
  assert [r["num_runs"] for r in results["runs"]] == [1, 3]
  assert all(r["epoch_ms"] > 0 for r in results["runs"])
  assert "vs one run" in result.stdout
  profile = results["profile"]
  assert profile["categories"]["matmuls"] > 0
  assert np.isclose(sum(profile["categories"].values()), profile["op_ms"])
  assert 0 < profile["op_ms"] and "| matmuls |" in result.stdout


@pytest.mark.parametrize("line, category", [
    ('%dot.64 = f32[500,784]{1,0} dot(%a, %b), metadata={op_name="x/bound_and_gradient/dot_general"}',
     "matmuls"),
    ('%ynn_fusion.6 = f32[100,500]{1,0} fusion(%a), kind=kCustom', "matmuls"),
    ('%f.1 = f32[784,500]{1,0} fusion(%a), metadata={op_name="while/body/optimizer_update/add"}',
     "optimizer update"),
    ('%g = f32[60000,784]{1,0} fusion(%a), metadata={op_name="jit(e)/shuffle_and_binarize/gather"}',
     "shuffle, binarise"),
    ('%b = u32[100] fusion(%a), metadata={op_name="bound_and_gradient/jit(_normal)/jit(_uniform)/add"}',
     "random numbers"),
    ('%while.207 = (s32[]) while(%t), condition=%c, body=%b', "loop control"),
    ('%copy.197 = f32[500,784]{1,0} copy(%p)', "copies"),
    ('%s = f32[100]{0} fusion(%a), metadata={op_name="bound_and_gradient/softplus/select_n"}',
     "other ops (elementwise, reductions)"),
])
def test_op_category(line, category):
  assert op_category(line) == category
