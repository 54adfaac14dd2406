"""The runners' one-line stops (`config_flags.run_main`) for the faults no other
test provokes: an out-of-memory error at run time, a full disk, Ctrl-C outside
the loop, a library setting out of range."""

import errno

import pytest
from runners import run_python

RAISE = {
  "out_of_memory": "jax.errors.JaxRuntimeError('RESOURCE_EXHAUSTED: Out of memory "
  "while trying to allocate 313.60GiB.')",
  "full_disk": f"OSError({errno.ENOSPC}, 'No space left on device', '/runs/x/checkpoints')",
  "ctrl_c": "KeyboardInterrupt()",
  "setting": "ConfigError('num_runs', 'num_runs must be >= 1, got 0.')",
}


@pytest.mark.parametrize(
  "fault, status, line",
  [
    (
      "out_of_memory",
      1,
      "FATAL: out of memory while training or evaluating; the last "
      "checkpoint is kept: lower --batch_size or --num_samples",
    ),
    (
      "full_disk",
      1,
      "FATAL: No space left on device (/runs/x/checkpoints) [ENOSPC]: free disk "
      "space, then rerun the same command to resume.",
    ),
    ("ctrl_c", 130, "Interrupted outside training; the run directory keeps what it had saved."),
    ("setting", 1, "FATAL: --num_seeds: num_runs must be >= 1, got 0."),
  ],
)
def test_a_stop_is_one_line_with_a_non_zero_status(fault, status, line):
  code = (
    "import jax\n"
    "from experiments import config_flags\n"
    "from vae_jax.errors import ConfigError\n"
    "def main(argv):\n"
    f"  raise {RAISE[fault]}\n"
    "config_flags.run_main(main)\n"
  )
  result = run_python("-c", code, timeout=120)
  assert result.returncode == status
  assert result.stderr.strip().splitlines()[-1].startswith(line), result.stderr[-2000:]
  assert "Traceback" not in result.stderr
