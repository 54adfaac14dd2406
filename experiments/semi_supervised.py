r"""Semi-supervised M2 (Kingma et al. 2014): `python -m experiments.semi_supervised [flags]`.

For each N of --num_labels, trains M2 (`vae_jax.models.m2`) with N
labelled training examples (N / 10 per class, drawn with --seed) and the
whole training set as the unlabelled set, then reports the test
classification error of q(y|x) next to the published M2 error (Kingma et al.
2014, Table 1). The model and optimiser flags are the shared ones
(`experiments.config_flags`; use the preset). Each run lives in
<workdir>/labels<N>: its metrics.jsonl and checkpoints, from which a rerun
resumes. Writes <workdir>/semi_supervised.md (the table), semi_supervised.json
and style_transfer.png (test digits' styles z, fixed, drawn with every label y: one panel per N).
With --nouse_unlabelled the same networks train on the labels alone: the
supervised baseline that M2's unlabelled bound should beat.

Examples:
  python -m experiments.semi_supervised --dataset=digits --num_labels=50 --num_epochs=100
  python -m experiments.semi_supervised --flagfile=experiments/configs/semi_supervised_mnist.flags \
      --tfds_manual_dir=../shared/data
"""

from __future__ import annotations

import os

import jax
import numpy as np
from absl import app, flags, logging

from experiments import config_flags, tables
from vae_jax.figures import plots
from vae_jax.inference import semi_supervised
from vae_jax.models import m2
from vae_jax.training import evaluation, memory
from vae_jax.training import semi_supervised as m2_training
from vae_jax.training.loop import LoopPlan
from vae_jax.training.run_dir import describe_parts, train_in_directory
from vae_jax.training.workdir_lock import prepare_workdir

# Kingma et al. 2014, Table 1, M2 on MNIST: test error (%) and its standard
# deviation over runs, by number of labels.
PUBLISHED_M2_ERROR = {100: (11.97, 1.71), 600: (4.94, 0.13), 1000: (3.60, 0.56), 3000: (3.92, 0.63)}

_NUM_LABELS = flags.DEFINE_list(
  "num_labels",
  ["100", "600", "1000", "3000"],
  "Labelled training examples per run, multiples of the number of classes.",
)
_ALPHA = flags.DEFINE_float(
  "alpha",
  0.1,
  "Weight of the labelled examples' classification loss per example: the "
  "paper's alpha / N (the paper: alpha = 0.1 N).",
)
_LABEL_INFERENCE = flags.DEFINE_enum(
  "label_inference",
  "enumerate",
  list(semi_supervised.LABEL_INFERENCES),
  "enumerate: sum over the labels y in the unlabelled bound (the paper); sample: one "
  "y ~ q(y|x) per example, score-function gradient with a batch baseline.",
)
_LABELLED_BATCH_SIZE = flags.DEFINE_integer(
  "labelled_batch_size", 100, "Labelled examples per step (at most all of them)."
)
_USE_UNLABELLED = flags.DEFINE_bool(
  "use_unlabelled",
  True,
  "False: leave the unlabelled bound U(x) out, so that q(y|x) learns "
  "from the labels alone: the supervised baseline, with M2's networks and steps.",
)
_EVAL_TRAIN_EXAMPLES = flags.DEFINE_integer(
  "eval_train_examples",
  10_000,
  "Training examples (the first this many) whose bounds and error are logged.",
  lower_bound=1,
)
_STYLE_EXAMPLES = flags.DEFINE_integer(
  "style_examples", 10, "Test examples in the style-transfer figure.", lower_bound=1
)

config_flags.require_positive_integers("num_labels", "100,600")


def train_with_labels(model, config, ss_config, run, dataset, num_labels, workdir):
  """Trains M2 with `num_labels` labels for run.num_epochs, evaluating and
  checkpointing every run.eval_every epochs; resumes from the last
  checkpoint. Returns (metrics records, final state)."""
  try:
    chosen = m2_training.select_labelled(
      dataset.train_labels, num_labels, dataset.num_classes, run.seed
    )
  except ValueError as error:
    raise SystemExit(f"FATAL: --num_labels={num_labels}: {error}") from None
  x_labelled = jax.device_put(dataset.train[chosen])
  y_labelled = jax.device_put(dataset.train_labels[chosen])
  unlabelled = jax.device_put(dataset.train)
  num_unlabelled = unlabelled.shape[0]
  evaluate = m2_training.make_evaluate(
    model, config.estimator, config.num_samples, run.eval_batch_size
  )
  eval_x = {"train": unlabelled[: _EVAL_TRAIN_EXAMPLES.value], "test": dataset.test}
  eval_y = {
    "train": dataset.train_labels[: _EVAL_TRAIN_EXAMPLES.value],
    "test": dataset.test_labels,
  }
  if config.dynamic_binarization:
    eval_x = evaluation.binarize_for_evaluation(eval_x)
  eval_key = jax.random.key(run.seed + 1)
  state = m2_training.init_state(model, config, jax.random.key(run.seed), num_unlabelled)
  epoch = m2_training.make_train_epoch(model, config, ss_config, num_labels, num_unlabelled)

  def score(state, epoch, outputs):
    del epoch  # the loop has checked every epoch's step metrics for NaN
    scores = {"objective": float(np.mean(outputs[-1]["objective"]))} if outputs else {}
    for name, x in eval_x.items():
      values = evaluate(state.params, x, eval_y[name], eval_key)
      scores.update(
        {f"{name}_{key}": float(evaluation.mean_nats(value)) for key, value in values.items()}
      )
    return scores

  plan = LoopPlan(
    num_epochs=run.num_epochs,
    steps_per_epoch=num_unlabelled // config.batch_size,
    batch_size=config.batch_size,
    evaluate_at=lambda epoch: epoch % run.eval_every == 0,
  )
  state, records = train_in_directory(
    workdir,
    describe_parts(
      m2=model, train=config, semi_supervised=ss_config, seed=run.seed, num_labels=num_labels
    ),
    state,
    epoch,
    (unlabelled, x_labelled, y_labelled),
    score,
    plan,
    keep_checkpoints=run.keep_checkpoints,
    epoch_parameter="num_samples" if config.num_samples > 1 else "batch_size",
    memory_checks={
      f"The evaluation (num_samples={config.num_samples})": memory.Program(
        evaluate, (state.params, eval_x["train"], eval_y["train"], eval_key), "num_samples"
      )
    },
    log=logging.info,
    setting_defaults=describe_parts(semi_supervised=m2_training.SemiSupervisedConfig()),
  )
  return records, state


def _published(dataset: str, num_labels: int) -> str:
  if dataset != "mnist" or num_labels not in PUBLISHED_M2_ERROR:
    return "-"
  mean, std = PUBLISHED_M2_ERROR[num_labels]
  return f"{mean:.2f} (± {std:.2f})"


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = config_flags.config_from_flags(default_workdir="runs/semi_supervised_{dataset}")
  config_flags.exit_if_ignored(config.run, "the M2 runner", uses_devices=False)
  if config.model.likelihood != "bernoulli":
    raise SystemExit(
      f"FATAL: M2 has a Bernoulli decoder; --likelihood={config.model.likelihood} is not supported."
    )
  # A ConfigError here ends the runner with one FATAL line naming the flag (run_main).
  m2_training.check_train_config(config.train)
  ss_config = m2_training.SemiSupervisedConfig(
    _ALPHA.value, _LABEL_INFERENCE.value, _LABELLED_BATCH_SIZE.value, _USE_UNLABELLED.value
  )
  dataset = config_flags.load_data(config.data)
  if not dataset.num_classes:
    raise SystemExit(
      f"FATAL: --dataset={dataset.name} has no labels; M2 needs a labelled "
      "data set (digits, mnist, fashion_mnist)."
    )
  model = m2.make_m2(
    dataset.data_dim,
    dataset.num_classes,
    config.model.latent_dim,
    hidden_sizes=config.model.hidden_sizes,
    activation=config.model.activation,
    init=config.model.init,
  )
  run, root = config.run, config.run.workdir
  prepare_workdir(root)
  style_x = dataset.test[: _STYLE_EXAMPLES.value]
  rows, panels = [], {}
  for num_labels in map(int, _NUM_LABELS.value):
    workdir = os.path.join(root, f"labels{num_labels}")
    logging.info(
      "M2 with %d labels on %s for %d epochs in %s",
      num_labels,
      dataset.name,
      run.num_epochs,
      workdir,
    )
    records, state = train_with_labels(
      model, config.train, ss_config, run, dataset, num_labels, workdir
    )
    last = records[-1]
    rows.append(
      {
        "num_labels": num_labels,
        "test_error_percent": 100 * last["test_error"],
        "epochs": last["epoch"],
        **tables.final_summary(records, "unlabelled_bound"),
      }
    )
    transfer = np.asarray(m2.style_transfer(model, state.params, style_x))
    images = np.concatenate([style_x[:, None], transfer], axis=1)
    panels[f"{num_labels} labels"] = images.reshape(-1, *dataset.image_shape)
  trained_on = "" if ss_config.use_unlabelled else " trained on the labels alone (no U(x))"
  table = tables.summary_table(
    f"M2 on {dataset.name}{trained_on}: test classification error of q(y|x), and the bound "
    "U(x) <= log p(x) (nats per example); published: Kingma et al. 2014, Table 1 (MNIST).",
    [
      ("labels", lambda r: r["num_labels"]),
      ("epochs", lambda r: r["epochs"]),
      ("test error %", lambda r: f"{r['test_error_percent']:.2f}"),
      ("published M2 error %", lambda r: _published(dataset.name, r["num_labels"])),
    ],
    rows,
    value="unlabelled_bound",
    value_header="U(x)",
  )
  tables.write_summary(root, "semi_supervised", table, rows)
  path = plots.plot_image_grids(
    panels,
    os.path.join(root, "style_transfer.png"),
    ncols=dataset.num_classes + 1,
    title="M2 style transfer: a test digit (left), then its style z drawn as y = 0, ..., 9",
  )
  print(table)
  logging.info("Wrote %s", path)


if __name__ == "__main__":
  config_flags.run_main(main)
