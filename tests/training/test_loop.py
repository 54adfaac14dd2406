"""The one training loop (`train_loop`) run in a work directory
(`train_in_directory`): resume, evaluation schedule, hooks, divergence,
settings and layout checks."""

import json
import shutil

import jax
import jax.numpy as jnp
import pytest

from vae_jax.training import metrics, run_dir
from vae_jax.training.checkpoints import Checkpointer
from vae_jax.training.loop import Hook, LoopPlan, TrainingDivergedError
from vae_jax.training.metrics import read_metrics

STEPS_PER_EPOCH = 3
BATCH_SIZE = 10


@jax.jit
def _grow(state):
  """A stand-in epoch: x -> 1.5 x + 1, with the old x as its output."""
  return {"x": state["x"] * 1.5 + 1.0}, state["x"]


def _plan(num_epochs, evaluate_at=lambda epoch: epoch % 2 == 0):
  return LoopPlan(
    num_epochs=num_epochs,
    steps_per_epoch=STEPS_PER_EPOCH,
    batch_size=BATCH_SIZE,
    evaluate_at=evaluate_at,
  )


def _train(
  workdir,
  num_epochs=5,
  score=None,
  epoch=_grow,
  settings=None,
  hooks=(),
  evaluate_at=lambda epoch: epoch % 2 == 0,
  setting_defaults=None,
  log=lambda _: None,
):
  score = score or (lambda state, epoch, outputs: {"x": float(state["x"])})
  return run_dir.train_in_directory(
    str(workdir),
    settings if settings is not None else {"rate": 1.5, "sizes": (8, 4)},
    {"x": jnp.zeros(())},
    epoch,
    (),
    score,
    _plan(num_epochs, evaluate_at),
    hooks=hooks,
    setting_defaults=setting_defaults,
    log=log,
  )


def test_an_interrupted_run_resumes_to_the_same_end(tmp_path):
  """A run stopped by an error in its third evaluation resumes from its
  second checkpoint to the same state and records as a run never stopped."""

  def score(fail_at):
    def evaluate(state, epoch, outputs):
      if epoch == fail_at:
        raise TrainingDivergedError("stop")
      return {"x": float(state["x"]), "outputs": float(sum(map(float, outputs)))}

    return evaluate

  straight_state, straight = _train(tmp_path / "straight", score=score(None))
  with pytest.raises(TrainingDivergedError):
    _train(tmp_path / "stopped", score=score(4))
  assert [r["epoch"] for r in read_metrics(tmp_path / "stopped" / "metrics.jsonl")] == [0, 2]
  resumed_state, resumed = _train(tmp_path / "stopped", score=score(None))
  # Epoch 0 (the initial state), every 2nd epoch and the last; steps count minibatches.
  assert [(r["epoch"], r["step"]) for r in straight] == [(0, 0), (2, 6), (4, 12), (5, 15)]
  assert [r["samples_seen"] for r in straight] == [0, 60, 120, 150]
  strip = lambda records: [  # noqa: E731
    {k: v for k, v in r.items() if k not in ("seconds", "examples_per_second")} for r in records
  ]
  assert strip(resumed) == strip(straight)
  assert float(resumed_state["x"]) == float(straight_state["x"])
  assert read_metrics(tmp_path / "stopped" / "metrics.jsonl") == resumed
  with Checkpointer(str(tmp_path / "stopped" / "checkpoints")) as checkpointer:
    assert checkpointer.all_steps()[-1] == 15


def test_other_settings_are_refused_and_leave_the_run_untouched(tmp_path):
  _train(tmp_path)
  # The lock file names its last holder, the refused run too; the run's own files stay.
  run_files = lambda: {  # noqa: E731
    p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and p.name != ".lock"
  }
  files = run_files()
  with pytest.raises(run_dir.RunSettingsMismatchError, match="rate: saved 1.5, now 2.0"):
    _train(tmp_path, settings={"rate": 2.0, "sizes": (8, 4)})
  assert run_files() == files


def test_a_setting_added_later_reads_as_its_default(tmp_path):
  """A run saved before a setting existed resumes when the setting is at the
  default given for it, and not when it is set otherwise."""
  _train(tmp_path, num_epochs=1, settings={"part": {"old": 1}})
  with pytest.raises(run_dir.RunSettingsMismatchError, match="part.new: saved True, now False"):
    _train(
      tmp_path,
      num_epochs=2,
      settings={"part": {"old": 1, "new": False}},
      setting_defaults={"part": {"new": True}},
    )
  state, records = _train(
    tmp_path,
    num_epochs=2,
    settings={"part": {"old": 1, "new": True}},
    setting_defaults={"part": {"new": True}},
  )
  assert float(state["x"]) == 2.5 and [r["epoch"] for r in records] == [0, 1, 2]


def test_a_non_finite_score_is_neither_recorded_nor_checkpointed(tmp_path):
  def score(state, epoch, outputs):
    return {"test_bound": float("nan") if epoch == 4 else -float(state["x"])}

  with pytest.raises(
    TrainingDivergedError,
    match=r"evaluated value \['test_bound'\] became nan in epoch 4(.|\n)*step 6",
  ):
    _train(tmp_path, num_epochs=10, score=score)
  assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [0, 6]
  with Checkpointer(str(tmp_path / "checkpoints")) as checkpointer:
    assert checkpointer.latest_step() == 6


def test_a_non_finite_epoch_stops_the_loop_in_that_epoch(tmp_path):
  """A NaN in an epoch's outputs stops the loop in that epoch, though no
  evaluation is due, and keeps the checkpoint of the last evaluation."""

  @jax.jit
  def epoch(state):
    x = state["x"] + 1.0
    return {"x": x}, {"bounds": jnp.where(x >= 3.0, jnp.nan, -x) * jnp.ones(2)}

  with pytest.raises(TrainingDivergedError, match=r"\['bounds'\] became nan in epoch 3"):
    _train(tmp_path, num_epochs=10, epoch=epoch)
  assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [0, 6]
  with Checkpointer(str(tmp_path / "checkpoints")) as checkpointer:
    assert checkpointer.latest_step() == 6


def test_hooks_see_each_evaluation_after_its_checkpoint_and_the_end(tmp_path):
  class Recorder(Hook):
    def __init__(self):
      self.seen, self.end = [], None

    def on_evaluation(self, evaluation):
      with Checkpointer(str(tmp_path / "checkpoints")) as checkpointer:
        assert evaluation.step in checkpointer.all_steps()
      self.seen.append((evaluation.epoch, evaluation.step, float(evaluation.state["x"])))

    def on_end(self, state, history):
      self.end = (float(state["x"]), [r["step"] for r in history])

  recorder = Recorder()
  _train(tmp_path, num_epochs=3, hooks=[recorder], evaluate_at=lambda epoch: epoch == 1)
  assert recorder.seen == [(1, 3, 1.0), (3, 9, 4.75)]
  assert recorder.end == (4.75, [3, 9])


def test_a_run_written_with_epoch_counted_checkpoints_is_refused_in_one_line(tmp_path):
  """Before 0.2, Fig. 3 and M2 runs counted "step" in epochs and had no "epoch"."""
  (tmp_path / "run_config.json").write_text(json.dumps({"rate": 1.5, "sizes": [8, 4]}))
  (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 2, "x": 1.0}) + "\n")
  with Checkpointer(str(tmp_path / "checkpoints")) as checkpointer:
    checkpointer.save(2, {"x": jnp.zeros(())})
  with pytest.raises(run_dir.RunFormatError, match="counted checkpoints in epochs") as error:
    _train(tmp_path)
  assert "\n" not in str(error.value)


def test_a_kill_between_a_checkpoint_and_its_record_loses_no_record(tmp_path, monkeypatch):
  """The record of a checkpoint saved just before a kill is written on resume,
  so that metrics.jsonl holds exactly the checkpointed history."""
  straight_state, straight = _train(tmp_path / "straight")
  write = metrics.JsonlWriter.write

  def killed_at_step_6(self, step, record):
    if step == 6:
      raise KeyboardInterrupt  # stands in for SIGKILL after the checkpoint was saved
    write(self, step, record)

  monkeypatch.setattr(metrics.JsonlWriter, "write", killed_at_step_6)
  with pytest.raises(KeyboardInterrupt):
    _train(tmp_path / "killed")
  monkeypatch.setattr(metrics.JsonlWriter, "write", write)
  with Checkpointer(str(tmp_path / "killed" / "checkpoints")) as checkpointer:
    assert checkpointer.all_steps() == [0, 6]
  assert [r["step"] for r in read_metrics(tmp_path / "killed" / "metrics.jsonl")] == [0]
  state, resumed = _train(tmp_path / "killed")
  strip = lambda records: [  # noqa: E731
    {k: v for k, v in r.items() if k not in ("seconds", "examples_per_second")} for r in records
  ]
  assert strip(resumed) == strip(straight)
  assert strip(read_metrics(tmp_path / "killed" / "metrics.jsonl")) == strip(straight)
  assert float(state["x"]) == float(straight_state["x"])


def test_a_rerun_after_the_checkpoints_were_removed_sets_the_old_records_aside(tmp_path):
  _train(tmp_path, num_epochs=2)
  old_records = (tmp_path / "metrics.jsonl").read_text()
  shutil.rmtree(tmp_path / "checkpoints")
  warnings = []
  _train(str(tmp_path), num_epochs=3, log=warnings.append)
  records = read_metrics(tmp_path / "metrics.jsonl")
  assert [r["epoch"] for r in records] == [0, 2, 3]  # one history, no duplicate epoch 0
  [aside] = tmp_path.glob("orphaned-*")
  assert (aside / "metrics.jsonl").read_text() == old_records
  assert len(list(aside.glob("events.out.tfevents.*"))) == 1
  assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 1
  assert any("metrics.jsonl" in line and f"to {aside}" in line for line in warnings)


def test_the_learning_rate_may_change_on_resume_and_the_change_is_kept(tmp_path):
  """A diverged run is continued as its message advises, with a lower rate;
  what the optimiser state's structure depends on may not change."""
  settings = {"train": {"learning_rate": 0.1, "learning_rate_schedule": "constant"}, "seed": 0}
  _train(tmp_path, num_epochs=2, settings=settings)
  lower = {**settings, "train": {**settings["train"], "learning_rate": 0.01}}
  _, records = _train(tmp_path, num_epochs=4, settings=lower)
  assert [r["epoch"] for r in records] == [0, 2, 4]
  assert json.loads((tmp_path / "run_config.json").read_text())["train"]["learning_rate"] == 0.01
  [change] = map(json.loads, (tmp_path / "setting_changes.jsonl").read_text().splitlines())
  assert change == {"step": 6, "changes": {"train.learning_rate": [0.1, 0.01]}}
  schedule = {**lower, "train": {**lower["train"], "learning_rate_schedule": "iwae"}}
  with pytest.raises(run_dir.RunSettingsMismatchError, match="learning_rate_schedule: saved"):
    _train(tmp_path, num_epochs=6, settings=schedule)
  with pytest.raises(run_dir.RunSettingsMismatchError, match="seed: saved 0, now 1"):
    _train(tmp_path, num_epochs=6, settings={**lower, "seed": 1})


def test_a_corrupt_newest_checkpoint_is_set_aside_and_the_run_resumes_before_it(tmp_path):
  straight_state, straight = _train(tmp_path / "straight")
  _train(tmp_path / "damaged")
  newest = tmp_path / "damaged" / "checkpoints" / "15"
  (newest / "default" / "_METADATA").write_text("{not json")
  warnings = []
  state, records = _train(str(tmp_path / "damaged"), num_epochs=5, log=warnings.append)
  (aside,) = (tmp_path / "damaged" / "checkpoints").glob("15.unreadable-*")
  assert (aside / "default" / "_METADATA").read_text() == "{not json"
  assert any(str(aside) in line and "falling back to step 12" in line for line in warnings)
  # Resumed from step 12: the records of the set-aside step were written again.
  assert [r["step"] for r in records] == [r["step"] for r in straight] == [0, 6, 12, 15]
  assert read_metrics(tmp_path / "damaged" / "metrics.jsonl") == records
  assert float(state["x"]) == float(straight_state["x"])


@pytest.mark.parametrize("damage", ["removed", "cut to its first record"])
def test_a_metrics_file_that_lost_records_is_written_again_from_the_checkpoint(tmp_path, damage):
  _, straight = _train(tmp_path / "straight")
  _train(tmp_path / "run", num_epochs=4)
  metrics_path = tmp_path / "run" / "metrics.jsonl"
  if damage == "removed":
    metrics_path.unlink()
  else:
    metrics_path.write_text(metrics_path.read_text().splitlines()[0] + "\n")
  warnings = []
  _, records = _train(str(tmp_path / "run"), num_epochs=5, log=warnings.append)
  strip = lambda records: [  # noqa: E731
    {k: v for k, v in r.items() if k not in ("seconds", "examples_per_second")} for r in records
  ]
  assert strip(read_metrics(metrics_path)) == strip(records) == strip(straight)
  assert any("lacked records of the checkpointed history" in line for line in warnings)
