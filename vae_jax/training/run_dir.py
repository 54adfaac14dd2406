"""A run's work directory: its settings, checkpoints and metrics, and resuming from them.

    <workdir>/run_config.json          the settings that define the run (a resumed run must match)
    <workdir>/checkpoints/<step>/      orbax checkpoints of the state, named by minibatch step
    <workdir>/metrics.jsonl            one record per evaluation (`vae_jax.training.metrics`)
    <workdir>/events.out.tfevents.*    the same records for TensorBoard

`RunDirectory` checks the settings, restores the newest checkpoint with the
records up to it, and gives the loop (`vae_jax.training.loop.train_loop`) the
hooks that checkpoint the state and write the records at every evaluation.
`train_in_directory` is that loop run in a directory: what every runner calls.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax

from vae_jax.training import hooks as loop_hooks
from vae_jax.training import memory
from vae_jax.training.checkpoints import Checkpointer
from vae_jax.training.files import write_atomically
from vae_jax.training.loop import Hook, LoopPlan, train_loop
from vae_jax.training.metrics import (
  METRICS_FILENAME,
  JsonlWriter,
  TensorBoardWriter,
  read_metrics,
)
from vae_jax.training.state import TrainConfig
from vae_jax.training.workdir_lock import WorkdirLock, prepare_workdir

RUN_CONFIG_FILENAME = "run_config.json"
PENDING_RECORD_FILENAME = "pending_record.json"


class RunSettingsMismatchError(ValueError):
  """The work directory holds a run with other settings; nothing was changed."""


class RunFormatError(RuntimeError):
  """The work directory was written in a layout this version cannot resume."""


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  """{"train": {"learning_rate": 0.1}} -> {"train.learning_rate": 0.1}."""
  flat = {}
  for name, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f"{prefix}{name}."))
    else:
      flat[prefix + name] = value
  return flat


def _as_json(value: Any) -> Any:
  """`value` as it reads back from JSON (a tuple becomes a list)."""
  return json.loads(json.dumps(value))


def module_settings(module: nn.Module) -> dict[str, Any]:
  """A Flax module's fields, without its place in a parent."""
  return {
    field.name: getattr(module, field.name)
    for field in dataclasses.fields(module)
    if field.name not in ("parent", "name")
  }


def describe_parts(**parts: Any) -> dict[str, Any]:
  """The settings of a run, as they read back from JSON: a Flax module
  becomes its fields, any other dataclass `dataclasses.asdict`."""

  def settings_of(value):
    if isinstance(value, nn.Module):
      return module_settings(value)
    if dataclasses.is_dataclass(value):
      return dataclasses.asdict(value)
    return value

  return _as_json({name: settings_of(value) for name, value in parts.items()})


# The settings a resumed run may change: they steer the optimiser, not what is
# optimised, and neither the state's structure nor the meaning of a step depends
# on them. Everything else (model, data, objective, estimator, optimiser and its
# schedule, batch size, seed, runs) may not; budgets are no settings at all.
MAY_CHANGE_ON_RESUME = ("train.learning_rate", "train.adam_epsilon", "learning_rates")
SETTING_CHANGES_FILENAME = "setting_changes.jsonl"


def _may_change(name: str, saved: Any, now: Any) -> bool:
  if name not in MAY_CHANGE_ON_RESUME:
    return False
  if name == "learning_rates":  # a sweep's rates, one per group of runs: as many as before
    return isinstance(saved, list) and isinstance(now, list) and len(saved) == len(now)
  return True


def check_run_settings(
  workdir: str,
  settings: dict[str, Any],
  write: bool,
  defaults: dict[str, Any] | None = None,
) -> dict[str, tuple[Any, Any]]:
  """Raises RunSettingsMismatchError unless `workdir` is new or holds a run
  whose settings differ from these at most in `MAY_CHANGE_ON_RESUME`; a new
  run's are written if `write`.

  `defaults` (nested as `settings`): the values that settings added to the
  code after a run was saved had for that run, so that older runs still
  resume; a TrainConfig's defaults under "train" always count. The settings
  are compared as they read back from JSON.

  Returns:
    The settings that changed as they may: flat name -> (saved, now).
  """
  path = os.path.join(workdir, RUN_CONFIG_FILENAME)
  now = _flatten(_as_json(settings))
  if not os.path.exists(path):
    if write:
      _write_json(path, settings)
    return {}
  with open(path, encoding="utf-8") as f:
    saved = _flatten(json.load(f))
  defaults = _flatten(describe_parts(train=TrainConfig(), **(defaults or {})))
  saved = {**{name: value for name, value in defaults.items() if name in now}, **saved}
  changed = {
    name: (saved.get(name), now.get(name))
    for name in sorted(saved.keys() | now.keys())
    if saved.get(name) != now.get(name)
  }
  fixed = [
    f"{name}: saved {old!r}, now {new!r}"
    for name, (old, new) in changed.items()
    if not _may_change(name, old, new)
  ]
  if fixed:
    raise RunSettingsMismatchError(
      f"{workdir} holds a run with other settings; use another work directory or "
      f"the same settings (only {', '.join(MAY_CHANGE_ON_RESUME)} may change on resume). "
      "Differences:\n  " + "\n  ".join(fixed)
    )
  return changed


def _write_json(path: str, value: Any) -> None:
  write_atomically(path, json.dumps(_as_json(value), indent=2, sort_keys=True))


class RunDirectory:
  """A run's work directory, open for resuming and for writing.

  metrics.jsonl is kept the record of exactly the checkpointed history: a
  record is written only after its state's checkpoint, and staged before it
  (`PENDING_RECORD_FILENAME`), so that a run killed between the two writes
  the record when it resumes; records of a killed run after its newest
  checkpoint are dropped; a metrics.jsonl that lost records of the
  checkpointed history (removed, cut) is written again from the history kept
  in the newest checkpoint's directory; and a new run that finds the records (or
  TensorBoard events) of a run whose checkpoints are gone sets them aside
  instead of appending a second history to them.

  Several processes (`jax.distributed`) open the same directory, which must
  be on a file system they all see: all of them take part in the orbax
  checkpoints; only the one with `is_main` writes the other files.
  """

  def __init__(
    self,
    workdir: str,
    settings: dict[str, Any],
    *,
    setting_defaults: dict[str, Any] | None = None,
    keep_checkpoints: int = 3,
    is_main: bool = True,
    warn: Callable[[str], None] = print,
  ):
    self.workdir = workdir
    self._settings = settings
    self._setting_defaults = setting_defaults
    self._keep_checkpoints = keep_checkpoints
    self._is_main = is_main
    self._warn = warn
    self._changed: dict[str, tuple[Any, Any]] = {}
    self._checkpointer: Checkpointer | None = None
    self._writers: list[Any] = []

  def __enter__(self) -> RunDirectory:
    prepare_workdir(self.workdir)
    with contextlib.ExitStack() as stack:
      if self._is_main:
        # One writer per directory: a second run on it stops here, naming the holder.
        stack.enter_context(WorkdirLock(self.workdir))
      self._changed = check_run_settings(
        self.workdir, self._settings, self._is_main, self._setting_defaults
      )
      self._checkpointer = stack.enter_context(
        Checkpointer(os.path.join(self.workdir, "checkpoints"), max_to_keep=self._keep_checkpoints)
      )
      self._resources = stack.pop_all()
    return self

  def __exit__(self, *exc_info: object) -> None:
    for writer in self._writers:
      writer.close()
    self._resources.close()

  def _path(self, name: str) -> str:
    return os.path.join(self.workdir, name)

  def resume(self, template: Any) -> tuple[Any, int | None, list[dict[str, Any]]]:
    """(state, step, history): the newest checkpoint's state and minibatch
    step with the metrics records up to it, or (template, None, []) for a
    new run. `template` gives the state's structure and placement. Opens the
    metrics writers."""
    # A checkpoint whose files cannot be read is set aside (with a warning), and
    # the run resumes from the newest readable one.
    state, step = self._checkpointer.restore_newest_readable(template, self._warn)
    history = self._reconcile_records(step) if self._is_main else []
    if step is not None and self._changed and self._is_main:
      self._record_setting_changes(step)
    return state, step, history

  def _reconcile_records(self, step: int | None) -> list[dict[str, Any]]:
    """Makes metrics.jsonl the records of the checkpoints up to `step` and
    opens the writers; returns those records."""
    if step is None:
      self._set_aside_orphans()
    else:
      self._restore_lost_records(step)
    jsonl = JsonlWriter(self.workdir, resume_step=step)
    history = read_metrics(jsonl.path) if step is not None else []
    _check_counted_in_steps(self.workdir, history)
    pending = self._read_pending()
    recorded = history and history[-1]["step"] == step
    if step is not None and pending is not None and pending["step"] == step and not recorded:
      # Killed after the checkpoint, before its record: write it now.
      jsonl.write(step, pending["record"])
      history.append({"step": step, **pending["record"]})
    self._writers = [jsonl, TensorBoardWriter(self.workdir, resume_step=step)]
    return history

  def _restore_lost_records(self, step: int) -> None:
    """Writes metrics.jsonl again from the history kept with the checkpoint of
    `step` if it lacks any of those records (a removed or cut file)."""
    path = os.path.join(self._checkpointer.directory, str(step), loop_hooks.HISTORY_FILENAME)
    if not os.path.exists(path):
      return  # written before 0.2, or killed before it: the pending record covers the last
    kept = read_metrics(path)
    metrics_path = self._path(METRICS_FILENAME)
    present = read_metrics(metrics_path) if os.path.exists(metrics_path) else []
    steps = [record["step"] for record in present if record["step"] <= step]
    if steps == [record["step"] for record in kept]:
      return
    write_atomically(metrics_path, "".join(json.dumps(record) + "\n" for record in kept))
    self._warn(
      f"{metrics_path} lacked records of the checkpointed history ({len(steps)} of "
      f"{len(kept)}); wrote it again from {path}."
    )

  def _read_pending(self) -> dict[str, Any] | None:
    try:
      with open(self._path(PENDING_RECORD_FILENAME), encoding="utf-8") as f:
        return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
      return None  # none staged, or a kill while staging (its checkpoint was not saved)

  def _set_aside_orphans(self) -> None:
    """Moves the records and events of a run whose checkpoints are gone into
    orphaned-<time>/, so that the new run's history does not continue them."""
    names = [
      name
      for name in sorted(os.listdir(self.workdir))
      if name in (METRICS_FILENAME, PENDING_RECORD_FILENAME, SETTING_CHANGES_FILENAME)
      or name.startswith("events.out.tfevents.")
    ]
    if not names:
      return
    aside = self._path(time.strftime("orphaned-%Y%m%d-%H%M%S"))
    os.makedirs(aside, exist_ok=True)
    for name in names:
      os.replace(self._path(name), os.path.join(aside, name))
    self._warn(
      f"{self.workdir} has no checkpoint but holds the records of an earlier run: moved "
      f"{', '.join(names)} to {aside}; this run starts a new history."
    )

  def _record_setting_changes(self, step: int) -> None:
    """Saves the settings the resumed run changed: run_config.json takes the
    new values, setting_changes.jsonl keeps the old ones and the step."""
    changes = {name: [old, new] for name, (old, new) in self._changed.items()}
    with open(self._path(SETTING_CHANGES_FILENAME), "a", encoding="utf-8") as f:
      f.write(json.dumps({"step": step, "changes": changes}) + "\n")
    _write_json(self._path(RUN_CONFIG_FILENAME), self._settings)
    self._warn(
      f"Resuming {self.workdir} at step {step} with changed settings: "
      + "; ".join(f"{name} {old!r} -> {new!r}" for name, (old, new) in self._changed.items())
      + f" (kept in {SETTING_CHANGES_FILENAME})."
    )

  def hooks(self) -> list[Hook]:
    """Checkpoint, then record, every evaluation (see the class docstring)."""
    return [
      loop_hooks.CheckpointAndRecordHook(
        self._checkpointer, self._writers, self._path(PENDING_RECORD_FILENAME)
      )
    ]


def _check_counted_in_steps(workdir: str, history: Sequence[dict[str, Any]]) -> None:
  """Raises RunFormatError for a run whose records lack "epoch": before
  version 0.2 the runs of figure3, M2 and the variance stages counted their
  checkpoints and "step" in epochs, which this loop would misread."""
  if history and "epoch" not in history[-1]:
    raise RunFormatError(
      f"{workdir} was written by vae-jax 0.1, whose Fig. 3 and M2 runs counted checkpoints "
      "in epochs; it cannot be resumed: move it aside or use another work directory."
    )


def train_in_directory(
  workdir: str,
  settings: dict[str, Any],
  state: Any,
  train_epoch: Any,
  epoch_args: tuple[Any, ...],
  evaluate: Callable[..., dict[str, Any]],
  plan: LoopPlan,
  *,
  hooks: Sequence[Hook] = (),
  keep_checkpoints: int = 3,
  setting_defaults: dict[str, Any] | None = None,
  memory_checks: Mapping[str, memory.Program] | None = None,
  epoch_parameter: str = "batch_size",
  log: Callable[[str], None] = print,
) -> tuple[Any, list[dict[str, Any]]]:
  """The resumable training loop in `workdir`: what every runner calls.

  First refuses settings that cannot fit (`memory.check_fits`: the epoch,
  whose size `epoch_parameter` sets, and the runner's `memory_checks`, e.g.
  its evaluations), before anything is written. Checks `settings` against
  the run in `workdir` (see `check_run_settings`),
  resumes from its newest checkpoint (`state` is the template), then runs
  `train_loop` with the directory's checkpoint and metrics hooks, a progress
  line per evaluation, and `hooks`. With several processes, process 0 alone
  writes files other than checkpoints and logs.

  Returns:
    (the final state, every metrics record of the run).
  """
  is_main = jax.process_index() == 0
  log = log if is_main else (lambda line: None)
  # Compiled once, here: the memory check reads the program the loop then runs.
  started = time.perf_counter()
  train_epoch = train_epoch.lower(state, *epoch_args).compile()
  log(f"Compiled the training epoch in {time.perf_counter() - started:.1f} s.")
  epoch_program = memory.Program(train_epoch, (state, *epoch_args), epoch_parameter)
  memory.check_fits(
    {f"The training epoch ({epoch_parameter})": epoch_program, **(memory_checks or {})}
  )
  with RunDirectory(
    workdir,
    settings,
    setting_defaults=setting_defaults,
    keep_checkpoints=keep_checkpoints,
    is_main=is_main,
    warn=log,
  ) as run_dir:
    state, step, history = run_dir.resume(state)
    if step is not None:
      log(
        f"Resumed from the checkpoint at step {step} (epoch "
        f"{step // plan.steps_per_epoch}) in {workdir}."
      )
    progress = loop_hooks.ProgressHook(plan, log)
    return train_loop(
      state,
      train_epoch,
      epoch_args,
      evaluate,
      plan,
      [*run_dir.hooks(), progress, *hooks],
      start_step=step or 0,
      resumed=step is not None,
      history=history,
      run_name=workdir,
      log=log,
    )
