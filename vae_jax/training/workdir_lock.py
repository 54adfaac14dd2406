"""A work directory a run can use: created with clear errors, and locked to one run at a time.

`prepare_workdir` creates the directory and turns every way it can be unusable (a file in
the way, no permission, a full or read-only disk) into a `RunDirectoryError` whose one-line
message names the cause, the path and what to do, instead of a raw `OSError` traceback.

`WorkdirLock` holds an exclusive `flock` on `<workdir>/.lock` for the whole run, so that a
second run in the same directory stops at once (`RunDirectoryBusyError`) instead of
interleaving its checkpoints and metrics with the first's. The kernel releases a flock when
its holder dies, however it dies, so a killed run never leaves a lock that blocks the next
one; the holder's pid, host and start time in the file are only there to name the holder in
the error, and the next holder overwrites them.

This module imports only the standard library, so that it can be used (and tested) before
JAX is imported.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import os
import pwd
import socket
import stat
from types import TracebackType

LOCK_FILENAME = ".lock"

# Holder details longer than this are not ours; reading more would only slow the error down.
_MAX_HOLDER_BYTES = 4096

# What the user can do about an OSError that has nothing to do with the path's shape or
# permissions; the default covers the rest.
_NEXT_STEP_BY_ERRNO = {
  errno.ENOSPC: "free disk space or choose another --workdir",
  errno.EDQUOT: "free space within your disk quota or choose another --workdir",
  errno.EROFS: "choose a --workdir on a writable file system",
  errno.ENAMETOOLONG: "choose a shorter --workdir",
  errno.ELOOP: "fix the symbolic links in the path or choose another --workdir",
}
_DEFAULT_NEXT_STEP = "fix the cause or choose another --workdir"


class RunDirectoryError(RuntimeError):
  """A work directory that a run cannot use.

  The message is one line (cause, path, next step) because the runner prints it after
  "FATAL:" in place of a traceback: the user needs to know what to change, not where in
  the code the problem was found.
  """


class RunDirectoryBusyError(RunDirectoryError):
  """Another live process holds the work directory's lock; nothing in the directory changed."""


def _show(path: str) -> str:
  """The path as the message shows it: itself if printable, else escaped.

  A path may contain newlines or control characters; printed raw, they would break the
  one-line message (or the terminal), so such a path is shown as a Python literal.
  """
  return path if path.isprintable() else ascii(path)


def _errno_text(error: OSError) -> str:
  """E.g. "No space left on device (ENOSPC)": the reader may search for either half."""
  if error.errno is None:
    return str(error)
  name = errno.errorcode.get(error.errno, f"errno {error.errno}")
  return f"{os.strerror(error.errno)} ({name})"


def _user() -> str:
  """Who lacks the permission: permissions depend on it, and a run may run as another user."""
  uid = os.geteuid()
  try:
    return f"user {pwd.getpwuid(uid).pw_name} (uid {uid})"
  except KeyError:  # A uid with no passwd entry, as in many containers.
    return f"uid {uid}"


def _not_a_directory(path: str) -> str:
  """What is at `path` instead of a directory, in the words a user would check it with."""
  if os.path.islink(path) and not os.path.exists(path):
    return "a broken symbolic link"
  try:
    mode = os.stat(path).st_mode
  except OSError:
    return "not a directory"
  if stat.S_ISREG(mode):
    return "a regular file, not a directory"
  return "not a directory (a device, socket or pipe)"


def _not_writable(path: str) -> str:
  """Why `path` cannot be written: a read-only file system needs another fix than permissions."""
  try:
    read_only = bool(os.statvfs(path).f_flag & os.ST_RDONLY)
  except OSError:
    read_only = False
  if read_only:
    return f"{_show(path)} is on a read-only file system: choose a --workdir on a writable one"
  return (
    f"{_show(path)} is not writable by {_user()}: fix its permissions (chmod/chown) or "
    "choose another --workdir"
  )


def prepare_workdir(workdir: str) -> None:
  """Creates `workdir` and its missing parents, or says in one line why it cannot.

  Checking the path before creating it gives each failure its own cause and fix ("a parent
  is a regular file" rather than makedirs' "Not a directory"), and naming the component at
  fault saves the user from testing each one. `os.makedirs` still runs last and its errors
  are translated too, because the checks can race with other processes and cannot foresee
  every error (a full disk, a quota).

  Args:
    workdir: the run's work directory; relative paths are relative to the current directory.

  Raises:
    RunDirectoryError: the directory cannot be created or written; nothing was created.
  """
  path = os.fspath(workdir)
  if not path:
    raise RunDirectoryError("the work directory is an empty path: pass a directory as --workdir")
  shown = _show(path)
  absolute = os.path.abspath(path)

  # The deepest component that exists. `lexists` is False where a parent is a file
  # (ENOTDIR) or cannot be searched (EACCES), so the walk stops at the component at fault.
  existing = absolute
  while not os.path.lexists(existing):
    parent = os.path.dirname(existing)
    if parent == existing:
      break
    existing = parent

  if existing == absolute:
    if not os.path.isdir(absolute):
      raise RunDirectoryError(
        f"{shown} is {_not_a_directory(absolute)}: choose another --workdir or move it away"
      )
    if not os.access(absolute, os.W_OK | os.X_OK):
      raise RunDirectoryError(_not_writable(absolute))
    return

  if not os.path.isdir(existing):
    raise RunDirectoryError(
      f"cannot create {shown}: its parent {_show(existing)} is {_not_a_directory(existing)}: "
      "choose another --workdir"
    )
  if not os.access(existing, os.W_OK | os.X_OK):
    raise RunDirectoryError(f"cannot create {shown}: {_not_writable(existing)}")

  try:
    os.makedirs(absolute, exist_ok=True)
  except PermissionError as error:
    raise RunDirectoryError(
      f"cannot create {shown}: {_errno_text(error)} for {_user()}: fix the permissions of "
      "its parents or choose another --workdir"
    ) from error
  except (FileExistsError, NotADirectoryError) as error:
    # Something other than a directory appeared in the path after the checks above.
    raise RunDirectoryError(
      f"cannot create {shown}: a component of the path is not a directory "
      f"({_errno_text(error)}): choose another --workdir"
    ) from error
  except OSError as error:
    next_step = _NEXT_STEP_BY_ERRNO.get(error.errno, _DEFAULT_NEXT_STEP)
    raise RunDirectoryError(f"cannot create {shown}: {_errno_text(error)}: {next_step}") from error


def _holder_line() -> str:
  """This process as the lock file names it: one `key=value` line a person can read too."""
  since = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
  return f"pid={os.getpid()} host={socket.gethostname()} since={since}\n"


def _describe_holder(text: str) -> str:
  """The holder as the busy error names it, from the lock file's text.

  The file may be empty or stale for an instant (the holder has locked it but not yet
  written its line), or written by something else: the error must still be one line.
  """
  line = text.splitlines()[0].strip() if text.strip() else ""
  fields = dict(part.partition("=")[::2] for part in line.split())
  if {"pid", "host", "since"} <= fields.keys():
    return f"pid {fields['pid']} on host {fields['host']} since {fields['since']}"
  if not line:
    return "a process that has not yet written its pid"
  return f"a process described as {ascii(line[:200])}"


class WorkdirLock:
  """An exclusive lock on a work directory for as long as the `with` block runs.

  Usage:

      prepare_workdir(workdir)
      with WorkdirLock(workdir):
        ...  # the run: only this process writes the directory

  The lock is a non-blocking `flock` on `<workdir>/.lock`, held through an open file
  descriptor. The kernel drops it when the descriptor closes, including when the process
  is killed, so a lock never outlives its run and nobody needs to delete the file. The file
  is kept on exit on purpose: were it deleted, a process that had opened the old file could
  lock that inode while another creates and locks a new one, and both would run.

  The descriptor is not inherited across `exec`; a child made with a bare `fork` (e.g.
  multiprocessing's "fork" start method) shares it, so such a child keeps the lock until it
  exits too. On NFS, Linux implements flock with byte-range locks, which work across hosts.

  Attributes:
    workdir: the locked directory, as given.
    path: the lock file, `<workdir>/.lock`.
  """

  def __init__(self, workdir: str):
    self.workdir = os.fspath(workdir)
    self.path = os.path.join(self.workdir, LOCK_FILENAME)
    self._fd: int | None = None

  def __enter__(self) -> WorkdirLock:
    """Takes the lock at once or raises; it never waits for another run to finish.

    Raises:
      RunDirectoryBusyError: another process holds the lock.
      RunDirectoryError: the lock file cannot be created, opened or locked.
      RuntimeError: this object already holds the lock (a programming error).
    """
    if self._fd is not None:
      raise RuntimeError(f"WorkdirLock({self.workdir!r}) is already held by this object")
    try:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as error:
      raise RunDirectoryError(
        f"cannot open the lock file {_show(self.path)}: {_errno_text(error)}: check that "
        "the work directory exists and is writable, or choose another --workdir"
      ) from error
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as error:
      holder = _describe_holder(self._read(fd))
      os.close(fd)
      raise RunDirectoryBusyError(
        f"work directory {_show(self.workdir)} is in use by another run, {holder}: wait for "
        "it to finish or stop it, then run again; do not delete the lock file "
        f"{_show(self.path)} (a dead process's lock frees itself)"
      ) from error
    except OSError as error:
      os.close(fd)
      raise RunDirectoryError(
        f"cannot lock {_show(self.path)}: {_errno_text(error)}: choose a --workdir on a file "
        "system that supports file locks"
      ) from error
    try:
      os.ftruncate(fd, 0)
      os.pwrite(fd, _holder_line().encode(), 0)
    except OSError as error:
      os.close(fd)  # Closing releases the lock.
      next_step = _NEXT_STEP_BY_ERRNO.get(error.errno, _DEFAULT_NEXT_STEP)
      raise RunDirectoryError(
        f"cannot write the lock file {_show(self.path)}: {_errno_text(error)}: {next_step}"
      ) from error
    self._fd = fd
    return self

  def __exit__(
    self,
    exc_type: type[BaseException] | None,
    exc: BaseException | None,
    traceback: TracebackType | None,
  ) -> None:
    """Releases the lock and keeps the file (see the class docstring for why)."""
    fd, self._fd = self._fd, None
    if fd is None:
      return
    try:
      fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
      os.close(fd)

  @property
  def held(self) -> bool:
    """Whether this object holds the lock now."""
    return self._fd is not None

  @staticmethod
  def _read(fd: int) -> str:
    """The lock file's text, for naming its holder; empty if it cannot be read."""
    try:
      return os.pread(fd, _MAX_HOLDER_BYTES, 0).decode(errors="replace")
    except OSError:
      return ""
