"""Stopping a run cleanly on Ctrl-C or SIGTERM, between compiled programs.

Python runs a signal handler in the main thread between bytecodes, so while
an epoch or an evaluation runs as one compiled JAX call the handler waits for
that call to return. `StopRequests` makes the handler only record the signal;
the training loop polls `requested` after each epoch and evaluation, saves,
and raises `TrainingInterrupted` with a one-line message saying how to resume,
instead of a KeyboardInterrupt traceback from wherever the signal landed (or
no traceback at all, for SIGTERM's default of killing the process).

A second Ctrl-C while a stop is pending raises KeyboardInterrupt at once, so
a user who cannot wait for the epoch in flight still gets the usual escape.

The module uses only the standard library, so that a runner can import it
before JAX.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType

# What the loop stops on: Ctrl-C, and the polite kill of `kill`, schedulers and containers.
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequests:
  """Records SIGINT and SIGTERM while active instead of letting them act.

  On entry in the main thread it installs, for SIGINT and SIGTERM, a handler
  that records the first signal's name and logs nothing (the loop says what
  it does about it, once, when it stops); on exit it puts back exactly the
  handlers it found. A second SIGINT while a stop is already requested
  raises KeyboardInterrupt from the handler: the user insists, so the
  default behaviour returns. Further SIGTERMs are ignored, since the stop
  they ask for is already under way.

  Outside the main thread Python cannot install signal handlers; there the
  context does nothing and `requested` stays None, so code that trains in a
  worker thread runs unchanged (signals then act as they would without it).
  A signal whose current handler was not installed from Python
  (`signal.getsignal` returns None) is left alone too, because that handler
  could not be put back.

  Nesting: entering an instance that is already active raises RuntimeError
  and changes nothing. Distinct instances may nest if they exit in reverse
  order of entry (as `with` blocks do): the inner one records the signals
  while it is active and then restores the outer one's handlers. Exiting
  them out of order would restore stale handlers, and is not supported.

  Example:
    with StopRequests() as stop:
      for epoch in epochs:
        state = train_epoch(state)
        if stop.requested:
          save(state)
          raise TrainingInterrupted(stop.requested, "stopped; rerun to resume")
  """

  def __init__(self) -> None:
    self._requested: str | None = None
    self._previous: dict[signal.Signals, object] = {}
    self._active = False

  @property
  def requested(self) -> str | None:
    """The name of the first signal received while active (e.g. "SIGINT"), else None.

    It keeps its value after exit, so the caller can still read why it stopped.
    """
    return self._requested

  def __enter__(self) -> StopRequests:
    if self._active:
      raise RuntimeError("StopRequests is already active; use a new instance to nest")
    self._requested = None
    self._previous = {}
    self._active = True
    if threading.current_thread() is not threading.main_thread():
      return self
    try:
      for signum in _SIGNALS:
        previous = signal.getsignal(signum)
        if previous is None:
          continue
        signal.signal(signum, self._handle)
        self._previous[signum] = previous
    except BaseException:
      # Undo a partial installation, so that a failed entry leaves no handler of ours behind.
      self._restore()
      raise
    return self

  def __exit__(
    self,
    exc_type: type[BaseException] | None,
    exc: BaseException | None,
    traceback: TracebackType | None,
  ) -> None:
    self._restore()

  def _restore(self) -> None:
    previous, self._previous = self._previous, {}
    self._active = False
    for signum, handler in previous.items():
      signal.signal(signum, handler)

  def _handle(self, signum: int, frame: FrameType | None) -> None:
    del frame
    if self._requested is None:
      self._requested = signal.Signals(signum).name
    elif signum == signal.SIGINT:
      raise KeyboardInterrupt


class TrainingInterrupted(RuntimeError):  # noqa: N818 (a requested stop, not an error)
  """Training stopped on a signal after saving; the message says how to resume.

  A distinct type lets a runner print just the message and exit with
  `exit_status`, rather than a traceback: the stop was asked for, not a bug.

  Attributes:
    signal_name: the signal that asked for the stop, e.g. "SIGTERM".
  """

  def __init__(self, signal_name: str, message: str):
    if "\n" in message or "\r" in message:
      raise ValueError(f"the message must be one line, got {message!r}")
    super().__init__(message)
    self.signal_name = signal_name

  @property
  def message(self) -> str:
    """The one line to show the user."""
    return str(self.args[0])

  @property
  def exit_status(self) -> int:
    """The status to exit with, `exit_status(self.signal_name)`."""
    return exit_status(self.signal_name)


def exit_status(signal_name: str) -> int:
  """The shell's status for a process ended by a signal: 128 + its number.

  Exiting with it tells a shell or scheduler that the run was stopped by the
  signal (130 for SIGINT, 143 for SIGTERM) rather than finished or failed.

  Raises:
    ValueError: `signal_name` names no signal of this platform.
  """
  try:
    signum = signal.Signals[signal_name]
  except KeyError:
    raise ValueError(f"unknown signal name: {signal_name!r}") from None
  return 128 + int(signum)
