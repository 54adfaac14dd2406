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
