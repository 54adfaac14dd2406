"""Checkpointer: bit-exact round trips, retention, crash safety, clear errors."""

import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vae_jax.training.checkpoints import Checkpointer, CheckpointMismatchError


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
