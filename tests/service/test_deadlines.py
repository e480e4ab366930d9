"""The in-process executor's deadline watchdog (``service.jobs.inprocess.Deadlines``): one
thread for every attempt's time limit, calls at their deadlines, none after a cancel or stop."""

from __future__ import annotations

import threading
import time

from service.jobs.inprocess import Deadlines


def test_calls_come_at_their_deadlines_in_order_on_one_thread() -> None:
    deadlines = Deadlines()
    calls: list[tuple[str, float]] = []
    done = threading.Event()
    start = time.monotonic()
    before = threading.active_count()

    def call(name: str) -> None:
        calls.append((name, time.monotonic() - start))
        if len(calls) == 3:
            done.set()

    deadlines.call_later(0.6, call, "late")
    deadlines.call_later(0.4, call, "middle")
    for _ in range(50):  # many pending deadlines, one watchdog thread
        deadlines.call_later(30, call, "never").cancel()
    deadlines.call_later(0.2, call, "early")  # earlier than all: the sleeping watchdog wakes
    assert threading.active_count() <= before + 1
    assert done.wait(5)
    assert [name for name, _ in calls] == ["early", "middle", "late"]
    for (_, at), due in zip(calls, (0.2, 0.4, 0.6), strict=True):
        assert due <= at < due + 0.3
    assert len(deadlines) == 0
    deadlines.stop()


def test_a_cancelled_or_stopped_deadline_never_calls() -> None:
    deadlines = Deadlines()
    calls: list[str] = []
    deadlines.call_later(0.1, calls.append, "cancelled").cancel()
    deadlines.call_later(0.2, calls.append, "stopped")
    fired = threading.Event()
    deadlines.call_later(0.05, lambda: fired.set())
    assert fired.wait(5)
    deadlines.stop()
    time.sleep(0.4)
    assert calls == []
    late = deadlines.call_later(0.01, calls.append, "after stop")
    time.sleep(0.1)
    assert calls == [] and late.cancelled


def test_a_failing_call_does_not_stop_the_watchdog() -> None:
    deadlines = Deadlines()
    fired = threading.Event()

    def boom() -> None:
        raise RuntimeError("boom")

    deadlines.call_later(0.05, boom)
    deadlines.call_later(0.1, fired.set)
    assert fired.wait(5)
    deadlines.stop()
