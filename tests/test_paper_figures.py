"""The paper-reproduction runners at toy size (the full runs are in docs/RESULTS.md)."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DIGITS_FLAGS = ["--dataset=digits", "--hidden_sizes=16", "--batch_size=100"]


def test_figure2_runner_trains_both_methods_per_latent_size_and_plots(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "experiments.figure2", *DIGITS_FLAGS, "--latent_dims=3",
       "--num_epochs=2", "--eval_every=1", f"--workdir={tmp_path}"],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=True,
  )
  rows = json.loads((tmp_path / "figure2.json").read_text())
  assert [(r["latent_dim"], r["algorithm"]) for r in rows] == [(3, "aevb"), (3, "wake_sleep")]
  assert all(r["samples_seen"] == 2 * 1500 for r in rows)
  settings = json.loads((tmp_path / "wake_sleep_latent3" / "run_config.json").read_text())
  assert settings["train"]["algorithm"] == "wake_sleep"
  assert settings["encoder"]["latent_dim"] == 3
  assert (tmp_path / "figure2.png").stat().st_size > 10000
  assert "| 3 | Wake-sleep | 3,000 |" in result.stdout


def test_figure3_runner_scores_each_method_with_the_app_d_estimator(tmp_path):
  subprocess.run(
      [sys.executable, "-m", "experiments.figure3", *DIGITS_FLAGS, "--latent_dim=2",
       "--train_sizes=200", "--algorithms=aevb,mcem", "--num_epochs=2", "--num_evaluations=2",
       "--ml_examples=20", "--ml_num_samples=5", "--ml_num_warmup=5", f"--workdir={tmp_path}"],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=True,
  )
  rows = json.loads((tmp_path / "figure3.json").read_text())
  assert [(r["train_size"], r["algorithm"]) for r in rows] == [(200, "aevb"), (200, "mcem")]
  for row in rows:
    assert row["samples_seen"] == 2 * 200
    assert -200 < row["test_log_likelihood"] < 0 and -200 < row["train_log_likelihood"] < 0
    records = [json.loads(line) for line in
               (tmp_path / f"n200_{row['algorithm']}" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]  # one record per evaluated epoch
  assert (tmp_path / "figure3.png").stat().st_size > 10000
