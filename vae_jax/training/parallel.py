"""Placing training on several devices: a 1-D mesh over the devices of all
processes, replicated trees, and runs split over devices.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

BATCH_AXIS = "batch"


def make_mesh(num_devices: int) -> jax.sharding.Mesh:
  """A 1-D mesh of `num_devices` devices of all processes, axis `BATCH_AXIS`
  (which splits each minibatch, or in multi-run training the runs).

  Every process contributes its first `num_devices / jax.process_count()`
  local devices, since every process must hold a part of every minibatch to
  take part in the jitted step.
  """
  num_processes = jax.process_count()
  if not 1 <= num_devices <= jax.device_count():
    raise ValueError(
      f"num_devices must be in [1, {jax.device_count()}] (the devices of all "
      f"processes), got {num_devices}."
    )
  if num_devices % num_processes:
    raise ValueError(
      f"num_devices must be a multiple of the {num_processes} processes, got {num_devices}."
    )
  per_process = num_devices // num_processes
  devices = []
  for process in range(num_processes):
    local = [d for d in jax.devices() if d.process_index == process]
    if len(local) < per_process:
      raise ValueError(
        f"num_devices={num_devices} needs {per_process} devices in each of the "
        f"{num_processes} processes; process {process} has {len(local)}."
      )
    devices += local[:per_process]
  return jax.sharding.Mesh(np.array(devices), (BATCH_AXIS,))


def replicate(tree: Any, mesh: jax.sharding.Mesh) -> Any:
  """Places every array of a pytree on all devices of the mesh.

  With several processes the mesh spans devices of other processes too: every
  process must pass the same values, and each fills its own devices (no data
  crosses processes).
  """
  return jax.make_array_from_process_local_data(NamedSharding(mesh, PartitionSpec()), tree)


def shard_runs(tree: Any, mesh: jax.sharding.Mesh) -> Any:
  """Places a pytree of several runs (a leading [num_runs] axis on every
  array, e.g. `init_train_states`) with its runs split evenly over the
  devices of the mesh, which must all belong to this process."""
  if jax.process_count() > 1:
    raise ValueError("Runs are split over the devices of one process only.")
  num_runs = {leaf.shape[0] for leaf in jax.tree_util.tree_leaves(tree)}
  if len(num_runs) != 1 or next(iter(num_runs)) % mesh.size:
    raise ValueError(
      f"Runs split over {mesh.size} devices must be a multiple of them in number; "
      f"the leaves' leading axes are {sorted(num_runs)}."
    )
  return jax.device_put(tree, NamedSharding(mesh, PartitionSpec(BATCH_AXIS)))
