"""Starting the runners of experiments/ as a user does, for the tests: the one
place that spells `python -m experiments.<name>` (the `runner` fixture of
conftest.py hands these out)."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_runner(
  name: str, *flags: str, check: bool = False, timeout: float = 300, env=None
) -> subprocess.CompletedProcess:
  """`python -m experiments.<name> <flags>` from the repository root, to its
  end, output captured."""
  return run_python("-m", f"experiments.{name}", *flags, check=check, timeout=timeout, env=env)


def start_runner(name: str, *flags: str, **popen_kwargs) -> subprocess.Popen:
  """The same runner started in the background (signal and kill tests)."""
  return start_python("-m", f"experiments.{name}", *flags, **popen_kwargs)


def start_python(*args: str, **popen_kwargs) -> subprocess.Popen:
  """`python <args>` from the repository root, in the background."""
  return subprocess.Popen([sys.executable, *args], cwd=REPO, **popen_kwargs)


def run_python(
  *args: str, check: bool = False, timeout: float = 300, env=None
) -> subprocess.CompletedProcess:
  """`python <args>` (`-c code ...`, `-m module ...`) from the repository root,
  output captured."""
  return subprocess.run(
    [sys.executable, *args],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=timeout,
    check=check,
    env=env,
  )
