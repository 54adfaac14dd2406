"""Multi-process data-parallel training equals single-device training.

Two processes on localhost join through `jax.distributed.initialize`, each with
XLA_FLAGS=--xla_force_host_platform_device_count=2, so that the mesh spans 4
CPU devices in 2 processes and the gradients are all-reduced across processes
(through gloo). Every process has a deadline and a failing one ends the
others, so that a hang fails the test instead of blocking it.
"""

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import chex
import pytest
from runners import run_runner, start_python

from vae_jax import data, training
from vae_jax.models import vae as models
from vae_jax.training.checkpoints import Checkpointer
from vae_jax.training.metrics import read_metrics

NUM_PROCESSES = 2
DEADLINE_SECONDS = 240
DIGITS_FLAGS = [
  "--dataset=digits",
  "--latent_dim=2",
  "--hidden_sizes=8",
  "--batch_size=100",
  "--eval_every=1",
]

LIBRARY_SCRIPT = """
import re, sys
import chex, jax, numpy as np

jax.distributed.initialize(sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))
from vae_jax.models import vae as models
from vae_jax import training

assert jax.device_count() == 4 and jax.local_device_count() == 2, jax.devices()
model = models.make_vae(16, 2, hidden_sizes=(8,), init="flax")
config = training.TrainConfig(batch_size=40, optimizer="adam", learning_rate=1e-2,
                              dynamic_binarization=True)
x = np.random.default_rng(0).uniform(size=(200, 16)).astype(np.float32)

mesh = training.make_mesh(4)
state = training.init_train_state(model, config, jax.random.key(0))
state, data = training.replicate((state, x), mesh)
epoch = training.make_train_epoch(model, config, 200, mesh).lower(state, data).compile()
hlo = epoch.as_text()
assert "num_partitions=4" in hlo, "the program does not span the 4 global devices"
# The gradients are summed over the one mesh axis of 4 devices; the groups'
# spelling differs between XLA versions.
groups = (r"replica_groups=(mesh\\['axis_0'=4[^]]*\\] \\{'axis_0'\\}"
          r"|\\{\\{0,1,2,3\\}\\}|\\[1,4\\]<=\\[4\\])")
assert re.search(r"all-reduce\\(.*" + groups, hlo), "no all-reduce over the 4 devices"
for _ in range(3):
  state, bounds = epoch(state, data)
kernel = state.params["params"]["decoder"]["logits"]["kernel"]
assert {d.process_index for d in kernel.sharding.device_set} == {0, 1}
multihost = jax.device_get(state.params)

if jax.process_index() == 0:
  # Single-device training runs on this process's first device alone.
  single = training.init_train_state(model, config, jax.random.key(0))
  single_epoch = training.make_train_epoch(model, config, 200)
  for _ in range(3):
    single, _ = single_epoch(single, jax.numpy.asarray(x))
  chex.assert_trees_all_close(
      jax.device_get(single.params), multihost, rtol=1e-5, atol=1e-6)
  print("multihost == single")
"""


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _launch(commands: list[list[str]], logdir: Path) -> list[tuple[int, str]]:
  """Runs one `python <command>` per process at once; returns (returncode,
  output) each.

  A process that fails ends the others (which would otherwise wait for it in
  a collective); past the deadline all are killed and the test fails.
  """
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2")
  logs = [logdir / f"process_{i}.log" for i in range(len(commands))]
  processes = []
  for command, log in zip(commands, logs, strict=False):
    with open(log, "w") as out:
      processes.append(start_python(*command, env=env, stdout=out, stderr=subprocess.STDOUT))
  deadline = time.monotonic() + DEADLINE_SECONDS
  try:
    while any(p.poll() is None for p in processes):
      failed = any(p.poll() not in (None, 0) for p in processes)
      assert not failed and time.monotonic() < deadline, (
        "a process failed or the deadline passed:\n"
        + "\n".join(f"--- {log.name}\n{log.read_text()[-3000:]}" for log in logs)
      )
      time.sleep(0.1)
  finally:
    for p in processes:
      if p.poll() is None:
        p.kill()
        p.wait()
  return [(p.returncode, log.read_text()) for p, log in zip(processes, logs, strict=False)]


def _assert_all_succeeded(results: list[tuple[int, str]]) -> None:
  for i, (returncode, output) in enumerate(results):
    assert returncode == 0, f"process {i}:\n{output[-3000:]}"


def test_two_processes_train_like_one_device(tmp_path):
  address = f"localhost:{_free_port()}"
  results = _launch(
    [["-c", LIBRARY_SCRIPT, address, str(i)] for i in range(NUM_PROCESSES)],
    tmp_path,
  )
  _assert_all_succeeded(results)
  assert "multihost == single" in results[0][1]


def _train_on_two_processes(workdir: Path, num_epochs: int, logdir: Path) -> list[str]:
  """`python -m experiments.train` on tiny digits settings; each process's output."""
  address = f"localhost:{_free_port()}"
  flags = [
    *DIGITS_FLAGS,
    "--num_devices=0",
    f"--num_epochs={num_epochs}",
    f"--workdir={workdir}",
    f"--coordinator_address={address}",
    f"--num_processes={NUM_PROCESSES}",
  ]
  results = _launch(
    [["-m", "experiments.train", *flags, f"--process_id={i}"] for i in range(NUM_PROCESSES)],
    logdir,
  )
  _assert_all_succeeded(results)
  return [output for _, output in results]


def _train_on_one_device(workdir: Path, num_epochs: int) -> training.TrainState:
  """In this process, the run `DIGITS_FLAGS` describe, on one device."""
  dataset = data.load_dataset("digits")
  model = models.make_vae(
    dataset.train.shape[1], 2, likelihood=dataset.likelihood, hidden_sizes=(8,)
  )
  run = training.RunConfig(str(workdir), num_epochs=num_epochs)
  return training.train_and_evaluate(
    model,
    training.TrainConfig(batch_size=100),
    run,
    dataset.train,
    dataset.test,
    log=lambda line: None,
  )


@pytest.mark.slow  # ~60 s; the library path is tested by default above
def test_runner_on_two_processes_resumes_a_run_and_logs_once(tmp_path):
  # Epoch 1 on one device here, epoch 2 on 2 processes x 2 devices: the resumed
  # run restores a checkpoint saved by another topology and saves one that
  # this process reads back.
  workdir = tmp_path / "run"
  _train_on_one_device(workdir, num_epochs=1)
  shutil.copytree(workdir, tmp_path / "single")
  outputs = _train_on_two_processes(workdir, 2, tmp_path)

  assert "Resumed from the checkpoint at step 15" in outputs[0]
  assert "epoch 2: train bound" in outputs[0]
  assert "epoch 2: train bound" not in outputs[1], "process 1 logged"
  records = read_metrics(workdir / "metrics.jsonl")
  assert [r["epoch"] for r in records] == [0, 1, 2]
  assert sorted(os.listdir(workdir / "checkpoints"), key=int) == ["0", "15", "30"]
  single = _train_on_one_device(tmp_path / "single", num_epochs=2)
  with Checkpointer(workdir / "checkpoints") as checkpointer:
    multihost = checkpointer.restore(single)
  assert int(multihost.step) == 30
  chex.assert_trees_all_close(single.params, multihost.params, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
  "flags, message",
  [
    (["--process_id=0"], "--num_processes and --process_id need --coordinator_address"),
    (
      ["--coordinator_address=localhost:1234", "--num_processes=2", "--process_id=2"],
      "--process_id=2 must be < --num_processes=2",
    ),
    (
      ["--coordinator_address=localhost", "--num_processes=2", "--process_id=0"],
      "--coordinator_address must be host:port",
    ),
  ],
)
def test_inconsistent_multiprocess_flags_fail_naming_the_flag(tmp_path, flags, message):
  result = run_runner("train", *flags, f"--workdir={tmp_path}", timeout=120)
  assert result.returncode != 0
  assert message in result.stderr, result.stderr[-2000:]
  assert not any(tmp_path.iterdir()), "the run started"
