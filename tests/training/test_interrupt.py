"""StopRequests and TrainingInterrupted, with real signals sent to this process and to a child.

Every in-process test runs under `fallback_handlers`, which installs recording
handlers for SIGINT and SIGTERM around it: if StopRequests failed to install
its own, a signal sent here would otherwise abort the pytest run (SIGINT) or
kill its worker (SIGTERM) instead of failing one test.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from vae_jax.training import interrupt
from vae_jax.training.interrupt import StopRequests, TrainingInterrupted, exit_status

_MODULE_PATH = Path(interrupt.__file__).resolve()


@pytest.fixture
def fallback_handlers():
  """Records, outside StopRequests, the signals that reach Python; restores the originals."""
  if threading.current_thread() is not threading.main_thread():
    pytest.skip("signal handlers can only be installed in the main thread")
  received: list[int] = []
  fallback = lambda signum, frame: received.append(signum)
  originals = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
  for signum in originals:
    signal.signal(signum, fallback)
  try:
    yield fallback, received
  finally:
    for signum, handler in originals.items():
      signal.signal(signum, handler)


def _send(signum: int, until=None, timeout: float = 5.0, interrupt_expected: bool = False) -> None:
  """Sends `signum` to this process and waits until the handler has run (`until()` holds).

  The kernel may deliver the signal to any thread and Python runs the handler
  in the main thread at its next check, so the wait polls rather than assumes;
  without `until` it gives the handler a moment. An unexpected KeyboardInterrupt
  becomes a test failure, since pytest would take it as the user's and stop the run.
  """
  try:
    os.kill(os.getpid(), signum)
    if until is None:
      time.sleep(0.05)
      return
    deadline = time.monotonic() + timeout
    while not until():
      if time.monotonic() > deadline:
        raise AssertionError(f"no handler ran for {signal.Signals(signum).name} in {timeout}s")
      time.sleep(0.001)
  except KeyboardInterrupt:
    if interrupt_expected:
      raise
    raise AssertionError(f"{signal.Signals(signum).name} raised KeyboardInterrupt") from None


def _current_handlers() -> dict[int, object]:
  return {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}


@pytest.mark.parametrize("signum, name", [(signal.SIGINT, "SIGINT"), (signal.SIGTERM, "SIGTERM")])
def test_records_the_signal_silently(fallback_handlers, signum, name, capfd, caplog):
  _, received = fallback_handlers
  caplog.set_level(logging.DEBUG)
  with StopRequests() as stop:
    assert stop.requested is None
    _send(signum, lambda: stop.requested is not None)
    assert stop.requested == name
  assert stop.requested == name, "the reason must survive the exit"
  assert received == [], "the signal reached the handler outside the context"
  out, err = capfd.readouterr()
  assert (out, err) == ("", "")
  assert caplog.records == []


def test_keeps_the_first_signal(fallback_handlers):
  with StopRequests() as stop:
    _send(signal.SIGTERM, lambda: stop.requested is not None)
    # A second SIGTERM is absorbed: it neither replaces the reason nor raises.
    _send(signal.SIGTERM)
    assert stop.requested == "SIGTERM"


def test_restores_the_previous_handlers(fallback_handlers):
  fallback, received = fallback_handlers
  before = _current_handlers()
  assert before == {signal.SIGINT: fallback, signal.SIGTERM: fallback}
  with StopRequests():
    during = _current_handlers()
    assert all(during[signum] is not fallback for signum in during)
  assert _current_handlers() == before
  # The restored handlers are live again, not just reported.
  _send(signal.SIGTERM, lambda: received == [signal.SIGTERM])


def test_restores_default_and_ignored_handlers(fallback_handlers):
  signal.signal(signal.SIGINT, signal.default_int_handler)
  signal.signal(signal.SIGTERM, signal.SIG_IGN)
  with StopRequests():
    pass
  assert _current_handlers() == {
    signal.SIGINT: signal.default_int_handler,
    signal.SIGTERM: signal.SIG_IGN,
  }
  signal.signal(signal.SIGTERM, signal.SIG_DFL)
  with StopRequests():
    pass
  assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_restores_the_handlers_after_an_exception(fallback_handlers):
  before = _current_handlers()
  with pytest.raises(ZeroDivisionError), StopRequests():
    _ = 1 / 0
  assert _current_handlers() == before


@pytest.mark.parametrize("first", [signal.SIGINT, signal.SIGTERM])
def test_a_sigint_after_a_request_raises_keyboard_interrupt(fallback_handlers, first):
  _, received = fallback_handlers
  before = _current_handlers()
  stop = StopRequests()
  with pytest.raises(KeyboardInterrupt), stop:
    _send(first, lambda: stop.requested is not None)
    # Only the KeyboardInterrupt ends the wait.
    _send(signal.SIGINT, lambda: False, interrupt_expected=True)
  assert stop.requested == signal.Signals(first).name
  assert _current_handlers() == before
  assert received == []


def test_does_nothing_outside_the_main_thread(fallback_handlers):
  before = _current_handlers()
  seen = {}

  def work():
    try:
      with StopRequests() as stop:
        seen["during"] = _current_handlers()
        seen["requested"] = stop.requested
      seen["after"] = stop.requested
    except BaseException as error:  # The test reports whatever it was.
      seen["error"] = error

  thread = threading.Thread(target=work)
  thread.start()
  thread.join(timeout=10)
  assert not thread.is_alive()
  assert "error" not in seen, seen.get("error")
  assert seen == {"during": before, "requested": None, "after": None}
  assert _current_handlers() == before


def test_nested_instances_restore_in_order(fallback_handlers):
  before = _current_handlers()
  with StopRequests() as outer:
    outer_handlers = _current_handlers()
    with StopRequests() as inner:
      _send(signal.SIGTERM, lambda: inner.requested is not None)
    assert _current_handlers() == outer_handlers
    assert outer.requested is None
  assert _current_handlers() == before


def test_reentering_an_active_instance_raises_and_changes_nothing(fallback_handlers):
  before = _current_handlers()
  stop = StopRequests()
  with stop:
    during = _current_handlers()
    with pytest.raises(RuntimeError, match="already active"), stop:
      pass
    assert _current_handlers() == during
  assert _current_handlers() == before


def test_an_instance_can_be_reused(fallback_handlers):
  stop = StopRequests()
  with stop:
    _send(signal.SIGINT, lambda: stop.requested is not None)
  with stop:
    assert stop.requested is None, "a new entry starts with no request"


_CHILD = textwrap.dedent(
  """
  import importlib.util, sys, time
  spec = importlib.util.spec_from_file_location("interrupt", sys.argv[1])
  interrupt = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(interrupt)
  with interrupt.StopRequests() as stop:
    print("ready", flush=True)
    deadline = time.monotonic() + 60
    while stop.requested is None and time.monotonic() < deadline:
      sum(range(1000))  # Short work, as an epoch between checks.
  print(stop.requested, flush=True)
  sys.exit(0 if stop.requested else 1)
  """
)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_child_process_stops_cleanly(signum):
  # The module is loaded by path, so the child needs no JAX and proves the module's
  # standard-library-only promise.
  child = subprocess.Popen(
    [sys.executable, "-c", _CHILD, str(_MODULE_PATH)],
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  try:
    ready, _, _ = select.select([child.stdout], [], [], 60)
    assert ready, "the child never became ready"
    assert child.stdout.readline() == "ready\n"
    child.send_signal(signum)
    out, err = child.communicate(timeout=60)
  finally:
    if child.poll() is None:
      child.kill()
      child.communicate()
  assert (child.returncode, out, err) == (0, f"{signal.Signals(signum).name}\n", "")


def test_exit_status():
  assert exit_status("SIGINT") == 130
  assert exit_status("SIGTERM") == 143
  with pytest.raises(ValueError, match="unknown signal name"):
    exit_status("SIGNOPE")


def test_training_interrupted():
  error = TrainingInterrupted("SIGTERM", "stopped at epoch 3; rerun the command to resume")
  assert isinstance(error, RuntimeError)
  assert error.signal_name == "SIGTERM"
  assert str(error) == error.message == "stopped at epoch 3; rerun the command to resume"
  assert error.exit_status == 143
  with pytest.raises(ValueError, match="one line"):
    TrainingInterrupted("SIGINT", "stopped\nTraceback ...")
