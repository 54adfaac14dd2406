r"""Trains a VAE with AEVB: `python -m experiments.train [--flagfile=...] [--flags]`.

Examples:
  python -m experiments.train                                # digits, seconds on a CPU
  python -m experiments.train --flagfile=experiments/configs/mnist.flags
  python -m experiments.train --flagfile=experiments/configs/frey_face.flags

Rerunning the same command on the same --workdir resumes from its last
checkpoint. The shared flags are in `experiments.config_flags`; see README.md
for the data sets and offline preparation.

Multi-host data-parallel training: start the same command on every host, with
--coordinator_address=<host 0>:<port> --num_processes=<hosts>
--process_id=<0, 1, ...> and --num_devices=0 (every device of every host).
"""

from __future__ import annotations

import os

import jax
from absl import app, flags, logging

from experiments import config_flags
from vae_jax.figures.run_figures import train_and_draw
from vae_jax.training.loop import Hook

_COORDINATOR_ADDRESS = flags.DEFINE_string(
  "coordinator_address",
  None,
  "host:port of process 0 for multi-process training (jax.distributed.initialize); "
  "every process gets the same value. Unset: a single process.",
)
_NUM_PROCESSES = flags.DEFINE_integer(
  "num_processes",
  None,
  "Processes of a multi-process run (with --coordinator_address).",
  lower_bound=1,
)
_PROCESS_ID = flags.DEFINE_integer(
  "process_id",
  None,
  "This process's index in [0, --num_processes) "
  "(with --coordinator_address); process 0 writes the files and the log.",
  lower_bound=0,
)


@flags.multi_flags_validator(["coordinator_address", "num_processes", "process_id"])
def _check_distributed_flags(values) -> bool:
  """The three multi-process flags come together, with a valid process id."""
  address, num_processes, process_id = (
    values["coordinator_address"],
    values["num_processes"],
    values["process_id"],
  )
  if address is None:
    if num_processes is not None or process_id is not None:
      raise flags.ValidationError("--num_processes and --process_id need --coordinator_address.")
    return True
  host, _, port = address.rpartition(":")
  if not host or not port.isdigit():
    raise flags.ValidationError(f"--coordinator_address must be host:port, got {address!r}.")
  if num_processes is None or process_id is None:
    raise flags.ValidationError("--coordinator_address needs --num_processes and --process_id.")
  if process_id >= num_processes:
    raise flags.ValidationError(
      f"--process_id={process_id} must be < --num_processes={num_processes}."
    )
  return True


def initialize_distributed_from_flags() -> None:
  """Joins the processes of a multi-process run; must precede any other JAX use.

  On CPU, the processes' collectives go through gloo, jax's default
  `jax_cpu_collectives_implementation` (jax 0.10).
  """
  if _COORDINATOR_ADDRESS.value is not None:
    jax.distributed.initialize(
      _COORDINATOR_ADDRESS.value,
      num_processes=_NUM_PROCESSES.value,
      process_id=_PROCESS_ID.value,
    )


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  initialize_distributed_from_flags()
  config = config_flags.config_from_flags()
  # Every process loads the whole data set: the data is replicated on every device.
  dataset = config_flags.load_data(config.data)
  model = config_flags.make_model(config, dataset)
  run = config.run
  logging.info(
    "Training %s on %s (%d train / %d test) for %d epochs in %s",
    model.likelihood,
    dataset.name,
    dataset.train.shape[0],
    dataset.test.shape[0],
    run.num_epochs,
    run.workdir,
  )
  train_and_draw(
    model, config.train, run, dataset, log=logging.info, hooks=[FlagsFile(run.workdir)]
  )


class FlagsFile(Hook):
  """Writes the command's flags to <workdir>/flags.txt once the run directory
  is this process's (locked, its settings checked): another run's keeps its own."""

  def __init__(self, workdir: str):
    self._path = os.path.join(workdir, "flags.txt")

  def on_start(self) -> None:
    if jax.process_index() == 0:
      with open(self._path, "w", encoding="utf-8") as f:
        f.write(flags.FLAGS.flags_into_string())


if __name__ == "__main__":
  config_flags.run_main(main)
