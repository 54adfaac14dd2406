"""Data-parallel training over a device mesh equals single-device training, and
several runs split over the devices train as they do on one.

Runs in a subprocess with XLA_FLAGS=--xla_force_host_platform_device_count=4,
which must be set before JAX starts, so that the CPU shows 4 devices.
"""

import os

from runners import run_python

SCRIPT = """
import chex, jax, numpy as np
from vae_jax.models import vae as models
from vae_jax import training

assert jax.local_device_count() == 4, jax.devices()
model = models.make_vae(16, 2, hidden_sizes=(8,), init="flax")
# SGD, whose update is proportional to the gradient: Adam's or Adagrad's would
# all but hide a gradient that the all-reduce summed instead of averaging.
config = training.TrainConfig(batch_size=40, optimizer="sgd", learning_rate=0.1,
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
  result = run_python("-c", SCRIPT, env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "sharded == single" in result.stdout


RUNS_SCRIPT = """
import sys
import chex, jax, numpy as np
from vae_jax.models import vae as models
from vae_jax import training
from vae_jax.training.metrics import read_metrics

assert jax.local_device_count() == 4, jax.devices()
model = models.make_vae(16, 2, hidden_sizes=(8,), init="flax")
config = training.TrainConfig(batch_size=40, learning_rate=1e-2, dynamic_binarization=True)
rng = np.random.default_rng(0)
train, test = (rng.uniform(size=(n, 16)).astype(np.float32) for n in (200, 40))

def run(workdir, num_devices, num_epochs):
  # 2 rates x 2 seeds = 4 runs, one per device when split.
  run = training.RunConfig(workdir, num_epochs, num_devices=num_devices, num_runs=2,
                             learning_rates=(0.01, 0.1))
  return training.train_and_evaluate(model, config, run, train, test,
                                       log=lambda line: None)

root = sys.argv[1]
one = run(f"{root}/one_device", 1, 3)
run(f"{root}/split", 4, 2)
split = run(f"{root}/split", 4, 3)  # resumed: restored into the split state
kernel = split.params["params"]["decoder"]["logits"]["kernel"]
assert len(kernel.sharding.device_set) == 4
assert {shard.data.shape[0] for shard in kernel.addressable_shards} == {1}, "one run per device"
chex.assert_trees_all_close(
    jax.device_get(one.params), jax.device_get(split.params), rtol=1e-5, atol=1e-6)
last_one, last_split = (read_metrics(f"{root}/{name}/metrics.jsonl")[-1]
                        for name in ("one_device", "split"))
for i in range(4):
  assert np.isclose(last_one[f"test_bound_run{i}"], last_split[f"test_bound_run{i}"], rtol=1e-5)
epoch = training.make_train_epoch(model, config, 200, training.make_mesh(4), multi_run=True,
                                  learning_rates=[0.01, 0.01, 0.1, 0.1])
hlo = epoch.lower(split, training.replicate(jax.numpy.asarray(train), training.make_mesh(4)))
assert not any(op in hlo.compile().as_text() for op in ("all-reduce", "all-gather")), \\
    "independent runs need no communication"
print("split runs == one device")
"""


def test_runs_split_over_four_devices_train_and_resume_as_on_one(tmp_path):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
  result = run_python("-c", RUNS_SCRIPT, str(tmp_path), env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "split runs == one device" in result.stdout
