"""The paper-reproduction runners at toy size (the full runs are in docs/RESULTS.md)."""

import json

from matplotlib import image as mpimg
from runners import run_python, run_runner

DIGITS_FLAGS = ["--dataset=digits", "--hidden_sizes=16", "--batch_size=100"]


def test_figure2_runner_trains_both_methods_per_latent_size_and_plots(tmp_path):
  result = run_runner(
    "figure2",
    *DIGITS_FLAGS,
    "--latent_dims=3",
    "--num_epochs=2",
    "--eval_every=1",
    f"--workdir={tmp_path}",
    check=True,
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
  run_runner(
    "figure3",
    *DIGITS_FLAGS,
    "--latent_dim=2",
    "--train_sizes=200",
    "--algorithms=aevb,mcem",
    "--num_epochs=2",
    "--num_evaluations=2",
    "--ml_examples=20",
    "--ml_num_samples=5",
    "--ml_num_warmup=5",
    f"--workdir={tmp_path}",
    check=True,
  )
  rows = json.loads((tmp_path / "figure3.json").read_text())
  assert [(r["train_size"], r["algorithm"]) for r in rows] == [(200, "aevb"), (200, "mcem")]
  for row in rows:
    assert row["samples_seen"] == 2 * 200
    assert -200 < row["test_log_likelihood"] < 0 and -200 < row["train_log_likelihood"] < 0
    records = [
      json.loads(line)
      for line in (tmp_path / f"n200_{row['algorithm']}" / "metrics.jsonl").read_text().splitlines()
    ]
    # One record per evaluated epoch; "step" counts minibatches (200 / 100 per epoch).
    assert [(r["epoch"], r["step"]) for r in records] == [(1, 2), (2, 4)]
  assert (tmp_path / "figure3.png").stat().st_size > 10000


def _figure45(*flags):
  return run_runner("figure45", *flags)


def test_figure45_runner_trains_the_shared_run_once_and_draws_both_figures(tmp_path):
  preset = tmp_path / "digits.flags"
  preset.write_text("\n".join(DIGITS_FLAGS) + "\n")
  out = tmp_path / "out"
  result = _figure45(
    f"--manifold_presets={preset}",
    f"--sample_preset={preset}",
    "--sample_latent_dims=2",
    "--samples_per_panel=50",
    "--num_epochs=1",
    "--eval_every=1",
    f"--workdir={out}",
  )
  assert result.returncode == 0, result.stderr[-3000:]
  # The J = 2 run serves Fig. 4 and Fig. 5: trained once.
  assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["digits_latent2"]
  (row,) = json.loads((out / "figure45.json").read_text())
  assert (row["dataset"], row["latent_dim"], row["figures"]) == ("digits", 2, [4, 5])
  assert row["samples_seen"] == 1500 and row["seconds"] > 0
  initial = json.loads((out / "digits_latent2" / "metrics.jsonl").read_text().splitlines()[0])
  assert initial["test_bound"] < row["test_bound"] < 0
  assert "| digits | 2 | 4, 5 | 1,500 |" in result.stdout
  assert (out / "figure45.md").read_text() in result.stdout
  for name, min_width in (("figure4.png", 800), ("figure5.png", 400)):
    pixels = mpimg.imread(out / name)
    assert pixels.shape[1] >= min_width, name
    # Decoded digits, not a blank canvas.
    assert pixels.std() > 0.1, name


def test_figure45_presets_start_from_the_defaults_and_the_command_line_wins(tmp_path):
  """The second preset gets none of the first's settings (what keeps MNIST's
  dynamic binarisation off Frey Face); a flag given on the command line
  overrides every preset."""
  first, second = tmp_path / "first.flags", tmp_path / "second.flags"
  first.write_text("--dataset=mnist\n--binarization=dynamic\n--hidden_sizes=300\n")
  second.write_text("--dataset=frey_face\n--learning_rate=0.01\n")
  code = (
    "import sys\n"
    "from absl import flags\n"
    "from experiments import config_flags, figure45\n"
    "command_line = ['figure45', '--learning_rate=0.5']\n"
    "flags.FLAGS(command_line)\n"
    "for preset in sys.argv[1:]:\n"
    "  c = config_flags.preset_config(preset, command_line)\n"
    "  print(c.data.dataset, c.train.dynamic_binarization, c.model.hidden_sizes,\n"
    "        c.train.learning_rate)\n"
    "print(flags.FLAGS.dataset, flags.FLAGS.hidden_sizes, flags.FLAGS.learning_rate)\n"
  )
  result = run_python("-c", code, str(first), str(second), timeout=120, check=True)
  # Each preset is parsed into a copy of the flags: the process's flags stay as given.
  assert result.stdout.splitlines() == [
    "mnist True (300,) 0.5",
    "frey_face False (500,) 0.5",
    "digits ['500'] 0.5",
  ]


def test_figure45_rejects_a_missing_preset(tmp_path):
  result = _figure45(f"--manifold_presets={tmp_path / 'nowhere.flags'}", "--sample_latent_dims=")
  assert result.returncode != 0
  assert "Preset flagfiles not found" in result.stderr


def test_compare_runner_trains_each_variant_and_draws_every_figure(tmp_path):
  family = "experiments/configs/family"
  result = run_runner(
    "compare",
    f"--variants={family}/vae_latent2.flags,{family}/autoencoder_latent2.flags",
    *DIGITS_FLAGS,
    "--num_epochs=1",
    "--num_images=4",
    "--log_likelihood_samples=10",
    f"--workdir={tmp_path}",
  )
  assert result.returncode == 0, result.stderr[-3000:]
  rows = json.loads((tmp_path / "compare.json").read_text())
  assert [(r["variant"], r["algorithm"]) for r in rows] == [
    ("vae_latent2", "aevb"),
    ("autoencoder_latent2", "autoencoder"),
  ]
  # The command line's --dataset=digits overrides the variants' mnist.flags.
  assert all(r["dataset"] == "digits" and r["samples_seen"] == 1500 for r in rows)
  # The k-sample estimate of log p(x) beside the bounds, which differ by estimator.
  assert all(r["test_log_likelihood"] > r["test_bound"] for r in rows)
  assert "| test log p(x) |" in (tmp_path / "compare.md").read_text()
  for name in ("bounds", "samples", "reconstructions", "latents"):
    assert mpimg.imread(tmp_path / f"compare_{name}.png").shape[0] > 100


def test_one_run_runners_refuse_the_flags_they_would_ignore(tmp_path):
  """Fig. 3's and M2's runners train one run on one device: a sweep or extra
  seeds would be silently dropped, so they stop with one FATAL line."""
  for runner, flags, message in (
    (
      "figure3",
      ["--learning_rates=0.01,0.1"],
      "Fig. 3's runner trains one run at a time on one device; drop --learning_rates.",
    ),
    (
      "semi_supervised",
      ["--num_seeds=2", "--learning_rates=0.1,0.2"],
      "the M2 runner trains "
      "one run at a time on one device; drop --num_seeds and --learning_rates.",
    ),
  ):
    result = run_runner(
      f"{runner}",
      *DIGITS_FLAGS,
      *flags,
      f"--workdir={tmp_path / runner}",
      timeout=120,
    )
    assert result.returncode == 1, result.stderr[-2000:]
    assert f"FATAL: {message}" in result.stderr
    assert not (tmp_path / runner).exists()
