"""osutil.signals: a signal's work runs on a helper thread, so the handler never waits for a
lock the interrupted main thread holds (the demo once ignored a Ctrl-C for ten minutes)."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator

import pytest

from osutil.signals import SignalRelay

BOUND_S = 30  # a bound for a loaded machine; every wait below returns as soon as it can


@pytest.fixture
def usr_handlers() -> Iterator[None]:
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGUSR1, signal.SIGUSR2)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def test_a_signal_landing_while_the_main_thread_holds_the_callbacks_lock_does_not_deadlock(
        usr_handlers: None) -> None:
    lock = threading.Lock()  # as threading.Event's own: not re-entrant
    seen: list[tuple[int, bool, bool]] = []
    done = threading.Event()

    def callback(signum: int) -> None:
        got = lock.acquire(timeout=BOUND_S)  # on the main thread this could never succeed
        seen.append((signum, got, threading.current_thread() is threading.main_thread()))
        if got:
            lock.release()
        done.set()

    with SignalRelay((signal.SIGUSR1,), callback):
        with lock:  # the main thread inside Event.wait(), where a signal can land
            handler = signal.getsignal(signal.SIGUSR1)
            assert callable(handler)
            handler(signal.SIGUSR1, None)  # returns at once: it only writes to a pipe
            assert not done.is_set()  # the callback waits for this lock, elsewhere
        assert done.wait(BOUND_S)
    assert seen == [(signal.SIGUSR1, True, False)]


def test_real_signals_reach_the_callback_in_order_each_once(usr_handlers: None) -> None:
    seen: list[int] = []
    arrived = threading.Semaphore(0)

    def callback(signum: int) -> None:
        seen.append(signum)
        arrived.release()

    with SignalRelay((signal.SIGUSR1, signal.SIGUSR2), callback):
        for sig in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGUSR1):
            os.kill(os.getpid(), sig)
            assert arrived.acquire(timeout=BOUND_S)
    assert seen == [signal.SIGUSR1, signal.SIGUSR2, signal.SIGUSR1]


def test_restore_puts_the_previous_handlers_back_and_the_helper_thread_ends(
        usr_handlers: None) -> None:
    def previous(_signum: int, _frame: object) -> None:
        raise AssertionError("not called")

    signal.signal(signal.SIGUSR1, previous)
    relay = SignalRelay((signal.SIGUSR1,), lambda _signum: None, "relay-under-test")
    relay.install()
    assert signal.getsignal(signal.SIGUSR1) == relay.handle
    helper = next(t for t in threading.enumerate() if t.name == "relay-under-test")
    relay.restore()
    assert signal.getsignal(signal.SIGUSR1) is previous
    helper.join(BOUND_S)
    assert not helper.is_alive()
    relay.handle(signal.SIGUSR1, None)  # a late call after restore changes nothing


def test_a_callback_that_raises_is_logged_and_the_next_signal_still_arrives(
        usr_handlers: None, caplog: pytest.LogCaptureFixture) -> None:
    seen: list[int] = []
    arrived = threading.Semaphore(0)

    def callback(signum: int) -> None:
        seen.append(signum)
        arrived.release()
        if len(seen) == 1:
            raise RuntimeError("a bug in the first handling")

    with SignalRelay((signal.SIGUSR1,), callback, "relay-under-test"):
        for _ in range(2):
            os.kill(os.getpid(), signal.SIGUSR1)
            assert arrived.acquire(timeout=BOUND_S)
    assert seen == [signal.SIGUSR1, signal.SIGUSR1]
    assert any("the handler failed" in r.getMessage() and r.exc_info
               for r in caplog.records)
