"""Checkpointer: bit-exact round trips, retention, crash safety, clear errors."""

from __future__ import annotations

import gc
import glob
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vae_jax.training import checkpoints
from vae_jax.training.checkpoints import (
  Checkpointer,
  CheckpointMismatchError,
  UnreadableCheckpointError,
)


def _train_state(seed: int) -> dict:
  """A state like the runner's: params, optax state, step, raw key data."""
  rng = np.random.default_rng(seed)
  weights = rng.standard_normal((5, 3)).astype(np.float32)
  # Values whose bits a lossy or casting round trip would change.
  weights[0, :3] = [np.nan, -0.0, np.inf]
  weights[1, 0] = np.float32(1e-45)  # subnormal
  weights[1, 1] = np.frombuffer(np.uint32(0x7FC00123).tobytes(), np.float32)[0]
  params = {
    "encoder": {"w": jnp.asarray(weights), "b": jnp.asarray(rng.random(3))},
    "decoder": {
      "w": jnp.asarray(rng.random((3, 5)), jnp.bfloat16),
      "counts": jnp.asarray(rng.integers(-100, 100, 4), jnp.int8),
    },
  }
  optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))
  opt_state = optimizer.init(params)
  opt_state = jax.tree.map(lambda x: x + seed, opt_state)
  return {
    "params": params,
    "opt_state": opt_state,
    "step": 1000 + seed,
    "key_data": jax.random.key_data(jax.random.key(seed + 7)),
    "host_array": rng.random(2),
  }


def _leaf_bytes(leaf) -> tuple:
  array = np.asarray(leaf)
  return (type(leaf).__name__, array.dtype.str, array.shape, array.tobytes())


def _assert_bitwise_equal(actual, expected) -> None:
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=False):
    assert _leaf_bytes(a) == _leaf_bytes(e)


def test_restore_is_bitwise_exact(tmp_path):
  state = _train_state(seed=0)
  with Checkpointer(tmp_path) as checkpointer:
    assert checkpointer.save(7, state)
  # A fresh instance, as after a restart, reads what the first one wrote.
  with Checkpointer(tmp_path) as checkpointer:
    assert checkpointer.latest_step() == 7
    restored = checkpointer.restore(_train_state(seed=1))
  _assert_bitwise_equal(restored, state)


def test_restore_from_abstract_template(tmp_path):
  state = _train_state(seed=0)
  abstract = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype) if isinstance(x, jax.Array) else x,
    state,
  )
  with Checkpointer(tmp_path) as checkpointer:
    checkpointer.save(1, state)
    restored = checkpointer.restore(abstract)
  _assert_bitwise_equal(restored, state)


def test_restore_selects_step(tmp_path):
  with Checkpointer(tmp_path) as checkpointer:
    for step in (1, 2, 3):
      checkpointer.save(step, _train_state(seed=step))
    _assert_bitwise_equal(checkpointer.restore(_train_state(0), step=2), _train_state(seed=2))
    _assert_bitwise_equal(checkpointer.restore(_train_state(0)), _train_state(seed=3))


def test_max_to_keep_deletes_oldest(tmp_path):
  with Checkpointer(tmp_path, max_to_keep=2) as checkpointer:
    for step in range(1, 6):
      checkpointer.save(step, {"x": jnp.full(3, step)})
    assert checkpointer.all_steps() == [4, 5]
  assert sorted(p for p in os.listdir(tmp_path) if p.isdigit()) == ["4", "5"]
  with Checkpointer(tmp_path, max_to_keep=2) as checkpointer:
    assert checkpointer.all_steps() == [4, 5]


def test_save_interval_force_and_order(tmp_path):
  state = {"x": jnp.zeros(2)}
  with Checkpointer(tmp_path, save_interval_steps=10) as checkpointer:
    assert not checkpointer.save(5, state)
    assert checkpointer.save(10, state)
    assert checkpointer.save(15, state, force=True)
    # A step is written at most once.
    assert not checkpointer.save(15, state, force=True)
    assert checkpointer.all_steps() == [10, 15]
    with pytest.raises(ValueError, match="newer step 15"):
      checkpointer.save(12, state, force=True)


def test_restore_without_checkpoint_raises(tmp_path):
  with Checkpointer(tmp_path) as checkpointer:
    assert checkpointer.latest_step() is None
    with pytest.raises(FileNotFoundError, match="No checkpoint"):
      checkpointer.restore({"x": jnp.zeros(2)})
    checkpointer.save(3, {"x": jnp.zeros(2)})
    with pytest.raises(FileNotFoundError, match=r"available steps: \[3\]"):
      checkpointer.restore({"x": jnp.zeros(2)}, step=4)


def test_mismatched_template_names_every_difference(tmp_path):
  state = _train_state(seed=0)
  template = _train_state(seed=0)
  template["params"]["encoder"]["w"] = jnp.zeros((5, 4))
  template["params"]["decoder"]["w"] = jnp.zeros((3, 5), jnp.float32)
  del template["params"]["decoder"]["counts"]
  template["params"]["extra"] = jnp.zeros(1)
  with Checkpointer(tmp_path) as checkpointer:
    checkpointer.save(1, state)
    with pytest.raises(CheckpointMismatchError) as error:
      checkpointer.restore(template)
  message = str(error.value)
  assert "params/encoder/w: checkpoint has float32[5,3], template has" in message
  assert "params/decoder/w: checkpoint has bfloat16[3,5]" in message
  assert "params/decoder/counts: in the checkpoint but not in the template" in (message)
  assert "params/extra: in the template but not in the checkpoint" in message


@pytest.mark.parametrize(
  "make_key",
  [
    lambda: jax.random.key(0),
    lambda: jax.random.split(jax.random.key(1), 3),
    lambda: jax.random.key(2, impl="rbg"),
  ],
  ids=["scalar", "batch", "rbg"],
)
def test_typed_keys_are_rejected_with_a_pointer_to_key_data(tmp_path, make_key):
  key = make_key()
  state = {"params": {"w": jnp.ones(2)}, "rng": {"key": key}}
  expected = r"typed PRNG keys \(jax\.random\.key\) at rng/key;.*jax\.random\.key_data\(key\)"
  with Checkpointer(tmp_path) as checkpointer:
    with pytest.raises(TypeError, match=expected):
      checkpointer.save(1, state)
    assert checkpointer.all_steps() == []
    raw = {"params": state["params"], "rng": {"key": jax.random.key_data(key)}}
    assert checkpointer.save(1, raw)
    with pytest.raises(TypeError, match=expected):
      checkpointer.restore(state)
    _assert_bitwise_equal(checkpointer.restore(raw), raw)


def test_latest_step_ignores_uncommitted_tmp_directory(tmp_path):
  with Checkpointer(tmp_path) as checkpointer:
    checkpointer.save(1, {"x": jnp.full(2, 1.0)})
    checkpointer.save(2, {"x": jnp.full(2, 2.0)})
  # What a kill during the save of step 3 can leave: a complete-looking
  # directory that was never renamed into place.
  shutil.copytree(tmp_path / "2", tmp_path / "3.orbax-checkpoint-tmp")
  with Checkpointer(tmp_path) as checkpointer:
    assert checkpointer.latest_step() == 2
    assert checkpointer.all_steps() == [1, 2]
    restored = checkpointer.restore({"x": jnp.zeros(2)})
    np.testing.assert_array_equal(restored["x"], np.full(2, 2.0))
    with pytest.raises(FileNotFoundError):
      checkpointer.restore({"x": jnp.zeros(2)}, step=3)


_KILLED_SAVE_CHILD = textwrap.dedent("""
    import os, signal, sys
    import jax.numpy as jnp
    from orbax.checkpoint._src.path import async_path
    from vae_jax.training.checkpoints import Checkpointer

    rename = async_path.rename

    async def die_before_step_rename(src, dst):
      if dst.name == "2":
        os.kill(os.getpid(), signal.SIGKILL)
      return await rename(src, dst)

    with Checkpointer(sys.argv[1]) as checkpointer:
      checkpointer.save(1, {"x": jnp.full(4, 1.0)})
      # The commit point of orbax's local-disk protocol is the rename of
      # `<step>.orbax-checkpoint-tmp` to `<step>`: die just before it.
      async_path.rename = die_before_step_rename
      checkpointer.save(2, {"x": jnp.full(4, 2.0)})
    sys.exit("not killed")
""")


def test_kill_just_before_commit_keeps_previous_checkpoint(tmp_path):
  script = tmp_path / "child.py"
  script.write_text(_KILLED_SAVE_CHILD)
  directory = tmp_path / "checkpoints"
  child = subprocess.run(
    [sys.executable, str(script), str(directory)],
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert child.returncode == -signal.SIGKILL, child.stderr
  assert sorted(os.listdir(directory)) == ["1", "2.orbax-checkpoint-tmp"]
  # The uncommitted directory is complete except for its name.
  assert (directory / "2.orbax-checkpoint-tmp" / "commit_success.txt").exists()
  with Checkpointer(directory) as checkpointer:
    assert checkpointer.latest_step() == 1
    restored = checkpointer.restore({"x": jnp.zeros(4)})
    np.testing.assert_array_equal(restored["x"], np.full(4, 1.0))
    # The resumed run can save the lost step again.
    assert checkpointer.save(2, {"x": jnp.full(4, 3.0)})
    assert checkpointer.all_steps() == [1, 2]
    np.testing.assert_array_equal(checkpointer.restore({"x": jnp.zeros(4)})["x"], np.full(4, 3.0))
  assert "2.orbax-checkpoint-tmp" not in os.listdir(directory)


_SAVE_FOREVER_CHILD = textwrap.dedent("""
    import sys
    import jax.numpy as jnp
    from vae_jax.training.checkpoints import Checkpointer

    with Checkpointer(sys.argv[1], max_to_keep=2) as checkpointer:
      step = 0
      while True:
        step += 1
        # ~1 MB, so that a save takes long enough to be interrupted.
        checkpointer.save(step, {"w": jnp.full((256, 1024), step, jnp.int32)})
        print(step, flush=True)
""")


def test_kill_during_save_loop_leaves_a_restorable_latest(tmp_path):
  script = tmp_path / "child.py"
  script.write_text(_SAVE_FOREVER_CHILD)
  directory = tmp_path / "checkpoints"
  child = subprocess.Popen(
    [sys.executable, str(script), str(directory)],
    stdout=subprocess.PIPE,
    text=True,
  )
  try:
    assert child.stdout.readline().strip() == "1"
    # Kill once a save is under way (a tmp directory exists), after a few
    # steps so that old checkpoints are being deleted too.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
      names = os.listdir(directory)
      if len(names) > 2 and any("orbax-checkpoint-tmp" in n for n in names):
        break
    child.send_signal(signal.SIGKILL)
  finally:
    child.kill()
    child.wait()
  with Checkpointer(directory, max_to_keep=2) as checkpointer:
    latest = checkpointer.latest_step()
    assert latest is not None and latest >= 1
    restored = checkpointer.restore({"w": jnp.zeros((256, 1024), jnp.int32)})
  np.testing.assert_array_equal(restored["w"], np.full((256, 1024), latest))


def test_orbax_info_logs_are_silenced(tmp_path):
  absl_logger = logging.getLogger("absl")
  records = []

  class Collect(logging.Handler):
    def emit(self, record):
      records.append(record)

  handler = Collect(level=logging.DEBUG)
  old_level, old_filters = absl_logger.level, list(absl_logger.filters)
  absl_logger.addHandler(handler)
  absl_logger.setLevel(logging.DEBUG)
  try:
    with Checkpointer(tmp_path) as checkpointer:
      checkpointer.save(1, {"x": jnp.ones(2)})
      checkpointer.restore({"x": jnp.ones(2)})
  finally:
    absl_logger.removeHandler(handler)
    absl_logger.setLevel(old_level)
  assert absl_logger.filters == old_filters
  orbax_info = [r for r in records if "orbax" in r.pathname and r.levelno < logging.WARNING]
  assert not orbax_info, [r.getMessage() for r in orbax_info[:3]]


# Damaged checkpoints. Orbax writes each step's arrays as one OCDBT database
# under `<step>/default/`: `d/<hash>` is the b-tree node that holds small
# arrays inline, the chunks of larger ones are in `ocdbt.process_0/d/<hash>`,
# and `_METADATA` (JSON) describes the tree.


def _state_with_chunk(seed: int) -> dict:
  """`_train_state` plus an array too large to be inlined in the b-tree node."""
  state = _train_state(seed)
  rng = np.random.default_rng(seed + 100)
  # Random values do not compress, so the chunk file is ~64 KB.
  state["table"] = jnp.asarray(rng.standard_normal((64, 256)), jnp.float32)
  return state


def _only(pattern: str) -> str:
  paths = glob.glob(pattern)
  assert len(paths) == 1, f"expected one file matching {pattern}, found {paths}"
  return paths[0]


def _btree_node(step_dir) -> str:
  return _only(os.path.join(step_dir, "default", "d", "*"))


def _largest_chunk(step_dir) -> str:
  paths = glob.glob(os.path.join(step_dir, "default", "ocdbt.process_0", "d", "*"))
  assert paths, f"no chunk files in {step_dir}"
  largest = max(paths, key=os.path.getsize)
  assert os.path.getsize(largest) > 32_000, "the table's chunk should be the largest file"
  return largest


def _truncate_to_half(path: str) -> None:
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


def _overwrite_with_garbage(path: str) -> None:
  size = os.path.getsize(path)
  with open(path, "r+b") as f:
    f.write(np.random.default_rng(0).bytes(size))
  assert os.path.getsize(path) == size


def _garble_metadata(step_dir) -> None:
  path = os.path.join(step_dir, "default", "_METADATA")
  assert os.path.exists(path)
  with open(path, "w") as f:
    f.write('{"tree_metadata": {"params": garbled')


_DAMAGES = {
  "truncated_btree_node": lambda step_dir: _truncate_to_half(_btree_node(step_dir)),
  "truncated_chunk": lambda step_dir: _truncate_to_half(_largest_chunk(step_dir)),
  "garbage_btree_node": lambda step_dir: _overwrite_with_garbage(_btree_node(step_dir)),
  "garbage_chunk": lambda step_dir: _overwrite_with_garbage(_largest_chunk(step_dir)),
  "garbled_metadata": _garble_metadata,
  "deleted_metadata": lambda step_dir: os.remove(os.path.join(step_dir, "default", "_METADATA")),
  "deleted_btree_dir": lambda step_dir: shutil.rmtree(os.path.join(step_dir, "default", "d")),
  "deleted_chunk_dir": lambda step_dir: shutil.rmtree(
    os.path.join(step_dir, "default", "ocdbt.process_0")
  ),
}


def _save_steps(directory, steps=(0, 10, 20)) -> None:
  with Checkpointer(directory) as checkpointer:
    for step in steps:
      assert checkpointer.save(step, _state_with_chunk(seed=step))


def _files_under(directory) -> list[str]:
  return sorted(
    os.path.relpath(os.path.join(root, name), directory)
    for root, _, names in os.walk(directory)
    for name in names
  )


@pytest.mark.parametrize("damage", sorted(_DAMAGES))
def test_damaged_newest_checkpoint_falls_back_to_the_previous(tmp_path, damage):
  _save_steps(tmp_path)
  _DAMAGES[damage](tmp_path / "20")
  damaged_files = _files_under(tmp_path / "20")
  warnings = []
  with Checkpointer(tmp_path) as checkpointer:
    state, step = checkpointer.restore_newest_readable(_state_with_chunk(seed=1), warnings.append)
    assert step == 10
    _assert_bitwise_equal(state, _state_with_chunk(seed=10))
    assert checkpointer.all_steps() == [0, 10]
    assert checkpointer.latest_step() == 10
    # The run goes on from step 10: it saves step 20 anew, and later ones.
    assert checkpointer.save(20, _state_with_chunk(seed=21))
    assert checkpointer.save(30, _state_with_chunk(seed=30))
    assert checkpointer.all_steps() == [10, 20, 30]
    _assert_bitwise_equal(checkpointer.restore(_state_with_chunk(1), 20), _state_with_chunk(21))
    _assert_bitwise_equal(checkpointer.restore(_state_with_chunk(1)), _state_with_chunk(seed=30))
  assert len(warnings) == 1
  (set_aside,) = glob.glob(str(tmp_path / "20.unreadable-*"))
  assert "\n" not in warnings[0]
  assert "step 20 is unreadable" in warnings[0]
  assert f"set it aside as {set_aside};" in warnings[0]
  assert warnings[0].endswith("falling back to step 10.")
  assert len(warnings[0]) < 400, warnings[0]
  assert _files_under(set_aside) == damaged_files


def test_garbled_metadata_error_names_the_file(tmp_path):
  _save_steps(tmp_path, steps=(20,))
  _garble_metadata(tmp_path / "20")
  path = os.path.join(tmp_path, "20", "default", "_METADATA")
  with Checkpointer(tmp_path) as checkpointer:
    with pytest.raises(ValueError, match=f"^{re.escape(path)} is not valid JSON: Expecting value"):
      checkpointer.restore(_state_with_chunk(1))
    assert checkpointer.all_steps() == [20]


def test_set_aside_checkpoint_survives_reopening_and_retention(tmp_path):
  _save_steps(tmp_path)
  _garble_metadata(tmp_path / "20")
  with Checkpointer(tmp_path) as checkpointer:
    checkpointer.restore_newest_readable(_state_with_chunk(1), lambda line: None)
  (set_aside,) = glob.glob(str(tmp_path / "20.unreadable-*"))
  # A new manager cleans up temporary directories and, past max_to_keep,
  # deletes the oldest steps; neither touches the directory set aside.
  with Checkpointer(tmp_path, max_to_keep=2) as checkpointer:
    assert checkpointer.all_steps() == [0, 10]
    assert checkpointer.save(30, _state_with_chunk(seed=30))
    assert checkpointer.save(40, _state_with_chunk(seed=40))
    assert checkpointer.all_steps() == [30, 40]
  assert sorted(os.listdir(tmp_path)) == sorted(["30", "40", os.path.basename(set_aside)])
  with Checkpointer(tmp_path) as checkpointer:
    state, step = checkpointer.restore_newest_readable(_state_with_chunk(1), pytest.fail)
  assert step == 40
  _assert_bitwise_equal(state, _state_with_chunk(seed=40))


def test_a_step_set_aside_twice_keeps_both_directories(tmp_path, monkeypatch):
  _save_steps(tmp_path)
  # Both within the same second, so that the names would collide.
  monkeypatch.setattr(
    checkpoints, "time", types.SimpleNamespace(strftime=lambda _: "20250101-000000")
  )
  with Checkpointer(tmp_path) as checkpointer:
    for seed in (20, 21):
      _garble_metadata(tmp_path / "20")
      _, step = checkpointer.restore_newest_readable(_state_with_chunk(1), lambda line: None)
      assert step == 10
      assert checkpointer.save(20, _state_with_chunk(seed=seed + 1))
    assert checkpointer.all_steps() == [0, 10, 20]
  set_aside = sorted(os.path.basename(p) for p in glob.glob(str(tmp_path / "20.unreadable-*")))
  assert set_aside == ["20.unreadable-20250101-000000", "20.unreadable-20250101-000000.1"]
  assert all((tmp_path / name / "default" / "_METADATA").exists() for name in set_aside)


def test_walks_back_over_several_damaged_checkpoints(tmp_path):
  _save_steps(tmp_path)
  _garble_metadata(tmp_path / "20")
  _truncate_to_half(_largest_chunk(tmp_path / "10"))
  warnings = []
  with Checkpointer(tmp_path) as checkpointer:
    state, step = checkpointer.restore_newest_readable(_state_with_chunk(1), warnings.append)
    assert checkpointer.all_steps() == [0]
  assert step == 0
  _assert_bitwise_equal(state, _state_with_chunk(seed=0))
  assert [w.split(" is unreadable")[0] for w in warnings] == [
    "Checkpoint step 20",
    "Checkpoint step 10",
  ]
  assert warnings[0].endswith("falling back to step 10.")
  assert warnings[1].endswith("falling back to step 0.")


def test_no_readable_checkpoint_raises_one_line(tmp_path):
  _save_steps(tmp_path)
  for step in (0, 10, 20):
    _garble_metadata(tmp_path / str(step))
  warnings = []
  with Checkpointer(tmp_path) as checkpointer:
    with pytest.raises(UnreadableCheckpointError) as error:
      checkpointer.restore_newest_readable(_state_with_chunk(1), warnings.append)
    assert checkpointer.all_steps() == []
  message = str(error.value)
  assert "\n" not in message
  assert f"No readable checkpoint in {tmp_path}: 3 unreadable checkpoint(s) set aside" in message
  assert "start afresh in another work directory" in message
  assert len(warnings) == 3
  assert warnings[-1].endswith("no older checkpoint is left.")
  assert len(glob.glob(str(tmp_path / "*.unreadable-*"))) == 3
  # A restart in the same directory does not silently start afresh either.
  with (
    Checkpointer(tmp_path) as checkpointer,
    pytest.raises(UnreadableCheckpointError, match="3 unreadable"),
  ):
    checkpointer.restore_newest_readable(_state_with_chunk(1), pytest.fail)


def test_restore_newest_readable_without_checkpoints_returns_the_template(tmp_path):
  template = _state_with_chunk(seed=1)
  with Checkpointer(tmp_path) as checkpointer:
    state, step = checkpointer.restore_newest_readable(template, pytest.fail)
  assert step is None
  assert state is template


def test_template_mismatch_is_raised_not_set_aside(tmp_path):
  _save_steps(tmp_path)
  template = _state_with_chunk(seed=1)
  template["table"] = jnp.zeros((64, 255), jnp.float32)
  with Checkpointer(tmp_path) as checkpointer:
    with pytest.raises(CheckpointMismatchError, match="table: checkpoint has float32"):
      checkpointer.restore_newest_readable(template, pytest.fail)
    assert checkpointer.all_steps() == [0, 10, 20]
  assert not glob.glob(str(tmp_path / "*.unreadable-*"))


def test_out_of_memory_is_raised_not_set_aside(tmp_path, monkeypatch):
  _save_steps(tmp_path)
  with Checkpointer(tmp_path) as checkpointer:

    def out_of_memory(*args, **kwargs):
      raise MemoryError("placing the restored arrays")

    monkeypatch.setattr(checkpointer._manager, "restore", out_of_memory)
    with pytest.raises(MemoryError):
      checkpointer.restore_newest_readable(_state_with_chunk(1), pytest.fail)
    assert checkpointer.all_steps() == [0, 10, 20]


@pytest.mark.xfail(
  strict=True,
  raises=AssertionError,
  reason="orbax keeps no checksum of array chunks: bytes changed inside a chunk that still"
  " decompresses restore silently with wrong values",
)
def test_bytes_changed_inside_a_chunk_are_detected(tmp_path):
  _save_steps(tmp_path)
  chunk = _largest_chunk(tmp_path / "20")
  with open(chunk, "r+b") as f:
    f.seek(os.path.getsize(chunk) // 2)
    f.write(b"\xff" * 16)
  with Checkpointer(tmp_path) as checkpointer:
    state, step = checkpointer.restore_newest_readable(_state_with_chunk(1), lambda line: None)
  # Either the damage is detected (step 10), or step 20 must be intact.
  assert step == 10 or np.array_equal(state["table"], _state_with_chunk(seed=20)["table"])


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_falling_back_does_not_print_orbax_leftover_errors(tmp_path, caplog):
  # When one array fails to read, orbax abandons the reads of the others;
  # their errors surface later through asyncio's logger and as unraisable
  # exceptions, one traceback per array, unless the Checkpointer drops them.
  _save_steps(tmp_path)
  _truncate_to_half(_btree_node(tmp_path / "20"))
  with caplog.at_level(logging.WARNING, logger="asyncio"), Checkpointer(tmp_path) as checkpointer:
    _, step = checkpointer.restore_newest_readable(_state_with_chunk(1), lambda line: None)
    # The abandoned reads finish in tensorstore's threads.
    time.sleep(0.5)
    gc.collect()
  assert step == 10
  assert not [r.getMessage()[:200] for r in caplog.records if r.name == "asyncio"]
