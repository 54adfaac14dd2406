"""The one training loop: epochs of a compiled program, evaluations, hooks.

Every runner trains through `train_loop` (usually through
`vae_jax.training.run_dir.train_in_directory`, which resumes it from a work
directory). The loop counts in two units with one meaning everywhere:

  epoch  passes over the training set;
  step   minibatches processed (for AEVB, M2 and wake-sleep the optimiser
         updates; for MCEM the E-steps, each followed by its M-step updates).

Per epoch it calls the jitted `train_epoch(state, *epoch_args) -> (state,
outputs)` and checks the outputs (per-step bounds, objectives, acceptance
rates) for NaN; where `plan.evaluate_at(epoch)` holds, and after the last
epoch, it scores the state with `evaluate` and hands an `Evaluation` to each
hook in order. Checkpoints, metrics files, progress lines and figures are
hooks (`vae_jax.training.hooks`, `vae_jax.figures.run_figures`): the loop
itself reads and writes no file.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from vae_jax.training.interrupt import StopRequests, TrainingInterrupted


class TrainingDivergedError(RuntimeError):
  """A bound or score became NaN or infinite; the last checkpoint is kept."""


@dataclasses.dataclass(frozen=True)
class LoopPlan:
  """How long to train and when to evaluate.

  Attributes:
    num_epochs: train up to this many epochs in all (a resumed run trains
      the missing ones).
    steps_per_epoch: minibatches per epoch.
    batch_size: examples per minibatch of one run; "samples_seen" is
      step * batch_size.
    evaluate_at: which epochs are evaluated (epoch 0 is the initial state,
      evaluated unless the run is resumed); the last epoch always is.
    num_runs: runs trained together by one program; "examples_per_second"
      counts the examples of all of them.
  """

  num_epochs: int
  steps_per_epoch: int
  batch_size: int
  evaluate_at: Callable[[int], bool]
  num_runs: int = 1

  @property
  def total_steps(self) -> int:
    return self.num_epochs * self.steps_per_epoch


@dataclasses.dataclass(frozen=True)
class Evaluation:
  """What the hooks receive after an evaluation.

  Attributes:
    epoch, step: where training stands (see the module docstring).
    state: the state evaluated.
    record: the metrics record: "epoch", "samples_seen", the scores,
      "seconds" (training time so far, evaluations and compilation excluded)
      and "examples_per_second" (since the last evaluation; None at epoch 0).
    history: every record of the run up to this one, this one included, each
      with its "step".
  """

  epoch: int
  step: int
  state: Any
  record: dict[str, Any]
  history: tuple[dict[str, Any], ...]


class Hook:
  """Something the loop calls at its events; override what is needed."""

  def on_start(self) -> None:
    """Before the first evaluation or epoch (in a run directory: once it is
    locked and resumed)."""

  def on_evaluation(self, evaluation: Evaluation) -> None:
    """After each evaluation, in the order the hooks were given."""

  def on_end(self, state: Any, history: Sequence[dict[str, Any]]) -> None:
    """After the last epoch, with every record of the run ("step" included)."""


def check_finite(
  values: Any, epoch: int, last_step: int | None, run_name: str, kind: str = "training"
) -> None:
  """Raises TrainingDivergedError if a floating leaf of `values` (a pytree)
  is NaN or infinite, naming the value, the epoch and the state kept."""
  for path, value in jax.tree_util.tree_leaves_with_path(values):
    value = np.asarray(value)
    if np.issubdtype(value.dtype, np.floating) and not np.all(np.isfinite(value)):
      raise TrainingDivergedError(
        f"The {kind} value {jax.tree_util.keystr(path) or '(bound)'} became "
        f"{value[~np.isfinite(value)].flat[0]} in epoch {epoch}; stopping. The last good "
        f"checkpoint (step {last_step}) is kept in {run_name}: rerun with a lower learning "
        "rate to resume from it (the learning rate may change on resume), or start a new "
        "run with a variance floor (min_variance)."
      )


class _Round:
  """The epochs since the last evaluation: their outputs and training time."""

  def __init__(self):
    self.outputs: list[Any] = []
    self.seconds = 0.0


def train_loop(
  state: Any,
  train_epoch: Any,
  epoch_args: tuple[Any, ...],
  evaluate: Callable[[Any, int, list[Any]], dict[str, Any]],
  plan: LoopPlan,
  hooks: Sequence[Hook] = (),
  *,
  start_step: int = 0,
  resumed: bool = False,
  history: Sequence[dict[str, Any]] = (),
  run_name: str = "the run",
  log: Callable[[str], None] = print,
) -> tuple[Any, list[dict[str, Any]]]:
  """Trains from `start_step` to `plan.num_epochs` epochs.

  Args:
    state: the state to train (restored at `start_step` if `resumed`).
    train_epoch: a jitted `(state, *epoch_args) -> (state, outputs)`, or its
      compiled executable; a jitted one is compiled ahead, so that
      compilation is not counted as training time.
    epoch_args: its other arguments (the data, on device).
    evaluate: `(state, epoch, outputs of the epochs since the last
      evaluation) -> {name: scalar}`.
    plan: the budget and evaluation schedule.
    hooks: called at every evaluation and at the end.
    start_step, resumed, history: where a resumed run stands, and its
      records so far.
    run_name: how messages name the run (its work directory).
    log: receives the loop's own lines.

  Returns:
    (the final state, every record of the run, "step" included).

  Raises:
    TrainingDivergedError: an epoch's outputs or the scores became NaN or
      infinite; nothing is written for that evaluation.
  """
  run = _Run(evaluate, plan, list(hooks), list(history), run_name)
  for hook in run.hooks:
    hook.on_start()
  # Ctrl-C and SIGTERM are recorded, not raised: the epoch or evaluation in
  # flight finishes, its state is evaluated (and so saved), then the loop stops.
  with StopRequests() as stop:
    if not resumed and plan.evaluate_at(0):
      run.evaluate_state(state, 0, _Round())
    if stop.requested:
      raise run.interrupted(stop.requested, start_step // plan.steps_per_epoch)
    state = _train_epochs(state, train_epoch, epoch_args, run, start_step, resumed, stop, log)
  for hook in run.hooks:
    hook.on_end(state, run.history)
  return state, run.history


def _train_epochs(state, train_epoch, epoch_args, run, start_step, resumed, stop, log):
  """The epochs from `start_step` on; returns the final state."""
  plan = run.plan
  start_epoch = start_step // plan.steps_per_epoch
  if start_epoch >= plan.num_epochs:
    if resumed:
      log(f"{run.name} is already trained for {start_epoch} epochs; nothing to do.")
    return state
  if hasattr(train_epoch, "lower"):  # not compiled by the caller (train_in_directory does)
    started = time.perf_counter()
    train_epoch = train_epoch.lower(state, *epoch_args).compile()
    log(f"Compiled the training epoch in {time.perf_counter() - started:.1f} s.")
  current = _Round()
  for epoch in range(start_epoch + 1, plan.num_epochs + 1):
    started = time.perf_counter()
    state, outputs = jax.block_until_ready(train_epoch(state, *epoch_args))
    current.seconds += time.perf_counter() - started
    current.outputs.append(outputs)
    check_finite(outputs, epoch, run.last_step, run.name)
    if plan.evaluate_at(epoch) or epoch == plan.num_epochs or stop.requested:
      run.evaluate_state(state, epoch, current)
      current = _Round()
    if stop.requested:
      raise run.interrupted(stop.requested, epoch)
  return state


class _Run:
  """What the loop's evaluations share: the scoring, the plan, the hooks,
  the records so far and the training time they count."""

  def __init__(self, evaluate, plan: LoopPlan, hooks: list[Hook], history: list, name: str):
    self.evaluate = evaluate
    self.plan = plan
    self.hooks = hooks
    self.history = history
    self.name = name
    self.seconds = history[-1]["seconds"] if history else 0.0

  @property
  def last_step(self) -> int | None:
    """The step of the last evaluated (and saved) state."""
    return self.history[-1]["step"] if self.history else None

  def evaluate_state(self, state: Any, epoch: int, current: _Round) -> None:
    """Scores the state, hands the record to the hooks and appends it to the history."""
    step = epoch * self.plan.steps_per_epoch
    scores = self.evaluate(state, epoch, current.outputs)
    check_finite(scores, epoch, self.last_step, self.name, "evaluated")
    self.seconds += current.seconds
    plan = self.plan
    examples = len(current.outputs) * plan.steps_per_epoch * plan.batch_size * plan.num_runs
    record = {
      "epoch": epoch,
      "samples_seen": step * plan.batch_size,
      **scores,
      "seconds": self.seconds,
      "examples_per_second": examples / current.seconds if current.outputs else None,
    }
    # Appended first, so that the hooks see it; a hook that fails ends the run,
    # and this history with it.
    self.history.append({"step": step, **record})
    evaluation = Evaluation(epoch, step, state, record, tuple(self.history))
    for hook in self.hooks:
      hook.on_evaluation(evaluation)

  def interrupted(self, signal_name: str, epoch: int) -> TrainingInterrupted:
    saved = (
      f"the state of epoch {epoch} (step {self.last_step}) is saved"
      if self.last_step is not None
      else "nothing was saved"
    )
    return TrainingInterrupted(
      signal_name,
      f"Stopped by {signal_name} after epoch {epoch} of {self.name}: {saved}; rerun the same "
      "command to resume.",
    )
