"""Data-parallel training over a device mesh equals single-device training.

Runs in a subprocess with XLA_FLAGS=--xla_force_host_platform_device_count=4,
which must be set before JAX starts, so that the CPU shows 4 devices.
"""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SCRIPT = """
import chex, jax, numpy as np
from vae_jax import models, training

assert jax.local_device_count() == 4, jax.devices()
model = models.make_vae(16, 2, hidden_sizes=(8,), init="flax")
config = training.TrainConfig(batch_size=40, optimizer="adam", learning_rate=1e-2,
                              dynamic_binarization=True)
x = np.random.default_rng(0).uniform(size=(200, 16)).astype(np.float32)

def train(mesh):
  state = training.init_train_state(model, config, jax.random.key(0))
  data = jax.numpy.asarray(x)
  if mesh is not None:
    state, data = training.replicate((state, data), mesh)
  epoch = training.make_train_epoch(model, config, 200, mesh)
  hlo = epoch.lower(state, data).compile().as_text()
  for _ in range(3):
    state, _ = epoch(state, data)
  return state, hlo

single, _ = train(None)
sharded, hlo = train(training.make_mesh(4))
assert "all-reduce" in hlo, "the gradients are not reduced across devices"
kernel = sharded.params["params"]["decoder"]["logits"]["kernel"]
assert len(kernel.sharding.device_set) == 4
chex.assert_trees_all_close(
    jax.device_get(single.params), jax.device_get(sharded.params), rtol=1e-5, atol=1e-6)
print("sharded == single")
"""


def test_four_device_data_parallel_epochs_match_one_device():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
  result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "sharded == single" in result.stdout
