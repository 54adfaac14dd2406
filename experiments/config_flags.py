"""The flags every runner shares, parsed once into frozen configs.

Every runner (`experiments.train`, `figure2`, `figure3`, `figure45`,
`compare`, `semi_supervised`, `estimator_variance`) defines only its own
flags; these are the data, model, optimiser and run flags they all read.
`config_from_flags` turns them into an `ExperimentConfig` of the library's
frozen dataclasses, checked once: a bad value ends the runner with one FATAL
line naming the flag. A sweep varies the configs with `dataclasses.replace`;
a preset (a flagfile) is parsed into a config of its own by `preset_config`,
leaving the process's flags as they are.
"""

from __future__ import annotations

import copy
import dataclasses
import errno
import math
import os
import sys
from collections.abc import Callable

import jax
import numpy as np
from absl import app, flags

from vae_jax import data
from vae_jax.errors import ConfigError
from vae_jax.math import estimators, posteriors
from vae_jax.models import vae as vae_models
from vae_jax.training import run as run_lib
from vae_jax.training import state as state_lib
from vae_jax.training.checkpoints import UnreadableCheckpointError
from vae_jax.training.interrupt import TrainingInterrupted, exit_status
from vae_jax.training.loop import TrainingDivergedError
from vae_jax.training.run_dir import RunFormatError, RunSettingsMismatchError
from vae_jax.training.workdir_lock import RunDirectoryError

flags.DEFINE_enum("dataset", "digits", data.DATASETS, "Data set.")
flags.DEFINE_string(
  "tfds_data_dir",
  None,
  "Where TFDS keeps prepared data sets (default: $TFDS_DATA_DIR or ~/tensorflow_datasets).",
)
flags.DEFINE_string(
  "tfds_manual_dir",
  None,
  "Directory with the raw files, so TFDS prepares without network (default: $VAE_JAX_MANUAL_DIR).",
)
flags.DEFINE_string(
  "arrays_dir",
  None,
  "Directory of <dataset>.npz files written by experiments.export_arrays: read the data "
  "set from there, without TFDS or TensorFlow (default: $VAE_JAX_ARRAYS_DIR; unset: TFDS).",
)
flags.DEFINE_integer(
  "resplit_seed",
  None,
  "Pool the training and test examples and deal them out again at random with this seed, "
  "keeping the sizes (vae_jax.data.resplit); unset: the data set's own split.",
)
flags.DEFINE_integer("latent_dim", 20, "Latent dimensions J.")
flags.DEFINE_list(
  "hidden_sizes", ["500"], "Hidden layer widths of encoder and decoder, comma-separated."
)
flags.DEFINE_integer(
  "stochastic_layers",
  1,
  "1: the VAE; 2: the IWAE paper's two stochastic layers, h1 of --latent_dim units next "
  "to x and h2 of --top_latent_dim units above it (vae_jax.TwoLayerVAE).",
)
flags.DEFINE_integer(
  "top_latent_dim", 50, "--stochastic_layers=2: units of the top layer h2 (the IWAE paper: 50)."
)
flags.DEFINE_list(
  "top_hidden_sizes",
  ["100", "100"],
  "--stochastic_layers=2: hidden widths of q(h2|h1) and p(h1|h2) (the IWAE paper: 100,100).",
)
flags.DEFINE_enum("activation", "tanh", list(vae_models.ACTIVATIONS), "Hidden-layer activation.")
flags.DEFINE_enum(
  "likelihood",
  None,
  list(vae_models.LIKELIHOODS),
  "Decoder p(x|z); default: categorical with --num_categories, else the data set's "
  "(Gaussian for frey_face, else Bernoulli).",
)
flags.DEFINE_integer(
  "num_categories",
  None,
  "K for the categorical decoder: grey levels are quantised to K equal-width bins of "
  "[0, 1] (vae_jax.data.quantize).",
)
flags.DEFINE_enum(
  "init",
  "paper",
  list(vae_models.INITIALIZATIONS),
  "paper: all parameters from N(0, 0.01^2); glorot: Glorot & Bengio's uniform kernels, "
  "zero biases (the IWAE paper); flax: LeCun-normal kernels, zero biases.",
)
flags.DEFINE_float("min_variance", 0.0, "Gaussian decoder variance floor.")
flags.DEFINE_enum(
  "encoder_variance",
  "logvar",
  list(vae_models.VARIANCE_HEADS),
  "What q's second head outputs: logvar (log sigma^2) or log_std (log sigma, as the IWAE "
  "code's sigma = exp(linear(h))): the same q, moved twice as far in log sigma^2 per "
  "Adam step with log_std.",
)
flags.DEFINE_enum(
  "decoder_bias",
  "init",
  list(vae_models.DECODER_BIASES),
  "Bernoulli decoder's initial output bias: as --init says, or data_mean: the logit of "
  "the training set's mean pixel (clipped to [0.001, 0.999]; the IWAE code's).",
)
flags.DEFINE_enum(
  "binarization",
  None,
  ["dynamic", "none"],
  "dynamic: re-draw binary pixels from grey levels every epoch; none: train on the "
  "values as they are. Default: dynamic for mnist and fashion_mnist.",
)
flags.DEFINE_enum(
  "algorithm",
  "aevb",
  list(state_lib.ALGORITHMS),
  "aevb: ascend the bound of --estimator; wake_sleep: the paper's baseline (Hinton et "
  "al. 1995) with the same networks; autoencoder: a deterministic autoencoder, "
  "log p(x | z = encoder mean), no noise, no KL. Both report the bound of --estimator.",
)
flags.DEFINE_enum(
  "estimator",
  "B",
  list(estimators.ESTIMATOR_NAMES),
  "Bound estimator: A, B, iwae; A's gradient variants stl, score, score_baseline; IWAE's "
  "dreg, iwae_stl, rws, rws_dreg; Rainforth et al.'s miwae, piwae (--num_groups) and "
  "ciwae (--ciwae_beta).",
)
flags.DEFINE_integer(
  "num_groups",
  1,
  "M of --estimator=miwae or piwae: the --num_samples L samples form M groups of K = L / M "
  "(MIWAE(M, K)); 1 for the other estimators.",
)
flags.DEFINE_float(
  "ciwae_beta",
  None,
  "beta of --estimator=ciwae, its weight of the ELBO in [0, 1]: beta ELBO + (1 - beta) IWAE.",
)
flags.DEFINE_float(
  "kl_weight",
  1.0,
  "beta of the beta-VAE objective E_q log p(x|z) - beta KL (Higgins et al. 2017), for "
  "--estimator=A or B: training ascends it, the reported bound stays the ELBO; 1 is the "
  "ELBO.",
)
flags.DEFINE_enum(
  "posterior",
  "gaussian",
  list(posteriors.POSTERIORS),
  "Family of q(z|x), location-scale around the encoder's outputs (vae_jax.math.posteriors); "
  "all but gaussian need --estimator other than B.",
)
flags.DEFINE_float("student_t_dof", 5.0, "Degrees of freedom of --posterior=student_t.")
flags.DEFINE_integer("num_samples", 1, "L, samples of z per example.")
flags.DEFINE_integer("batch_size", 100, "Minibatch size M.")
flags.DEFINE_enum(
  "optimizer",
  "adagrad",
  list(state_lib.OPTIMIZERS),
  "Optimiser (the paper: adagrad); iwae_code_adam: the Adam of the IWAE authors' code "
  "(vae_jax.training.iwae_code_adam).",
)
flags.DEFINE_float("learning_rate", 0.02, "Step size; with a schedule, its starting value.")
flags.DEFINE_enum(
  "learning_rate_schedule",
  "constant",
  list(state_lib.LEARNING_RATE_SCHEDULES),
  "constant: --learning_rate throughout; iwae: the IWAE paper's stages i = 0..7 of 3^i "
  "epochs at --learning_rate * 10^(-i/7) (3280 epochs), then the last rate.",
)
flags.DEFINE_float(
  "adam_epsilon",
  1e-8,
  "Adam's epsilon (--optimizer=adam or iwae_code_adam; the IWAE paper: 1e-4).",
)
flags.DEFINE_float(
  "adagrad_initial_accumulator",
  0.0,
  "Adagrad's initial sum of squared gradients (classic Adagrad: 0; optax default: 0.1).",
)
flags.DEFINE_bool(
  "weight_prior", False, "Add the paper's N(0, I) prior on the parameters (weight decay)."
)
flags.DEFINE_integer("num_epochs", None, "Training budget in epochs (default 100).")
flags.DEFINE_integer(
  "num_train_samples",
  None,
  "Training budget in examples processed (the paper's x-axis), rounded up to whole epochs; "
  "replaces --num_epochs.",
)
flags.DEFINE_integer(
  "num_steps",
  None,
  "Training budget in minibatch updates, rounded up to whole epochs; replaces --num_epochs.",
)
flags.DEFINE_integer("eval_every", 10, "Evaluate, checkpoint and log every this many epochs.")
flags.DEFINE_integer(
  "variance_every",
  0,
  "Every this many epochs (and at epoch 0), also record the training estimator's gradient "
  "variance and SNR, encoder's and decoder's, on --variance_examples training examples over "
  "--variance_draws draws of its noise (gradient_* in metrics.jsonl and TensorBoard); 0: never.",
)
flags.DEFINE_integer("variance_examples", 20, "Training examples of --variance_every.")
flags.DEFINE_integer("variance_draws", 100, "Noise draws per example of --variance_every.")
flags.DEFINE_integer("keep_checkpoints", 3, "How many recent checkpoints to keep.")
flags.DEFINE_integer("seed", 0, "Random seed.")
flags.DEFINE_integer(
  "num_seeds",
  1,
  "Independent runs with seeds --seed, --seed+1, ... trained together as "
  "one vmapped program; metrics.jsonl has each run's bounds.",
)
flags.DEFINE_list(
  "learning_rates",
  [],
  "A learning-rate sweep: --num_seeds runs at each of these rates "
  "(replacing --learning_rate; with a schedule, the starting rates), trained together as "
  "one vmapped program; run i has rate i // num_seeds and seed --seed + i % num_seeds.",
)
flags.DEFINE_integer(
  "num_devices",
  1,
  "Devices of all processes to split each minibatch over "
  "(data-parallel); 0 means all. --batch_size must be a multiple of it, and it of the "
  "number of processes. With --num_seeds > 1 or --learning_rates: the devices (of one "
  "process) to split the runs over, a divisor of their number.",
)
flags.DEFINE_integer(
  "log_likelihood_samples",
  0,
  "k of the importance-sampled test log-likelihood estimate (5000 is the standard "
  "metric) logged after the last epoch; 0 skips it.",
)
flags.DEFINE_list(
  "log_likelihood_epochs",
  [],
  "More epochs after which the run is evaluated and checkpointed, with that estimate too "
  "unless --log_likelihood_samples=0: e.g. the ends of the iwae schedule's stages. Those past "
  "the budget never come.",
)
flags.DEFINE_string(
  "workdir",
  None,
  "Run directory (default: runs/<dataset>, or the runner's own); an existing run is resumed.",
)

DEFAULT_NUM_EPOCHS = 100
# The library's parameter names that differ from the flags that set them.
_FLAG_OF_PARAMETER = {"num_runs": "num_seeds", "dynamic_binarization": "binarization"}


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Which data set, from where, and how the model reads it.

  Attributes:
    dataset: one of `vae_jax.data.DATASETS`.
    tfds_data_dir, tfds_manual_dir, arrays_dir: see `vae_jax.data.load_dataset`.
    resplit_seed: pool train and test and deal them out again with this seed.
    num_categories: quantise grey levels to this many categories.
  """

  dataset: str
  tfds_data_dir: str | None = None
  tfds_manual_dir: str | None = None
  arrays_dir: str | None = None
  resplit_seed: int | None = None
  num_categories: int | None = None


@dataclasses.dataclass(frozen=True)
class Budget:
  """A training budget in one of three units, as whole epochs of a data set."""

  num_epochs: int | None = None
  num_train_samples: int | None = None
  num_steps: int | None = None

  def __post_init__(self):
    given = {name: value for name, value in dataclasses.asdict(self).items() if value is not None}
    for name, value in given.items():
      if value < 1:
        raise ConfigError(name, f"{name} must be >= 1, got {value}.")
    if self.num_train_samples is not None and self.num_steps is not None:
      raise ConfigError("num_steps", "Give at most one of num_train_samples, num_steps.")

  def epochs(self, num_train: int, batch_size: int) -> int:
    """Whole epochs of `num_train` examples in minibatches of `batch_size`
    (num_train_samples and num_steps, rounded up, replace num_epochs)."""
    steps_per_epoch = num_train // batch_size
    if self.num_train_samples is not None:
      return math.ceil(self.num_train_samples / (steps_per_epoch * batch_size))
    if self.num_steps is not None:
      return math.ceil(self.num_steps / steps_per_epoch)
    return self.num_epochs or DEFAULT_NUM_EPOCHS


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
  """Everything the shared flags describe, checked."""

  data: DataConfig
  model: vae_models.ModelConfig
  train: state_lib.TrainConfig
  run: run_lib.RunConfig
  budget: Budget


def _parse_list(name: str, values: list[str], kind: type) -> tuple:
  try:
    return tuple(kind(value) for value in values)
  except ValueError:
    raise ConfigError(
      name, f"{name} must be comma-separated {kind.__name__}s, got {','.join(values)!r}."
    ) from None


def _model_config(fv: flags.FlagValues, spec: data.DatasetSpec) -> vae_models.ModelConfig:
  likelihood = fv.likelihood or ("categorical" if fv.num_categories else spec.likelihood)
  return vae_models.ModelConfig(
    latent_dim=fv.latent_dim,
    hidden_sizes=_parse_list("hidden_sizes", fv.hidden_sizes, int),
    activation=fv.activation,
    init=fv.init,
    likelihood=likelihood,
    num_categories=fv.num_categories,
    min_variance=fv.min_variance,
    encoder_variance=fv.encoder_variance,
    decoder_bias=fv.decoder_bias,
    stochastic_layers=fv.stochastic_layers,
    top_latent_dim=fv.top_latent_dim,
    top_hidden_sizes=_parse_list("top_hidden_sizes", fv.top_hidden_sizes, int),
  )


def _train_config(fv: flags.FlagValues, likelihood: str) -> state_lib.TrainConfig:
  binarization = fv.binarization or (
    "dynamic" if fv.dataset in ("mnist", "fashion_mnist") and likelihood == "bernoulli" else "none"
  )
  if binarization == "dynamic" and likelihood != "bernoulli":
    raise ConfigError(
      "dynamic_binarization",
      f"binarization=dynamic needs a Bernoulli likelihood, got {likelihood!r}.",
    )
  return state_lib.TrainConfig(
    algorithm=fv.algorithm,
    estimator=fv.estimator,
    num_samples=fv.num_samples,
    num_groups=fv.num_groups,
    ciwae_beta=fv.ciwae_beta,
    batch_size=fv.batch_size,
    optimizer=fv.optimizer,
    learning_rate=fv.learning_rate,
    learning_rate_schedule=fv.learning_rate_schedule,
    adam_epsilon=fv.adam_epsilon,
    adagrad_initial_accumulator=fv.adagrad_initial_accumulator,
    weight_prior=fv.weight_prior,
    dynamic_binarization=binarization == "dynamic",
    kl_weight=fv.kl_weight,
    posterior=fv.posterior,
    student_t_dof=fv.student_t_dof,
  )


def _check_devices(run: run_lib.RunConfig, batch_size: int) -> None:
  """The device settings against the devices and processes JAX sees."""
  if run.num_devices > jax.device_count():
    raise ConfigError(
      "num_devices",
      f"num_devices={run.num_devices} exceeds the "
      f"{jax.device_count()} devices ({jax.process_count()} processes).",
    )
  if run.num_devices % jax.process_count():
    raise ConfigError(
      "num_devices",
      f"num_devices={run.num_devices} is not a multiple of "
      f"the {jax.process_count()} processes; 0 uses all {jax.device_count()}.",
    )
  if run.multi_run and jax.process_count() > 1:
    raise ConfigError(
      "num_runs",
      "Several runs (num_seeds > 1, learning_rates) train in one "
      "process; drop --coordinator_address.",
    )
  if run.multi_run and len(run.runs) % run.num_devices:
    raise ConfigError(
      "num_devices",
      f"num_devices={run.num_devices} must divide the "
      f"{len(run.runs)} runs, which are split over the devices.",
    )
  if not run.multi_run and batch_size % run.num_devices:
    raise ConfigError(
      "num_devices",
      f"batch_size={batch_size} is not a multiple of the "
      f"{run.num_devices} devices it is split over.",
    )


def _build(fv: flags.FlagValues, default_workdir: str) -> ExperimentConfig:
  spec = data.dataset_spec(fv.dataset)
  model = _model_config(fv, spec)
  train = _train_config(fv, model.likelihood)
  num_train = spec.num_examples["train"]
  if train.batch_size > num_train:
    raise ConfigError(
      "batch_size",
      f"batch_size={train.batch_size} exceeds the {num_train} training examples of {fv.dataset}.",
    )
  budget = Budget(fv.num_epochs, fv.num_train_samples, fv.num_steps)
  run = run_lib.RunConfig(
    workdir=fv.workdir or default_workdir.format(dataset=fv.dataset),
    num_epochs=budget.epochs(num_train, train.batch_size),
    eval_every=fv.eval_every,
    seed=fv.seed,
    keep_checkpoints=fv.keep_checkpoints,
    num_devices=fv.num_devices or jax.device_count(),
    num_runs=fv.num_seeds,
    learning_rates=_parse_list("learning_rates", fv.learning_rates, float),
    log_likelihood_samples=fv.log_likelihood_samples,
    log_likelihood_epochs=_parse_list("log_likelihood_epochs", fv.log_likelihood_epochs, int),
    variance_every=fv.variance_every,
    variance_examples=fv.variance_examples,
    variance_draws=fv.variance_draws,
  )
  _check_devices(run, train.batch_size)
  data_config = DataConfig(
    fv.dataset,
    fv.tfds_data_dir,
    fv.tfds_manual_dir,
    fv.arrays_dir,
    fv.resplit_seed,
    fv.num_categories,
  )
  return ExperimentConfig(data_config, model, train, run, budget)


def config_from_flags(
  flag_values: flags.FlagValues = flags.FLAGS, default_workdir: str = "runs/{dataset}"
) -> ExperimentConfig:
  """The shared flags as configs, checked once; a bad value ends the process
  with one FATAL line naming its flag. `default_workdir` ("{dataset}" is
  filled in) is used without --workdir."""
  try:
    return _build(flag_values, default_workdir)
  except ConfigError as error:
    raise fatal_config_error(error, flag_values) from None


def fatal_config_error(
  error: ConfigError,
  flag_values: flags.FlagValues = flags.FLAGS,
  flag_of: dict[str, str] | None = None,
) -> SystemExit:
  """The one FATAL line for a library setting, naming the flag that sets it:
  the parameter's own name, unless `flag_of` (a runner's own flags) or the
  shared flags' table maps it to another."""
  flag = {**_FLAG_OF_PARAMETER, **(flag_of or {})}.get(error.parameter, error.parameter)
  named = f"--{flag}: " if flag in flag_values else ""
  return SystemExit(f"FATAL: {named}{error}")


def preset_config(
  preset: str, command_line: list[str], default_workdir: str = "runs/{dataset}"
) -> ExperimentConfig:
  """The config of `preset` (a flagfile) read as if it came first on
  `command_line` ([program, flags...]): defaults, then the preset, then the
  command line. Parsed into a copy of the flags, so that one preset's
  settings never reach another's runs."""
  flag_values = copy.deepcopy(flags.FLAGS)
  flag_values.unparse_flags()
  flag_values([command_line[0], f"--flagfile={preset}", *command_line[1:]])
  return config_from_flags(flag_values, default_workdir)


def preset_name(path: str) -> str:
  """experiments/configs/mnist.flags -> mnist."""
  return os.path.splitext(os.path.basename(path))[0]


def load_data(config: DataConfig) -> data.Dataset:
  """The data set as the model reads it: grey levels, or with num_categories
  their category indices (int32, `data.quantize`); split again with
  resplit_seed. A data error ends the process with one FATAL line."""
  try:
    dataset = data.load_dataset(
      config.dataset,
      data_dir=config.tfds_data_dir,
      manual_dir=config.tfds_manual_dir,
      arrays_dir=config.arrays_dir,
    )
  except data.DataError as error:
    raise SystemExit(f"FATAL: cannot load --dataset={config.dataset}: {error}") from None
  if config.resplit_seed is not None:
    dataset = data.resplit(dataset, config.resplit_seed)
  if config.num_categories is None:
    return dataset
  quantized = {
    split: None if x is None else np.asarray(data.quantize(x, config.num_categories))
    for split, x in (
      ("train", dataset.train),
      ("test", dataset.test),
      ("validation", dataset.validation),
    )
  }
  return dataclasses.replace(dataset, **quantized)


def make_model(config: ExperimentConfig, dataset: data.Dataset) -> vae_models.VAE:
  """The VAE of `config.model` for the data set's examples (whose training
  set sets the decoder's initial bias with --decoder_bias=data_mean)."""
  return vae_models.vae_from_config(dataset.data_dim, config.model, dataset.train)


def require_positive_integers(name: str, example: str, allow_empty: bool = False) -> None:
  """Registers the validator of a list flag of positive integers (--sample_counts,
  --latent_dims, ...): a bad value stops the runner at start with one line."""
  flags.register_validator(
    name,
    lambda values: (
      (allow_empty or bool(values)) and all(v.isdigit() and int(v) > 0 for v in values)
    ),
    message=f"--{name} must be comma-separated positive integers, e.g. {example}.",
  )


def exit_if_ignored(run: run_lib.RunConfig, runner: str, uses_devices: bool) -> None:
  """Ends a runner that trains one run at a time (on one device unless
  `uses_devices`) with one FATAL line if flags ask for what it would ignore."""
  ignored = [
    flag
    for flag, asked in (
      ("--num_seeds", run.num_runs > 1),
      ("--learning_rates", bool(run.learning_rates)),
      ("--num_devices", run.num_devices > 1 and not uses_devices),
    )
    if asked
  ]
  if ignored:
    raise SystemExit(
      f"FATAL: {runner} trains one run at a time"
      + ("" if uses_devices else " on one device")
      + f"; drop {' and '.join(ignored)}."
    )


def run_main(main: Callable[[list[str]], None]) -> None:
  """`app.run(main)` for a runner that trains: every stop a user can cause or
  meet ends the process with one line and a non-zero exit status, not a
  traceback, since the error's message already says what happened and what
  to do: a divergence, a stop by Ctrl-C or SIGTERM (after saving; the exit
  status is the shell's 128 + the signal), a work directory that is unusable,
  busy, holds a run with other settings or in an old layout, a bad setting,
  and a failed read or write (a full disk, say)."""

  def main_without_traceback(argv: list[str]) -> None:
    try:
      main(argv)
    except TrainingDivergedError as error:
      raise SystemExit(f"FATAL: training diverged. {error}") from None
    except TrainingInterrupted as error:
      print(str(error), file=sys.stderr)
      raise SystemExit(error.exit_status) from None
    except KeyboardInterrupt:
      # Outside the loop (loading, compiling, drawing): what was saved before is kept.
      print(
        "Interrupted outside training; the run directory keeps what it had saved.", file=sys.stderr
      )
      raise SystemExit(exit_status("SIGINT")) from None
    except (
      RunSettingsMismatchError,
      RunFormatError,
      RunDirectoryError,
      UnreadableCheckpointError,
    ) as error:
      raise SystemExit(f"FATAL: {error}") from None
    except ConfigError as error:
      raise fatal_config_error(error) from None
    except OSError as error:
      raise SystemExit(f"FATAL: {_describe_os_error(error)}") from None
    except jax.errors.JaxRuntimeError as error:
      if "RESOURCE_EXHAUSTED" not in str(error):
        raise
      # What the start-up check (vae_jax.training.memory) could not foresee.
      raise SystemExit(
        "FATAL: out of memory while training or evaluating; the last checkpoint is kept: "
        "lower --batch_size or --num_samples (or free memory), then rerun to resume."
      ) from None

  app.run(main_without_traceback)


def _describe_os_error(error: OSError) -> str:
  """One line for a failed read or write: what, where, and the next step."""
  code = errno.errorcode.get(error.errno, "") if error.errno else ""
  where = f" ({error.filename})" if error.filename else ""
  advice = {
    "ENOSPC": "free disk space, then rerun the same command to resume",
    "EDQUOT": "free space within your quota, then rerun the same command to resume",
  }
  return (
    f"{error.strerror or error}{where}{f' [{code}]' if code else ''}: "
    + advice.get(code, "fix the cause, then rerun the same command to resume")
    + "."
  )
