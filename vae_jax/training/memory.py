"""Refusing settings whose compiled programs cannot fit in memory, before a run starts.

A setting such as `num_samples=100000` is valid on its own but makes the
evaluation hold [L, batch, data_dim] decoder outputs (313 GB of float32 logits
for the paper's MNIST model at L = 100000 over 1000 examples). Without a check
the run fails only at its first evaluation, out of memory, after the run
directory was locked to that value. `check_fits` catches it at start-up and
names the setting to lower.

It asks XLA rather than a formula of our own: the jitted program is lowered
and compiled on the arguments' shapes (nothing runs, nothing large is
allocated) and `compiled.memory_analysis()` gives its buffer sizes, which
follow whatever the program does (estimators, vmapped runs, sharding, scans)
without a second model of it to keep in step. On jax 0.10's CPU backend those
sizes match the measured peak resident memory of the call to within about
0.1 GB (the paper model's evaluation, B at L = 100: 0.99 GB estimated against
1.09 GB measured; at L = 300: 2.91 GB against 3.00 GB), and compiling is the
work the first call does anyway: a check made with the arguments the program
will be called with (or `jax.ShapeDtypeStruct`s of uncommitted arrays) leaves
jax's compilation cache holding the executable that call then uses.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax

from vae_jax.errors import ConfigError

# Where the memory controller of the process's control group is mounted
# (cgroup v2 files at its root, v1 files under memory/); a container's memory
# limit lives there, which /proc/meminfo does not show.
CGROUP_ROOT = Path("/sys/fs/cgroup")
MEMINFO = Path("/proc/meminfo")
# The part of the available memory a check keeps free: what XLA's buffer
# sizes leave out (the runtime's own memory, about 0.1 GB on a CPU; host copies
# for checkpoints and metrics) and what other processes may take meanwhile.
DEFAULT_HEADROOM = 0.1


class Program(NamedTuple):
  """One compiled program of a run, as `check_fits` checks it."""

  fn: Callable[..., Any]  # a `jax.jit`-wrapped function, or one compiled already
  args: Sequence[Any]  # its positional arguments: arrays or `jax.ShapeDtypeStruct`s
  parameter: str  # the setting to lower if it does not fit, as the library spells it


class Footprint(NamedTuple):
  """What a compiled call needs: `per_device` bytes on each of its `devices`."""

  per_device: int
  devices: frozenset[jax.Device]


def footprint(fn: Callable[..., Any], *args: Any) -> Footprint | None:
  """The memory a call `fn(*args)` would allocate, from its compiled program.

  Compiles `fn` (a jitted function; one compiled already is taken as it is)
  for the arguments' shapes without running it. per_device is XLA's
  temporaries + outputs - outputs that reuse donated inputs + the arguments
  not yet on a device (`jax.ShapeDtypeStruct`s, host values): the arguments
  that already are `jax.Array`s are left out, since the memory they take is
  no longer available. None where the backend gives no
  memory analysis.
  """
  compiled = fn.lower(*args).compile() if hasattr(fn, "lower") else fn
  stats = compiled.memory_analysis()
  if stats is None:
    return None
  shardings = jax.tree.leaves((compiled.input_shardings, compiled.output_shardings))
  devices = frozenset(device for sharding in shardings for device in sharding.device_set)
  per_device = (
    stats.temp_size_in_bytes
    + stats.output_size_in_bytes
    - stats.alias_size_in_bytes
    + stats.argument_size_in_bytes
    - sum(_bytes_per_device(leaf) for leaf in jax.tree.leaves(args))
  )
  return Footprint(max(per_device, 0), devices or frozenset(jax.local_devices()[:1]))


def available_bytes(device: jax.Device | None = None) -> int | None:
  """Bytes a new allocation on `device` (default: the first local one) can take.

  A CPU device uses the machine's memory: MemAvailable of /proc/meminfo (free
  memory plus what the kernel can reclaim; else the free pages), capped by the
  control group's limit less its unreclaimable usage, as in a container. An
  accelerator's allocator owns a pool of its own: its bytes_limit less
  bytes_in_use. None where the device or the system does not say, so that a
  check is skipped rather than made against a guess.
  """
  device = device or jax.local_devices()[0]
  if device.platform != "cpu":
    stats = device.memory_stats() or {}
    if "bytes_limit" not in stats:
      return None
    return stats["bytes_limit"] - stats.get("bytes_in_use", 0)
  candidates = [_meminfo_available(), _cgroup_available()]
  candidates = [value for value in candidates if value is not None]
  return min(candidates) if candidates else None


def check_fits(
  programs: Mapping[str, Program], headroom: float = DEFAULT_HEADROOM
) -> dict[str, Footprint | None]:
  """Raises ConfigError unless each program fits in its devices' available memory.

  The programs run one after another (an epoch, then evaluations), so each is
  checked on its own. One on CPU devices needs its per-device footprint times
  their number, since they share the machine's memory; one on accelerators
  needs its per-device footprint on each. Call it before the run directory is
  written, with the programs and the arguments they will be called with: the
  compiled executables are then the ones the first calls use.

  Args:
    programs: a description of each program ("the training epoch", "the
      evaluation of the bound on the test set") and the program; the
      description starts the error's message, so it may name the values.
    headroom: the fraction of the available memory to keep free.

  Returns:
    Each program's footprint (None where unknown), e.g. to log.

  Raises:
    ConfigError: for the first program, in the mapping's order, that does not
      fit; `parameter` is its `Program.parameter`, and the one-line message
      gives the estimated and available GB and the setting to lower.
  """
  footprints = {}
  for name, program in programs.items():
    needed = footprints[name] = footprint(program.fn, *program.args)
    if needed is None:
      continue
    devices = sorted(needed.devices, key=lambda device: device.id)
    if all(device.platform == "cpu" for device in devices):
      where, total = "on this machine", needed.per_device * len(devices)
      available = available_bytes(devices[0])
    else:
      where = f"on {devices[0]}" if len(devices) == 1 else f"on each of {len(devices)} devices"
      total = needed.per_device
      free = [available_bytes(device) for device in devices]
      available = None if None in free else min(free)
    if available is not None and total > (1 - headroom) * available:
      raise ConfigError(
        program.parameter,
        f"{name} needs about {_gb(total)} of memory but {_gb(available)} is available {where} "
        f"(keeping {headroom:.0%} free); lower {program.parameter}.",
      )
  return footprints


def _bytes_per_device(leaf: Any) -> int:
  """The bytes one device holds of an argument already on devices, else 0."""
  if not isinstance(leaf, jax.Array):
    return 0
  return math.prod(leaf.sharding.shard_shape(leaf.shape)) * leaf.dtype.itemsize


def _meminfo_available() -> int | None:
  """MemAvailable of /proc/meminfo in bytes, else the free physical pages."""
  try:
    for line in MEMINFO.read_text().splitlines():
      if line.startswith("MemAvailable:"):
        return int(line.split()[1]) * 1024
  except (OSError, ValueError, IndexError):
    pass
  try:
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
  except (OSError, ValueError, AttributeError):
    return None


def _cgroup_available() -> int | None:
  """The control group's memory limit less its usage, counting the inactive
  page cache (which the kernel reclaims before it kills) as free; None
  without a limit."""
  for limit_file, usage_file, stat_file, inactive_key in (
    ("memory.max", "memory.current", "memory.stat", "inactive_file"),  # cgroup v2
    (
      "memory/memory.limit_in_bytes",
      "memory/memory.usage_in_bytes",
      "memory/memory.stat",
      "total_inactive_file",
    ),  # cgroup v1, where "no limit" is a number near 2^63
  ):
    try:
      limit = (CGROUP_ROOT / limit_file).read_text().strip()
      if limit == "max":
        return None
      usage = int((CGROUP_ROOT / usage_file).read_text())
      stat = dict(line.split()[:2] for line in (CGROUP_ROOT / stat_file).read_text().splitlines())
      return int(limit) - usage + int(stat.get(inactive_key, 0))
    except (OSError, ValueError):
      continue
  return None


def _gb(num_bytes: int) -> str:
  return f"{num_bytes / 1e9:.3g} GB"
