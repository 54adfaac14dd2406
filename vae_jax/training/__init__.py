"""Training, in modules of one job each (a module imports only those above it):

  iwae_code_adam   the IWAE authors' code's Adam, an optax transformation
  state        TrainConfig, TrainState, the optimiser and its schedule
  objectives   what a step ascends besides the bound; the weight prior
  parallel     meshes, replicated trees, runs split over devices
  epoch        the jitted step and the one scanned-epoch builder (AEVB, wake-sleep)
  mcem         Monte Carlo EM's state and step (App. E)
  semi_supervised   M2's state, step and evaluation
  evaluation   scoring whole data sets in one compiled program
  checkpoints, metrics, progress   orbax checkpoints, metrics writers, progress lines
  workdir_lock, interrupt, memory   one writer per directory; stops on Ctrl-C / SIGTERM;
               whether a program fits in memory
  loop         the one training loop and its hook interface
  hooks        its checkpoint, metrics and progress hooks
  run_dir      a run's work directory: settings, resume, `train_in_directory`
  run          RunConfig and `train_and_evaluate`, a whole VAE run

Training knows nothing of flags; `experiments/` turns flags into these
configs. The names below are the ones most callers need.
"""

from vae_jax.training.epoch import gather_minibatches, make_train_epoch, make_train_step, plan_epoch
from vae_jax.training.evaluation import (
  binarize_for_evaluation,
  make_evaluate,
  map_in_batches,
  mean_nats,
)
from vae_jax.training.loop import Evaluation, Hook, LoopPlan, TrainingDivergedError, train_loop
from vae_jax.training.parallel import make_mesh, replicate, shard_runs
from vae_jax.training.run import RunConfig, describe, host_params, train_and_evaluate
from vae_jax.training.run_dir import (
  RunFormatError,
  RunSettingsMismatchError,
  describe_parts,
  train_in_directory,
)
from vae_jax.training.state import (
  ALGORITHMS,
  LEARNING_RATE_SCHEDULES,
  OPTIMIZERS,
  TrainConfig,
  TrainState,
  apply_gradients,
  init_train_state,
  init_train_states,
  iwae_learning_rate,
  iwae_stage_ends,
  make_optimizer,
  train_state_for,
)

__all__ = [
  "ALGORITHMS",
  "Evaluation",
  "Hook",
  "LEARNING_RATE_SCHEDULES",
  "LoopPlan",
  "OPTIMIZERS",
  "RunConfig",
  "RunFormatError",
  "RunSettingsMismatchError",
  "TrainConfig",
  "TrainState",
  "TrainingDivergedError",
  "apply_gradients",
  "binarize_for_evaluation",
  "describe",
  "describe_parts",
  "gather_minibatches",
  "host_params",
  "init_train_state",
  "init_train_states",
  "iwae_learning_rate",
  "iwae_stage_ends",
  "make_evaluate",
  "make_mesh",
  "make_optimizer",
  "make_train_epoch",
  "make_train_step",
  "map_in_batches",
  "mean_nats",
  "plan_epoch",
  "replicate",
  "shard_runs",
  "train_and_evaluate",
  "train_in_directory",
  "train_loop",
  "train_state_for",
]
