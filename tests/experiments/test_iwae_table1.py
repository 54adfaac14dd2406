"""experiments.iwae_table1: run summaries, the Table 1 CSV and its markdown."""

import csv
import json

import numpy as np
import pytest
from runners import run_runner

from experiments import iwae_table1
from experiments import iwae_table1_cost as cost_module


def _run_dir(path, *, estimator="iwae", k=5, seed=0, layers=1, schedule="iwae", epochs=(0, 1, 4)):
  """A run directory as experiments.train writes it: the k = 5000 estimate
  only at stage ends (here epochs 1 and 4 of `epochs`), seconds cumulative."""
  config = {
    "encoder": {"hidden_sizes": [200, 200], "latent_dim": 50},
    "num_runs": 1,
    "seed": seed,
    "train": {"estimator": estimator, "learning_rate_schedule": schedule, "num_samples": k},
  }
  if layers == 2:
    config["top_encoder"] = {"hidden_sizes": [100, 100], "latent_dim": 50}
  records = [
    {
      "step": 3000 * epoch,
      "epoch": epoch,
      "seconds": 360.0 * epoch,
      "test_bound": -90.0 - seed,
      **({"test_log_likelihood": -86.0 - epoch - seed} if epoch in (1, 4) else {}),
    }
    for epoch in epochs
  ]
  path.mkdir(parents=True)
  (path / "run_config.json").write_text(json.dumps(config))
  (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
  return str(path)


@pytest.mark.parametrize(
  "estimator, layers, objective", [("A", 1, "VAE"), ("B", 2, "VAE"), ("iwae", 2, "IWAE")]
)
def test_a_summary_names_its_cell(tmp_path, estimator, layers, objective):
  run_dir = _run_dir(tmp_path / "run", estimator=estimator, k=50, seed=3, layers=layers)
  summary = iwae_table1.summarise_run(run_dir, "test host")
  assert summary == {
    "layers": layers,
    "objective": objective,
    "k": 50,
    "seed": 3,
    "epochs": 4,
    "scheduled_epochs": 3280,
    "test_log_likelihood": -93.0,
    "test_log_likelihood_epoch": 4,
    "train_hours": 0.4,
    "machine": "test host",
    "source": f"run directory {run_dir}",
  }


def test_a_run_in_progress_gives_its_latest_estimate_and_epoch(tmp_path):
  summary = iwae_table1.summarise_run(_run_dir(tmp_path / "r", epochs=(0, 1, 2, 3)), "m")
  assert (summary["epochs"], summary["test_log_likelihood_epoch"]) == (3, 1)
  assert summary["test_log_likelihood"] == -87.0
  before_any = iwae_table1.summarise_run(_run_dir(tmp_path / "s", epochs=(0,)), "m")
  assert before_any["test_log_likelihood"] is before_any["test_log_likelihood_epoch"] is None


def _summary(objective, k, seed, value, epoch=3280, layers=1):
  return {
    "layers": layers,
    "objective": objective,
    "k": k,
    "seed": seed,
    "test_log_likelihood": value,
    "test_log_likelihood_epoch": epoch,
    "train_hours": 1.234,
    "machine": "m",
  }


def test_csv_rows_are_one_per_cell_and_seed_in_table_order():
  summaries = [
    _summary("VAE", 1, 1, -86.42),
    _summary("IWAE", 5, 0, -88.1, epoch=364),
    _summary("VAE", 1, 0, -86.234),
  ]
  rows = iwae_table1.csv_rows(summaries)
  # 12 cells; the k = 1 runs' two seeds fill both k = 1 cells (one objective there).
  assert len(rows) == 14
  keys = [(r["layers"], r["objective"], r["k"], r["seeds"]) for r in rows]
  assert keys[:4] == [(1, "VAE", 1, 0), (1, "VAE", 1, 1), (1, "VAE", 5, ""), (1, "VAE", 50, "")]
  assert keys[4:8] == [(1, "IWAE", 1, 0), (1, "IWAE", 1, 1), (1, "IWAE", 5, 0), (1, "IWAE", 50, "")]
  assert [k[:3] for k in keys[8:]] == [(2, o, k) for o in ("VAE", "IWAE") for k in (1, 5, 50)]
  assert rows[0] == {
    "layers": 1,
    "objective": "VAE",
    "k": 1,
    "published": "-86.76",
    "ours": "-86.23",
    "epochs": 3280,
    "seeds": 0,
    "train_hours": "1.23",
    "machine": "m",
  }
  assert rows[4]["ours"] == "-86.23"
  assert (rows[6]["ours"], rows[6]["epochs"]) == ("-88.10", 364)
  assert all(rows[i][c] == "" for i in (2, 13) for c in iwae_table1.CSV_COLUMNS[4:])


def test_the_markdown_lays_out_table1_with_means_and_unfinished_epochs():
  table = iwae_table1.table1_markdown(
    [
      _summary("VAE", 1, 0, -86.23),
      _summary("VAE", 1, 1, -86.42),
      _summary("IWAE", 5, 0, -88.1, epoch=364),
      _summary("IWAE", 50, 0, -83.0, layers=2),
      _summary("IWAE", 50, 1, -84.0, epoch=1093, layers=2),
    ]
  ).splitlines()
  assert table[0] == (
    "| objective | k | 1 layer published | 1 layer ours | 2 layers published | 2 layers ours |"
  )
  assert len(table) == 2 + 6
  assert table[2] == "| VAE | 1 | -86.76 | -86.33 (-86.23, -86.42) | -85.33 |  |"
  assert table[5] == "| IWAE | 1 | -86.76 | -86.33 (-86.23, -86.42) | -85.33 |  |"
  assert table[6] == "| IWAE | 5 | -85.54 | -88.10 (epoch 364) | -83.89 |  |"
  assert table[7] == "| IWAE | 50 | -84.78 |  | -82.90 | -83.50 (-83.00, -84.00 at epoch 1093) |"
  with_costs = iwae_table1.table1_markdown([], {"iwae_table1_iwae50": 40.04}).splitlines()
  assert with_costs[7] == "| IWAE | 50 | -84.78 | not run (40.0 h here) | -82.90 |  |"


def _runner(*flags):
  return run_runner("iwae_table1", *flags)


def test_record_then_tabulate_end_to_end(tmp_path):
  out, table_csv = tmp_path / "summaries", tmp_path / "table1.csv"
  for name, seed in (("vae_seed0", 0), ("vae_seed1", 1)):
    run_dir = _run_dir(tmp_path / name, estimator="A", k=1, seed=seed)
    done = _runner(f"--record={run_dir}", "--machine=test host", f"--out={out}")
    assert done.returncode == 0, done.stderr
  run_dir = _run_dir(tmp_path / "iwae5", epochs=(0, 1, 2))
  assert _runner(f"--record={run_dir}/", f"--out={out}").returncode == 0
  machine = json.loads((out / "iwae5.json").read_text())["machine"]
  assert "-core " in machine and machine.endswith(", cpu")

  done = _runner(f"--summaries={out}", f"--csv={table_csv}")
  assert done.returncode == 0, done.stderr
  with open(table_csv, encoding="utf-8") as f:
    rows = list(csv.reader(f))
  assert tuple(rows[0]) == iwae_table1.CSV_COLUMNS
  assert rows[1:3] == [
    ["1", "VAE", "1", "-86.76", "-90.00", "4", "0", "0.40", "test host"],
    ["1", "VAE", "1", "-86.76", "-91.00", "4", "1", "0.40", "test host"],
  ]
  assert rows[7] == ["1", "IWAE", "5", "-85.54", "-87.00", "1", "0", "0.20", machine]
  assert len(rows) == 1 + 14
  assert "| VAE | 1 | -86.76 | -90.50 (-90.00 at epoch 4, -91.00 at epoch 4) |" in done.stdout


@pytest.mark.parametrize(
  "change, line",
  [
    ({"schedule": "constant"}, "was trained with --learning_rate_schedule=constant, not iwae"),
    ({"estimator": "stl"}, "was trained with --estimator=stl, which is no objective of Table 1"),
  ],
)
def test_a_run_outside_table1_stops_with_one_line(tmp_path, change, line):
  done = _runner(f"--record={_run_dir(tmp_path / 'run', **change)}", f"--out={tmp_path}")
  assert done.returncode == 1
  assert done.stderr.strip().startswith("FATAL: ") and line in done.stderr
  assert len(done.stderr.strip().splitlines()) == 1


def test_a_directory_that_is_no_run_stops_with_one_line(tmp_path):
  done = _runner(f"--record={tmp_path}", f"--out={tmp_path}")
  assert done.returncode == 1
  assert done.stderr.strip() == (
    f"FATAL: No such file or directory: {tmp_path}/run_config.json; is --record a run?"
  )


def test_the_cost_of_each_cell_is_its_parts_on_the_schedule(tmp_path):
  """experiments.iwae_table1_cost on a stand-in for MNIST (random binary
  images of its sizes as an array file), timed on small slices: one row per
  preset asked for (here one), and each cell's
  hours are 3280 epochs, the runner's 334 evaluations (every 10th epoch and
  the stage ends) and 8 k = 5000 estimates of the seconds it measured."""
  rng = np.random.default_rng(0)
  arrays = {"name": np.array("mnist")}
  for split, size in (("train", 60000), ("test", 10000)):
    arrays[split] = (rng.random((size, 784)) < 0.1).astype(np.uint8) * 255
    arrays[f"{split}_labels"] = rng.integers(0, 10, size)
  np.savez_compressed(tmp_path / "mnist.npz", **arrays)
  cost_csv = tmp_path / "cost.csv"
  # A row measured before, of a preset not measured now, is kept.
  earlier = "iwae_table1_vae,1,1,VAE k=1 / IWAE k=1,2.73,0.67,172.40,2.93,earlier host"
  cost_csv.write_text(",".join(cost_module.CSV_COLUMNS) + "\n" + earlier + "\n")
  presets = ["iwae_table1_two_layers_iwae5"]
  done = run_runner(
    "iwae_table1_cost",
    f"--arrays_dir={tmp_path}",
    f"--presets={','.join(presets)}",
    "--epoch_fraction=100",
    "--eval_examples=50",
    "--estimate_examples=2",
    f"--cost_csv={cost_csv}",
    "--machine=test host",
  )
  assert done.returncode == 0, done.stderr[-2000:]
  with open(cost_csv, encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
  assert [(r["preset"], r["layers"], r["k"], r["objectives"], r["machine"]) for r in rows] == [
    ("iwae_table1_vae", "1", "1", "VAE k=1 / IWAE k=1", "earlier host"),
    ("iwae_table1_two_layers_iwae5", "2", "5", "IWAE k=5", "test host"),
  ]
  for row in rows:
    parts = [float(row[c]) for c in ("epoch_seconds", "evaluation_seconds", "estimate_seconds")]
    assert all(p > 0 for p in parts)
    expected = (3280 * parts[0] + 334 * parts[1] + 8 * parts[2]) / 3600
    assert abs(float(row["hours"]) - expected) < 0.01 + 1e-3 * expected
  assert iwae_table1.read_costs(str(cost_csv)).keys() == {"iwae_table1_vae", *presets}
  assert "| iwae_table1_two_layers_iwae5 | IWAE k=5 |" in done.stdout
