r"""Trains a VAE with AEVB: `python -m experiments.train [--flagfile=...] [--flags]`.

Examples:
  python -m experiments.train                                # digits, seconds on a CPU
  python -m experiments.train --flagfile=experiments/configs/mnist.flags
  python -m experiments.train --flagfile=experiments/configs/frey_face.flags

Rerunning the same command on the same --workdir resumes from its last
checkpoint. See README.md for the data sets and offline preparation.

Multi-host data-parallel training: start the same command on every host, with
--coordinator_address=<host 0>:<port> --num_processes=<hosts>
--process_id=<0, 1, ...> and --num_devices=0 (every device of every host).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import jax
import numpy as np
from absl import app, flags, logging

from vae_jax import data, estimators, experiment, models, posteriors, training

_DATASET = flags.DEFINE_enum("dataset", "digits", data.DATASETS, "Data set.")
_TFDS_DATA_DIR = flags.DEFINE_string(
    "tfds_data_dir", None,
    "Where TFDS keeps prepared data sets (default: $TFDS_DATA_DIR or ~/tensorflow_datasets).")
_TFDS_MANUAL_DIR = flags.DEFINE_string(
    "tfds_manual_dir", None,
    "Directory with the raw files, so TFDS prepares without network "
    "(default: $VAE_JAX_MANUAL_DIR).")
_ARRAYS_DIR = flags.DEFINE_string(
    "arrays_dir", None,
    "Directory of <dataset>.npz files written by experiments.export_arrays: read the data "
    "set from there, without TFDS or TensorFlow (default: $VAE_JAX_ARRAYS_DIR; unset: TFDS).")
_RESPLIT_SEED = flags.DEFINE_integer(
    "resplit_seed", None,
    "Pool the training and test examples and deal them out again at random with this seed, "
    "keeping the sizes (vae_jax.data.resplit); unset: the data set's own split.")
_LATENT_DIM = flags.DEFINE_integer("latent_dim", 20, "Latent dimensions J.", lower_bound=1)
_HIDDEN_SIZES = flags.DEFINE_list(
    "hidden_sizes", ["500"], "Hidden layer widths of encoder and decoder, comma-separated.")
_ACTIVATION = flags.DEFINE_enum(
    "activation", "tanh", list(models.ACTIVATIONS), "Hidden-layer activation.")
_LIKELIHOOD = flags.DEFINE_enum(
    "likelihood", None, list(models.LIKELIHOODS),
    "Decoder p(x|z); default: categorical with --num_categories, else the data set's "
    "(Gaussian for frey_face, else Bernoulli).")
_NUM_CATEGORIES = flags.DEFINE_integer(
    "num_categories", None,
    "K for the categorical decoder: grey levels are quantised to K equal-width bins of "
    "[0, 1] (vae_jax.data.quantize).", lower_bound=2)
_INIT = flags.DEFINE_enum(
    "init", "paper", list(models.INITIALIZATIONS),
    "paper: all parameters from N(0, 0.01^2); glorot: Glorot & Bengio's uniform kernels, "
    "zero biases (the IWAE paper); flax: LeCun-normal kernels, zero biases.")
_MIN_VARIANCE = flags.DEFINE_float(
    "min_variance", 0.0, "Gaussian decoder variance floor.", lower_bound=0.0)
_BINARIZATION = flags.DEFINE_enum(
    "binarization", None, ["dynamic", "none"],
    "dynamic: re-draw binary pixels from grey levels every epoch; none: train on the "
    "values as they are. Default: dynamic for mnist and fashion_mnist.")
_ALGORITHM = flags.DEFINE_enum(
    "algorithm", "aevb", list(training.ALGORITHMS),
    "aevb: ascend the bound of --estimator; wake_sleep: the paper's baseline (Hinton et "
    "al. 1995) with the same networks; autoencoder: a deterministic autoencoder, "
    "log p(x | z = encoder mean), no noise, no KL. Both report the bound of --estimator.")
_ESTIMATOR = flags.DEFINE_enum(
    "estimator", "B", list(estimators.ESTIMATORS),
    "Bound estimator: A, B, iwae, or A's gradient variants stl, score, score_baseline.")
_KL_WEIGHT = flags.DEFINE_float(
    "kl_weight", 1.0,
    "beta of the beta-VAE objective E_q log p(x|z) - beta KL (Higgins et al. 2017), for "
    "--estimator=A or B: training ascends it, the reported bound stays the ELBO; 1 is the "
    "ELBO.", lower_bound=0.0)
_POSTERIOR = flags.DEFINE_enum(
    "posterior", "gaussian", list(posteriors.POSTERIORS),
    "Family of q(z|x), location-scale around the encoder's outputs (vae_jax.posteriors); "
    "all but gaussian need --estimator other than B.")
_STUDENT_T_DOF = flags.DEFINE_float(
    "student_t_dof", 5.0, "Degrees of freedom of --posterior=student_t.", lower_bound=0.0)
_NUM_SAMPLES = flags.DEFINE_integer(
    "num_samples", 1, "L, samples of z per example.", lower_bound=1)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 100, "Minibatch size M.", lower_bound=1)
_OPTIMIZER = flags.DEFINE_enum(
    "optimizer", "adagrad", list(training.OPTIMIZERS), "Optimiser (the paper: adagrad).")
_LEARNING_RATE = flags.DEFINE_float(
    "learning_rate", 0.02, "Step size; with a schedule, its starting value.", lower_bound=0.0)
_LEARNING_RATE_SCHEDULE = flags.DEFINE_enum(
    "learning_rate_schedule", "constant", list(training.LEARNING_RATE_SCHEDULES),
    "constant: --learning_rate throughout; iwae: the IWAE paper's stages i = 0..7 of 3^i "
    "epochs at --learning_rate * 10^(-i/7) (3280 epochs), then the last rate.")
_ADAM_EPSILON = flags.DEFINE_float(
    "adam_epsilon", 1e-8, "Adam's epsilon (--optimizer=adam only; the IWAE paper: 1e-4).")
_ADAGRAD_INITIAL_ACCUMULATOR = flags.DEFINE_float(
    "adagrad_initial_accumulator", 0.0,
    "Adagrad's initial sum of squared gradients (classic Adagrad: 0; optax default: 0.1).",
    lower_bound=0.0)
_WEIGHT_PRIOR = flags.DEFINE_bool(
    "weight_prior", False, "Add the paper's N(0, I) prior on the parameters (weight decay).")
_NUM_EPOCHS = flags.DEFINE_integer("num_epochs", None, "Training budget in epochs.", lower_bound=1)
_NUM_TRAIN_SAMPLES = flags.DEFINE_integer(
    "num_train_samples", None,
    "Training budget in examples processed (the paper's x-axis), rounded up to whole epochs; "
    "replaces --num_epochs.", lower_bound=1)
_NUM_STEPS = flags.DEFINE_integer(
    "num_steps", None, "Training budget in minibatch updates, rounded up to whole epochs; "
    "replaces --num_epochs.",
    lower_bound=1)
_EVAL_EVERY = flags.DEFINE_integer(
    "eval_every", 10, "Evaluate, checkpoint and log every this many epochs.", lower_bound=1)
_KEEP_CHECKPOINTS = flags.DEFINE_integer(
    "keep_checkpoints", 3, "How many recent checkpoints to keep.", lower_bound=1)
_SEED = flags.DEFINE_integer("seed", 0, "Random seed.")
_NUM_SEEDS = flags.DEFINE_integer(
    "num_seeds", 1, "Independent runs with seeds --seed, --seed+1, ... trained together as "
    "one vmapped program; metrics.jsonl has each run's bounds.", lower_bound=1)
_LEARNING_RATES = flags.DEFINE_list(
    "learning_rates", [], "A learning-rate sweep: --num_seeds runs at each of these rates "
    "(replacing --learning_rate; with a schedule, the starting rates), trained together as "
    "one vmapped program; run i has rate i // num_seeds and seed --seed + i % num_seeds.")
_NUM_DEVICES = flags.DEFINE_integer(
    "num_devices", 1, "Devices of all processes to split each minibatch over "
    "(data-parallel); 0 means all. --batch_size must be a multiple of it, and it of "
    "--num_processes. With --num_seeds > 1 or --learning_rates: the devices (of one "
    "process) to split the runs over, a divisor of their number.", lower_bound=0)
_COORDINATOR_ADDRESS = flags.DEFINE_string(
    "coordinator_address", None,
    "host:port of process 0 for multi-process training (jax.distributed.initialize); "
    "every process gets the same value. Unset: a single process.")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Processes of a multi-process run (with --coordinator_address).",
    lower_bound=1)
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "This process's index in [0, --num_processes) "
    "(with --coordinator_address); process 0 writes the files and the log.",
    lower_bound=0)
_LOG_LIKELIHOOD_SAMPLES = flags.DEFINE_integer(
    "log_likelihood_samples", 0,
    "k of the importance-sampled test log-likelihood estimate (5000 is the standard "
    "metric) logged after the last epoch; 0 skips it.", lower_bound=0)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Run directory (default: runs/<dataset>); an existing run is resumed.")

DEFAULT_NUM_EPOCHS = 100

# --num_train_samples or --num_steps, when given, replace --num_epochs, so that
# a preset's --num_epochs can be overridden on the command line.
flags.register_multi_flags_validator(
    ["num_train_samples", "num_steps"],
    lambda values: sum(v is not None for v in values.values()) <= 1,
    message="Give at most one of --num_train_samples, --num_steps.",
)


@flags.multi_flags_validator(["coordinator_address", "num_processes", "process_id"])
def _check_distributed_flags(values) -> bool:
  """The three multi-process flags come together, with a valid process id."""
  address, num_processes, process_id = (
      values["coordinator_address"], values["num_processes"], values["process_id"])
  if address is None:
    if num_processes is not None or process_id is not None:
      raise flags.ValidationError(
          "--num_processes and --process_id need --coordinator_address.")
    return True
  host, _, port = address.rpartition(":")
  if not host or not port.isdigit():
    raise flags.ValidationError(
        f"--coordinator_address must be host:port, got {address!r}.")
  if num_processes is None or process_id is None:
    raise flags.ValidationError(
        "--coordinator_address needs --num_processes and --process_id.")
  if process_id >= num_processes:
    raise flags.ValidationError(
        f"--process_id={process_id} must be < --num_processes={num_processes}.")
  return True


flags.register_validator(
    "adam_epsilon", lambda epsilon: epsilon > 0, message="--adam_epsilon must be > 0.")


def _positive_numbers(values: list[str]) -> bool:
  try:
    return all(float(value) > 0 for value in values)
  except ValueError:
    return False


flags.register_validator(
    "learning_rates", _positive_numbers,
    message="--learning_rates must be comma-separated positive numbers, e.g. 0.01,0.02,0.05.")


flags.register_validator(
    "hidden_sizes",
    lambda sizes: bool(sizes) and all(s.isdigit() and int(s) > 0 for s in sizes),
    message="--hidden_sizes must be comma-separated positive integers, e.g. 500 or 200,200.",
)


def num_epochs_from_flags(num_train: int, batch_size: int) -> int:
  """The budget flags as whole epochs of `num_train` examples in minibatches of `batch_size`."""
  steps_per_epoch = num_train // batch_size
  if _NUM_TRAIN_SAMPLES.value is not None:
    return -(-_NUM_TRAIN_SAMPLES.value // (steps_per_epoch * batch_size))
  if _NUM_STEPS.value is not None:
    return -(-_NUM_STEPS.value // steps_per_epoch)
  return _NUM_EPOCHS.value or DEFAULT_NUM_EPOCHS


def tfds_dirs_from_flags() -> dict[str, str | None]:
  """--tfds_data_dir and --tfds_manual_dir as `data.load_dataset`'s data_dir and manual_dir."""
  return dict(data_dir=_TFDS_DATA_DIR.value, manual_dir=_TFDS_MANUAL_DIR.value)


def dataset_from_flags() -> data.Dataset:
  """Loads --dataset as the model reads it: grey levels, or with
  --num_categories=K their K-bin category indices (int32, `data.quantize`);
  with --resplit_seed, split at random. A data error becomes a one-line
  fatal message."""
  try:
    dataset = data.load_dataset(
        _DATASET.value, **tfds_dirs_from_flags(), arrays_dir=_ARRAYS_DIR.value)
  except data.DataError as error:
    raise SystemExit(f"FATAL: cannot load --dataset={_DATASET.value}: {error}") from None
  if _RESPLIT_SEED.value is not None:
    dataset = data.resplit(dataset, _RESPLIT_SEED.value)
  if _NUM_CATEGORIES.value is None:
    return dataset
  quantized = {split: None if x is None else np.asarray(data.quantize(x, _NUM_CATEGORIES.value))
               for split, x in (("train", dataset.train), ("test", dataset.test),
                                ("validation", dataset.validation))}
  return dataclasses.replace(dataset, **quantized)


def network_from_flags() -> dict[str, object]:
  """The network flags every model shares: latent_dim, hidden_sizes,
  activation and init, as keyword arguments."""
  return dict(latent_dim=_LATENT_DIM.value, hidden_sizes=[int(s) for s in _HIDDEN_SIZES.value],
              activation=_ACTIVATION.value, init=_INIT.value)


def run_from_flags(
    dataset: data.Dataset,
) -> tuple[models.VAE, training.TrainConfig, experiment.RunConfig]:
  """The model, optimiser settings and run settings the flags describe."""
  likelihood = _LIKELIHOOD.value or (
      "categorical" if _NUM_CATEGORIES.value else dataset.likelihood)
  if (likelihood == "categorical") != (_NUM_CATEGORIES.value is not None):
    raise SystemExit(
        "FATAL: --likelihood=categorical and --num_categories go together; got "
        f"--likelihood={likelihood}, --num_categories={_NUM_CATEGORIES.value}.")
  binarization = _BINARIZATION.value or (
      "dynamic" if _DATASET.value in ("mnist", "fashion_mnist") and likelihood == "bernoulli"
      else "none"
  )
  if binarization == "dynamic" and likelihood != "bernoulli":
    raise SystemExit("FATAL: --binarization=dynamic needs --likelihood=bernoulli.")
  if dataset.train.shape[0] < _BATCH_SIZE.value:
    raise SystemExit(
        f"FATAL: --batch_size={_BATCH_SIZE.value} exceeds the {dataset.train.shape[0]} "
        f"training examples of {_DATASET.value}.")
  model = models.make_vae(
      dataset.train.shape[1],
      likelihood=likelihood,
      min_variance=_MIN_VARIANCE.value,
      num_categories=_NUM_CATEGORIES.value,
      **network_from_flags(),
  )
  try:
    config = training.TrainConfig(
        algorithm=_ALGORITHM.value,
        estimator=_ESTIMATOR.value,
        num_samples=_NUM_SAMPLES.value,
        batch_size=_BATCH_SIZE.value,
        optimizer=_OPTIMIZER.value,
        learning_rate=_LEARNING_RATE.value,
        learning_rate_schedule=_LEARNING_RATE_SCHEDULE.value,
        adam_epsilon=_ADAM_EPSILON.value,
        adagrad_initial_accumulator=_ADAGRAD_INITIAL_ACCUMULATOR.value,
        weight_prior=_WEIGHT_PRIOR.value,
        dynamic_binarization=binarization == "dynamic",
        kl_weight=_KL_WEIGHT.value,
        posterior=_POSTERIOR.value,
        student_t_dof=_STUDENT_T_DOF.value,
    )
  except ValueError as error:
    raise SystemExit(f"FATAL: {error}") from None
  run = experiment.RunConfig(
      workdir=_WORKDIR.value or os.path.join("runs", _DATASET.value),
      num_epochs=num_epochs_from_flags(dataset.train.shape[0], config.batch_size),
      eval_every=_EVAL_EVERY.value,
      seed=_SEED.value,
      keep_checkpoints=_KEEP_CHECKPOINTS.value,
      num_devices=_NUM_DEVICES.value or jax.device_count(),
      num_runs=_NUM_SEEDS.value,
      learning_rates=tuple(map(float, _LEARNING_RATES.value)),
      log_likelihood_samples=_LOG_LIKELIHOOD_SAMPLES.value,
  )
  if run.num_devices > jax.device_count():
    raise SystemExit(
        f"FATAL: --num_devices={run.num_devices} exceeds the {jax.device_count()} "
        f"devices ({jax.process_count()} processes).")
  if run.multi_run and jax.process_count() > 1:
    raise SystemExit(
        "FATAL: --num_seeds > 1 and --learning_rates train in one process; drop "
        "--coordinator_address.")
  if run.multi_run and len(run.runs) % run.num_devices:
    raise SystemExit(
        f"FATAL: --num_devices={run.num_devices} must divide the {len(run.runs)} runs of "
        "--num_seeds and --learning_rates, which are split over the devices.")
  if not run.multi_run and _BATCH_SIZE.value % run.num_devices:
    raise SystemExit(
        f"FATAL: --batch_size={_BATCH_SIZE.value} is not a multiple of the "
        f"{run.num_devices} devices of --num_devices.")
  if run.num_devices % jax.process_count():
    raise SystemExit(
        f"FATAL: --num_devices={run.num_devices} is not a multiple of the "
        f"{jax.process_count()} processes; --num_devices=0 uses all "
        f"{jax.device_count()} devices.")
  return model, config, run


def exit_if_ignored(run: experiment.RunConfig, runner: str, uses_devices: bool) -> None:
  """Ends a runner that trains one run at a time (on one device unless
  `uses_devices`) with one FATAL line if flags ask for what it would ignore."""
  ignored = [flag for flag, asked in (
      ("--num_seeds", run.num_runs > 1),
      ("--learning_rates", bool(run.learning_rates)),
      ("--num_devices", run.num_devices > 1 and not uses_devices)) if asked]
  if ignored:
    raise SystemExit(f"FATAL: {runner} trains one run at a time"
                     + ("" if uses_devices else " on one device")
                     + f"; drop {' and '.join(ignored)}.")


def preset_name(path: str) -> str:
  """experiments/configs/mnist.flags -> mnist."""
  return os.path.splitext(os.path.basename(path))[0]


def apply_preset(preset: str, command_line: list[str]) -> None:
  """Sets the flags as if `preset` came first on `command_line` ([program, flags...]).

  The training flags start again from their defaults, which keeps one preset's
  settings (e.g. MNIST's dynamic binarisation) out of the next preset's runs.
  """
  for flag in flags.FLAGS.get_flags_for_module(__name__):
    flag.unparse()
  flags.FLAGS([command_line[0], f"--flagfile={preset}", *command_line[1:]])


def initialize_distributed_from_flags() -> None:
  """Joins the processes of a multi-process run; must precede any other JAX use.

  On CPU, the processes' collectives go through gloo, jax's default
  `jax_cpu_collectives_implementation` (jax 0.10).
  """
  if _COORDINATOR_ADDRESS.value is not None:
    jax.distributed.initialize(
        _COORDINATOR_ADDRESS.value,
        num_processes=_NUM_PROCESSES.value,
        process_id=_PROCESS_ID.value,
    )


def run_main(main: Callable[[list[str]], None]) -> None:
  """`app.run(main)` for a runner that trains: a divergence, or a work
  directory that holds a run with other settings, ends the process with one
  FATAL line and exit status 1, not a traceback, since the error's message
  already says what happened and what to do (the divergence's names the
  value, the epoch and the checkpoint that is kept for the rerun)."""

  def main_without_run_error_traceback(argv: list[str]) -> None:
    try:
      main(argv)
    except experiment.TrainingDivergedError as error:
      raise SystemExit(f"FATAL: training diverged. {error}") from None
    except experiment.RunSettingsMismatchError as error:
      raise SystemExit(f"FATAL: {error}") from None

  app.run(main_without_run_error_traceback)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  initialize_distributed_from_flags()
  # Every process loads the whole data set: the data is replicated on every device.
  dataset = dataset_from_flags()
  model, config, run = run_from_flags(dataset)
  # Before flags.txt is written: another run's directory keeps its own.
  experiment.check_run_settings(model, config, run)
  if jax.process_index() == 0:
    os.makedirs(run.workdir, exist_ok=True)
    with open(os.path.join(run.workdir, "flags.txt"), "w", encoding="utf-8") as f:
      f.write(flags.FLAGS.flags_into_string())
    logging.info("Training %s on %s (%d train / %d test) for %d epochs in %s",
                 model.likelihood, _DATASET.value, dataset.train.shape[0],
                 dataset.test.shape[0], run.num_epochs, run.workdir)
  experiment.train_and_evaluate(
      model, config, run, dataset.train, dataset.test, dataset.image_shape,
      log=logging.info,
  )


if __name__ == "__main__":
  run_main(main)
