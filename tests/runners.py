"""A module of experiments/ run as a user runs it, for the runner tests."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_module(module: str, *flags: str, check: bool = False) -> subprocess.CompletedProcess:
  """`python -m <module> <flags>` from the repository root, output captured."""
  return subprocess.run(
    [sys.executable, "-m", module, *flags],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
    check=check,
  )
