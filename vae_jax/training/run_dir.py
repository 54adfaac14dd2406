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

import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax

from vae_jax.training import hooks as loop_hooks
from vae_jax.training.checkpoints import Checkpointer
from vae_jax.training.loop import Hook, LoopPlan, train_loop
from vae_jax.training.metrics import JsonlWriter, TensorBoardWriter, read_metrics
from vae_jax.training.state import TrainConfig

RUN_CONFIG_FILENAME = "run_config.json"


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


def check_run_settings(
  workdir: str,
  settings: dict[str, Any],
  write: bool,
  defaults: dict[str, Any] | None = None,
) -> None:
  """Raises RunSettingsMismatchError unless `workdir` is new or holds a run
  with these settings; a new run's are written if `write`.

  `defaults` (nested as `settings`): the values that settings added to the
  code after a run was saved had for that run, so that older runs still
  resume; a TrainConfig's defaults under "train" always count. The settings
  are compared as they read back from JSON.
  """
  path = os.path.join(workdir, RUN_CONFIG_FILENAME)
  now = _flatten(_as_json(settings))
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      saved = _flatten(json.load(f))
    defaults = _flatten(describe_parts(train=TrainConfig(), **(defaults or {})))
    saved = {**{name: value for name, value in defaults.items() if name in now}, **saved}
    differences = [
      f"{name}: saved {saved.get(name)!r}, now {now.get(name)!r}"
      for name in sorted(saved.keys() | now.keys())
      if saved.get(name) != now.get(name)
    ]
    if differences:
      raise RunSettingsMismatchError(
        f"{workdir} holds a run with other settings; use another work directory or "
        "the same settings. Differences:\n  " + "\n  ".join(differences)
      )
    return
  if write:
    with open(path + ".tmp", "w", encoding="utf-8") as f:
      json.dump(_as_json(settings), f, indent=2, sort_keys=True)
    os.replace(path + ".tmp", path)


class RunDirectory:
  """A run's work directory, open for resuming and for writing.

  Several processes (`jax.distributed`) open the same directory, which must
  be on a file system they all see: all of them take part in the orbax
  checkpoints; only the one with `is_main` writes run_config.json and the
  metrics.
  """

  def __init__(
    self,
    workdir: str,
    settings: dict[str, Any],
    *,
    setting_defaults: dict[str, Any] | None = None,
    keep_checkpoints: int = 3,
    is_main: bool = True,
  ):
    self.workdir = workdir
    self._settings = settings
    self._setting_defaults = setting_defaults
    self._keep_checkpoints = keep_checkpoints
    self._is_main = is_main
    self._checkpointer: Checkpointer | None = None
    self._writers: list[Any] = []

  def __enter__(self) -> RunDirectory:
    os.makedirs(self.workdir, exist_ok=True)
    check_run_settings(self.workdir, self._settings, self._is_main, self._setting_defaults)
    self._checkpointer = Checkpointer(
      os.path.join(self.workdir, "checkpoints"), max_to_keep=self._keep_checkpoints
    )
    return self

  def __exit__(self, *exc_info: object) -> None:
    for writer in self._writers:
      writer.close()
    self._checkpointer.close()

  def resume(self, template: Any) -> tuple[Any, int | None, list[dict[str, Any]]]:
    """(state, step, history): the newest checkpoint's state and minibatch
    step with the metrics records up to it, or (template, None, []) for a
    new run. `template` gives the state's structure and placement. Opens the
    metrics writers, which drop the records a killed run wrote after that
    checkpoint."""
    step = self._checkpointer.latest_step()
    if self._is_main:
      jsonl = JsonlWriter(self.workdir, resume_step=step)
      self._writers = [jsonl, TensorBoardWriter(self.workdir, resume_step=step)]
      history = read_metrics(jsonl.path) if step is not None else []
      _check_counted_in_steps(self.workdir, history)
    else:
      history = []
    if step is None:
      return template, None, history
    return self._checkpointer.restore(template), step, history

  def hooks(self) -> list[Hook]:
    """Checkpoint, then record, every evaluation: a record is written only
    for a state that is on disk."""
    return [loop_hooks.CheckpointHook(self._checkpointer), loop_hooks.MetricsHook(self._writers)]


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
  log: Callable[[str], None] = print,
) -> tuple[Any, list[dict[str, Any]]]:
  """The resumable training loop in `workdir`: what every runner calls.

  Checks `settings` against the run in `workdir` (see `check_run_settings`),
  resumes from its newest checkpoint (`state` is the template), then runs
  `train_loop` with the directory's checkpoint and metrics hooks, a progress
  line per evaluation, and `hooks`. With several processes, process 0 alone
  writes files other than checkpoints and logs.

  Returns:
    (the final state, every metrics record of the run).
  """
  is_main = jax.process_index() == 0
  log = log if is_main else (lambda line: None)
  with RunDirectory(
    workdir,
    settings,
    setting_defaults=setting_defaults,
    keep_checkpoints=keep_checkpoints,
    is_main=is_main,
  ) as run_dir:
    state, step, history = run_dir.resume(state)
    if step is not None:
      log(
        f"Resumed from the checkpoint at step {step} (epoch "
        f"{step // plan.steps_per_epoch}) in {workdir}."
      )
    progress = loop_hooks.ProgressHook(plan, step or 0, log)
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
