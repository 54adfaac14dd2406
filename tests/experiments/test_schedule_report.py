"""experiments.schedule_report: the stage table and figure of a run on the IWAE schedule."""

import json

import pytest
from runners import REPO, run_runner

from experiments import tables


def _records(epochs, log_likelihood_at=()):
  return [
    {
      "step": 10 * epoch,
      "epoch": epoch,
      "seconds": 2.0 * epoch,
      "train_bound": -100.0 + epoch,
      "test_bound": -101.0 + epoch,
      **({"test_log_likelihood": -95.0 + epoch} if epoch in log_likelihood_at else {}),
      **(
        {"active_units_layer1": 20 + epoch, "active_units_layer2": 5}
        if epoch in log_likelihood_at
        else {}
      ),
    }
    for epoch in epochs
  ]


def test_iwae_stage_rows_time_each_finished_stage_and_the_one_in_progress():
  rows = tables.iwae_stage_rows(_records([0, 1, 4, 10, 13, 20], (1, 4, 13)), 1e-3)
  assert [row[:4] for row in rows] == [
    [0, "1-1", "1.00e-03", "2"],
    [1, "2-4", "7.20e-04", "6"],
    [2, "5-13", "5.18e-04", "18"],
    [3, "14-20 (so far)", "3.73e-04", "14"],
  ]
  assert rows[2][4:] == ["-87.00", "-88.00", "-82.00", "33/5"]
  assert rows[3][6:] == ["", ""]  # no estimate in the unfinished stage


def _workdir(tmp_path, schedule, records):
  (tmp_path / "run_config.json").write_text(
    json.dumps({"train": {"learning_rate": 1e-3, "learning_rate_schedule": schedule}})
  )
  (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
  return tmp_path


def _report(*flags):
  return run_runner("schedule_report", *flags)


def test_the_report_prints_the_table_and_draws_the_published_line(tmp_path):
  workdir = _workdir(tmp_path, "iwae", _records([0, 1, 4, 5], (1, 4)))
  figure = tmp_path / "curve.png"
  done = _report(f"--workdir={workdir}", "--published=-86.76", f"--figure={figure}")
  assert done.returncode == 0, done.stderr
  assert "| 1 | 2-4 | 7.20e-04 | 6 | -96.00 | -97.00 | -91.00 |" in done.stdout
  assert "| 2 | 5-5 (so far) |" in done.stdout
  assert figure.stat().st_size > 1000


@pytest.mark.parametrize(
  "schedule, records, line",
  [
    ("constant", _records([0, 1]), "was trained with --learning_rate_schedule=constant"),
    ("iwae", _records([0]), "has no evaluation after training yet"),
  ],
)
def test_a_run_without_stages_stops_with_one_line(tmp_path, schedule, records, line):
  done = _report(f"--workdir={_workdir(tmp_path, schedule, records)}")
  assert done.returncode == 1
  assert done.stderr.strip().startswith("FATAL: ") and line in done.stderr


def test_a_directory_that_is_no_run_stops_with_one_line(tmp_path):
  done = _report(f"--workdir={tmp_path}")
  assert done.returncode == 1
  assert done.stderr.strip() == (
    f"FATAL: No such file or directory: {tmp_path}/metrics.jsonl; is --workdir a run?"
  )


def test_the_iwae_presets_train_their_cells_on_the_schedule_with_the_iwae_codes_choices():
  from experiments import config_flags, iwae_table1
  from vae_jax.training import iwae_stage_ends

  for cell in iwae_table1.PUBLISHED:
    config = config_flags.preset_config(
      str(REPO / f"experiments/configs/{cell.preset}.flags"), ["x"]
    )
    estimator = "iwae" if cell.objective == "IWAE" and cell.k > 1 else "A"
    assert (config.train.estimator, config.train.num_samples) == (estimator, cell.k)
    model = config.model
    assert (model.stochastic_layers, model.hidden_sizes) == (cell.layers, (200, 200))
    if cell.layers == 2:
      assert (model.latent_dim, model.top_latent_dim, model.top_hidden_sizes) == (
        100,
        50,
        (100, 100),
      )
    else:
      assert model.latent_dim == 50
    assert config.run.num_epochs == iwae_stage_ends()[-1] == 3280
    assert config.run.log_likelihood_epochs == tuple(iwae_stage_ends()[:-1])
    assert config.run.log_likelihood_samples == 5000
    assert (config.model.encoder_variance, config.model.decoder_bias) == ("log_std", "data_mean")
