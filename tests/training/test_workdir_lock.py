"""prepare_workdir's one-line errors and WorkdirLock, with real processes and real files.

Child processes load `workdir_lock.py` by its path rather than through `vae_jax`, whose
`__init__` imports JAX: the module needs only the standard library, and a child that starts
in a fraction of a second keeps these tests fast.
"""

from __future__ import annotations

import errno
import json
import os
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from vae_jax.training import workdir_lock
from vae_jax.training.workdir_lock import (
  LOCK_FILENAME,
  RunDirectoryBusyError,
  RunDirectoryError,
  WorkdirLock,
  prepare_workdir,
)

_MODULE_PATH = Path(workdir_lock.__file__).resolve()

# Loads the module in a child without importing `vae_jax` (and so JAX).
_LOAD_MODULE = f"""
import importlib.util
spec = importlib.util.spec_from_file_location("workdir_lock", {str(_MODULE_PATH)!r})
workdir_lock = importlib.util.module_from_spec(spec)
spec.loader.exec_module(workdir_lock)
"""

# The user the unwritable-directory test drops to: "nobody" on Debian and Red Hat alike.
_NOBODY = 65534

# Failing "at once" means without waiting for the holder; generous for a loaded CI machine.
_AT_ONCE_S = 1.0

# How long a test may run before it counts as hung; the holder child outlives it.
_HANG_S = 10


@pytest.fixture(autouse=True)
def _fail_instead_of_hanging():
  """A lock that blocks instead of failing at once would hang the suite; this fails the test.

  SIGALRM interrupts a blocking `flock` and the handler's exception ends it, so a broken
  LOCK_NB shows as a failure within seconds, even for a lock held by the test's own process.
  """

  def fail(signum, frame):
    raise TimeoutError(f"the test ran for over {_HANG_S} s: a lock blocked instead of failing")

  previous = signal.signal(signal.SIGALRM, fail)
  signal.alarm(_HANG_S)
  yield
  signal.alarm(0)
  signal.signal(signal.SIGALRM, previous)


def _assert_one_line(message: str, *parts: str) -> None:
  """The runner prints the message after "FATAL:"; it must be one line naming `parts`."""
  assert "\n" not in message and "\r" not in message, message
  for part in parts:
    assert part in message, (part, message)


def _start_holder(workdir: Path) -> subprocess.Popen:
  """A child that takes the lock on `workdir`, says "locked", then sleeps until killed."""
  code = _LOAD_MODULE + (
    f"import time\n"
    f"workdir_lock.WorkdirLock({str(workdir)!r}).__enter__()\n"
    f"print('locked', flush=True)\n"
    f"time.sleep({2 * _HANG_S})\n"
  )
  child = subprocess.Popen(
    [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
  )
  ready, _, _ = select.select([child.stdout], [], [], 10)
  line = child.stdout.readline() if ready else ""
  if line.strip() != "locked":
    child.kill()
    _, stderr = child.communicate()
    pytest.fail(f"the child did not take the lock: {line!r} {stderr}")
  return child


def test_lock_held_by_another_process_fails_at_once_and_frees_itself_when_it_is_killed(tmp_path):
  child = _start_holder(tmp_path)
  try:
    assert f"pid={child.pid} " in (tmp_path / LOCK_FILENAME).read_text()

    start = time.monotonic()
    with pytest.raises(RunDirectoryBusyError) as raised, WorkdirLock(str(tmp_path)):
      pytest.fail("took a lock that another process holds")
    assert time.monotonic() - start < _AT_ONCE_S
    message = str(raised.value)
    _assert_one_line(message, str(tmp_path), f"pid {child.pid}", "on host", "since")
    assert "wait for it to finish or stop it" in message
    assert "do not delete" in message
    assert child.poll() is None  # Still the holder: the failed attempt changed nothing.

    child.send_signal(signal.SIGKILL)
    child.wait(timeout=10)
  finally:
    child.kill()
    child.communicate()

  # No cleanup between: the kernel released the dead child's flock, and its stale pid is
  # overwritten.
  start = time.monotonic()
  with WorkdirLock(str(tmp_path)) as lock:
    assert time.monotonic() - start < _AT_ONCE_S
    assert lock.held
    text = (tmp_path / LOCK_FILENAME).read_text()
    assert text.startswith(f"pid={os.getpid()} ") and f"pid={child.pid} " not in text


def test_sequential_reuse_in_one_process_keeps_the_lock_file(tmp_path):
  lock_file = tmp_path / LOCK_FILENAME
  with WorkdirLock(str(tmp_path)) as lock:
    assert lock.held
    inode = lock_file.stat().st_ino
  assert not lock.held
  assert lock_file.exists()  # Deleting it would let two runs lock different inodes.

  with lock:  # The same object again...
    assert lock.held
  with WorkdirLock(str(tmp_path)):  # ...and a new one.
    assert lock_file.stat().st_ino == inode
  assert lock_file.exists()


def test_a_second_lock_in_the_same_process_is_busy(tmp_path):
  # flock locks open file descriptions, not processes: a second open of the file conflicts.
  with WorkdirLock(str(tmp_path)) as lock:
    with pytest.raises(RunDirectoryBusyError) as raised, WorkdirLock(str(tmp_path)):
      pytest.fail("took a lock that is already held")
    _assert_one_line(str(raised.value), str(tmp_path), f"pid {os.getpid()}")
    with pytest.raises(RuntimeError, match="already held"), lock:
      pass
    assert lock.held  # The misuse did not release it.


def test_stale_holder_text_is_overwritten_whole(tmp_path):
  lock_file = tmp_path / LOCK_FILENAME
  lock_file.write_text("pid=999999999 host=a-much-longer-host-name since=2000-01-01T00:00:00\n" * 3)
  with WorkdirLock(str(tmp_path)):
    lines = lock_file.read_text().splitlines()
  assert len(lines) == 1
  fields = dict(field.split("=", 1) for field in lines[0].split())
  assert fields.keys() == {"pid", "host", "since"}
  assert fields["pid"] == str(os.getpid())


@pytest.mark.parametrize(
  "text, expected",
  [
    ("", "has not yet written its pid"),
    ("garbage\nmore\n", "described as 'garbage'"),
  ],
)
def test_busy_error_is_one_line_whatever_the_lock_file_holds(tmp_path, text, expected):
  with WorkdirLock(str(tmp_path)):
    (tmp_path / LOCK_FILENAME).write_text(text)
    with pytest.raises(RunDirectoryBusyError) as raised, WorkdirLock(str(tmp_path)):
      pass
  _assert_one_line(str(raised.value), str(tmp_path), expected)


def test_lock_in_a_missing_directory_is_a_run_directory_error(tmp_path):
  missing = tmp_path / "missing"
  with pytest.raises(RunDirectoryError) as raised, WorkdirLock(str(missing)):
    pass
  assert not isinstance(raised.value, RunDirectoryBusyError)
  _assert_one_line(str(raised.value), str(missing), "No such file or directory")


def test_prepare_workdir_creates_parents_and_accepts_an_existing_directory(tmp_path):
  workdir = tmp_path / "a" / "b" / "run"
  prepare_workdir(str(workdir))
  assert workdir.is_dir()
  prepare_workdir(str(workdir))
  prepare_workdir(str(workdir) + "/")


def test_prepare_workdir_rejects_a_regular_file(tmp_path):
  path = tmp_path / "run"
  path.write_text("not a directory")
  with pytest.raises(RunDirectoryError) as raised:
    prepare_workdir(str(path))
  _assert_one_line(str(raised.value), str(path), "is a regular file", "--workdir")


@pytest.mark.parametrize(
  "below_the_file",
  [
    "run",  # The parent is a file.
    "run/deeper",  # A grandparent is a file: the error names it, not the first missing one.
    "",  # `file/`: ENOTDIR for open(2), EEXIST for mkdir(2).
    "../file/run",  # `..` through the file: ENOTDIR.
  ],
)
def test_prepare_workdir_rejects_a_file_among_the_parents(tmp_path, below_the_file):
  blocker = tmp_path / "file"
  blocker.write_text("in the way")
  path = f"{blocker}/{below_the_file}"
  with pytest.raises(RunDirectoryError) as raised:
    prepare_workdir(path)
  _assert_one_line(str(raised.value), path, str(blocker), "regular file")
  assert blocker.read_text() == "in the way"


def test_prepare_workdir_rejects_a_broken_symbolic_link(tmp_path):
  path = tmp_path / "run"
  path.symlink_to(tmp_path / "nowhere")
  with pytest.raises(RunDirectoryError) as raised:
    prepare_workdir(str(path))
  _assert_one_line(str(raised.value), str(path), "broken symbolic link")


def test_prepare_workdir_names_other_errors_by_their_errno_text(tmp_path):
  path = tmp_path / ("x" * 300) / "run"  # Longer than NAME_MAX (255) on every Linux file system.
  with pytest.raises(RunDirectoryError) as raised:
    prepare_workdir(str(path))
  _assert_one_line(str(raised.value), str(path), "File name too long (ENAMETOOLONG)", "shorter")
  assert isinstance(raised.value.__cause__, OSError)


@pytest.mark.parametrize(
  "code, expected",
  [
    (errno.ENOSPC, "No space left on device (ENOSPC): free disk space"),
    (errno.EROFS, "Read-only file system (EROFS): choose a --workdir on a writable"),
    (errno.EIO, "Input/output error (EIO): fix the cause"),
    # Permissions changed between the check with os.access and makedirs.
    (errno.EACCES, "Permission denied (EACCES) for user"),
  ],
)
def test_prepare_workdir_translates_errors_that_cannot_be_made_for_real(
  tmp_path, monkeypatch, code, expected
):
  # A full or read-only disk cannot be made in a test without mounting one.
  def fail(*args, **kwargs):
    raise OSError(code, os.strerror(code))  # OSError(EACCES, ...) is a PermissionError.

  monkeypatch.setattr(workdir_lock.os, "makedirs", fail)
  path = tmp_path / "run"
  with pytest.raises(RunDirectoryError) as raised:
    prepare_workdir(str(path))
  _assert_one_line(str(raised.value), str(path), expected)


def test_prepare_workdir_shows_an_unprintable_path_on_one_line(tmp_path):
  path = tmp_path / "bad\nname"
  path.write_text("")
  with pytest.raises(RunDirectoryError) as raised:
    prepare_workdir(str(path))
  _assert_one_line(str(raised.value), "bad\\nname")


def _searchable_by_others(path: Path) -> bool:
  """Whether every directory down to `path` lets other users through (o+x)."""
  return all(os.stat(part).st_mode & stat.S_IXOTH for part in [path, *path.parents])


def test_prepare_workdir_rejects_an_unwritable_directory():
  """An unwritable directory, and one in which the work directory would be created.

  Root bypasses permission bits, so as root the check runs in a child that drops to
  "nobody" first, on a root-owned 0o755 directory. pytest's tmp_path is 0o700 under a
  0o700 parent, which would hide the directory from "nobody" altogether, so the test makes
  its own directory in the system's temporary directory.
  """
  base = Path(tempfile.mkdtemp(prefix="test-workdir-lock-"))
  try:
    readonly = base / "readonly"
    readonly.mkdir()
    cases = [(str(readonly), str(readonly)), (str(readonly / "new" / "run"), str(readonly))]
    if os.geteuid() == 0:
      os.chmod(base, 0o755)
      os.chmod(readonly, 0o755)
      if not _searchable_by_others(base):
        pytest.skip(f"{base.parent} does not let other users through, so 'nobody' cannot test")
      code = _LOAD_MODULE + (
        f"import json, os\n"
        f"os.setgroups([])\n"
        f"os.setgid({_NOBODY})\n"
        f"os.setuid({_NOBODY})\n"
        f"results = []\n"
        f"for path, _ in {cases!r}:\n"
        f"  try:\n"
        f"    workdir_lock.prepare_workdir(path)\n"
        f"    results.append(None)\n"
        f"  except workdir_lock.RunDirectoryError as error:\n"
        f"    results.append(str(error))\n"
        f"print(json.dumps(results))\n"
      )
      child = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30
      )
      assert child.returncode == 0, child.stderr
      messages = json.loads(child.stdout)
    else:
      os.chmod(readonly, 0o555)
      if os.access(readonly, os.W_OK):
        pytest.skip("cannot drop privileges (not root) and permission bits do not bind this user")
      messages = []
      for path, _ in cases:
        with pytest.raises(RunDirectoryError) as raised:
          prepare_workdir(path)
        messages.append(str(raised.value))

    for (path, at_fault), message in zip(cases, messages, strict=True):
      assert message is not None, f"prepare_workdir({path!r}) succeeded"
      _assert_one_line(message, path, f"{at_fault} is not writable", "--workdir")
    assert not (readonly / "new").exists()
  finally:
    os.chmod(base, 0o700)
    shutil.rmtree(base, ignore_errors=True)
