"""Virtual time for the running asyncio event loop, so a 30 s call runs in milliseconds.

Inside ``async with virtual_time() as clock:`` the running loop's clock stands still while
callbacks run and jumps forward whenever the loop would otherwise sleep: when no I/O is ready
and the next thing to do is a timer, the loop's time moves straight to that timer instead of
waiting for it. ``asyncio.sleep``, ``call_later``, ``wait_for`` and ``asyncio.timeout`` all
follow, so timings declared in seconds come out exact and take no real time.

Only the running loop *instance* is patched (its ``time``, ``run_in_executor`` and its
selector's ``select``), and everything is restored on exit, even on error. Timers still pending
at exit are shifted back onto the real clock, so one due 1 s (virtual) after exit fires 1 s
(real) after exit.

Limits:

* Work in executor threads started with ``loop.run_in_executor`` (and so ``asyncio.to_thread``,
  pipecat's VAD and turn analyzers, DNS lookups) is awaited for real: while any is in flight the
  loop waits on its selector for real and its clock advances by the real time waited. Threads
  started any other way are invisible; time may jump past them.
* I/O is only polled, never waited for, while a timer is pending: a socket peer outside this
  loop (another process or thread) that takes real time to answer is overtaken by the next
  timer, e.g. a ``wait_for`` timeout. Peers on the same loop over loopback are fine, their
  writes are readable at once.
* The clock does not move while callbacks run. Code that spins on ``asyncio.sleep(0)`` until
  ``loop.time()`` passes a deadline never gets there.
* ``time.time()`` and ``time.monotonic()`` are untouched. pipecat reads them for metrics
  (TTFB, processing time), VAD frame timestamps, bot-speaking detection in output transports
  and its default pipeline clock; under virtual time those see real time. Pass
  ``PipelineWorker(..., clock=LoopClock())`` to put the pipeline clock (observer timestamps,
  presentation times of timed frames) on loop time.
* Needs a selector event loop (the asyncio default on Linux and macOS); uvloop and the Windows
  proactor loop are refused.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from pipecat.clocks.base_clock import BaseClock

__all__ = ["LoopClock", "VirtualClock", "virtual_time"]

_MARK = "_voicebot_virtual_clock"


class VirtualClock:
    """The virtual clock of one event loop, as handed out by :func:`virtual_time`.

    Time is read from the loop (``loop.time()``, seconds); there is nothing to advance by
    hand, the loop advances it when it would otherwise sleep.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        """Prepare to take over ``loop``'s clock; :meth:`install` does it."""
        selector = getattr(loop, "_selector", None)
        if selector is None:
            raise RuntimeError(
                f"virtual_time() needs a selector event loop, not {type(loop).__name__} "
                "(uvloop and the Windows proactor loop are not supported)"
            )
        self._loop = loop
        self._selector = selector
        self._real_time: Callable[[], float] = loop.time
        self._real_select: Callable[..., Any] = selector.select
        self._real_run_in_executor: Callable[..., Any] = loop.run_in_executor
        self._now = self._start = loop.time()
        self._skipped = 0.0
        self._in_flight = 0
        self._restore: list[Callable[[], None]] = []

    def now(self) -> float:
        """Seconds of virtual time since the clock was installed."""
        return self._now - self._start

    @property
    def skipped(self) -> float:
        """Seconds jumped over instead of waited for."""
        return self._skipped

    @property
    def executor_jobs_in_flight(self) -> int:
        """``run_in_executor`` jobs started under this clock and not yet done."""
        return self._in_flight

    def install(self) -> None:
        """Patch the loop instance and its selector."""
        if getattr(self._loop, _MARK, None) is not None:
            raise RuntimeError("virtual_time() is already active on this event loop")
        self._patch(self._loop, _MARK, self)
        self._patch(self._loop, "time", self._time)
        self._patch(self._loop, "run_in_executor", self._run_in_executor)
        self._patch(self._selector, "select", self._select)

    def uninstall(self) -> None:
        """Undo :meth:`install` and move pending timers onto the real clock."""
        shift = self._now - self._real_time()
        while self._restore:
            self._restore.pop()()
        for timer in getattr(self._loop, "_scheduled", ()):
            timer._when -= shift  # uniform shift: the heap order is unchanged

    def _patch(self, obj: Any, name: str, value: Any) -> None:
        had_own = name in vars(obj)
        old = vars(obj).get(name)
        setattr(obj, name, value)

        def restore() -> None:
            if had_own:
                setattr(obj, name, old)
            else:
                delattr(obj, name)

        self._restore.append(restore)

    def _time(self) -> float:
        return self._now

    def _select(self, timeout: float | None = None) -> Any:
        events = self._real_select(0)
        if events or (timeout is not None and timeout <= 0):
            return events
        if timeout is None or self._in_flight:
            # Wait for real: for outside I/O, or for executor threads, whose completion
            # wakes the selector through the loop's self-pipe.
            started = time.monotonic()
            events = self._real_select(timeout)
            self._now += time.monotonic() - started
            return events
        self._now += timeout
        self._skipped += timeout
        return events

    def _run_in_executor(self, executor: Any, func: Callable[..., Any], *args: Any) -> Any:
        future = self._real_run_in_executor(executor, func, *args)
        self._in_flight += 1
        future.add_done_callback(self._executor_job_done)
        return future

    def _executor_job_done(self, _: Any) -> None:
        self._in_flight -= 1


@asynccontextmanager
async def virtual_time() -> AsyncIterator[VirtualClock]:
    """Run the body on virtual time; see the module docstring for what that means."""
    clock = VirtualClock(asyncio.get_running_loop())
    clock.install()
    try:
        yield clock
    finally:
        clock.uninstall()


class LoopClock(BaseClock):
    """A pipecat pipeline clock that reads the running loop's time, virtual or not.

    pipecat's default ``SystemClock`` reads ``time.monotonic_ns()``; pass this one as
    ``PipelineWorker(..., clock=LoopClock())`` so pipeline timestamps follow virtual time.
    """

    def __init__(self) -> None:
        """Create a clock that reads 0 until started."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._start = 0.0

    def start(self) -> None:
        """Start counting from now; must be called on the running loop."""
        self._loop = asyncio.get_running_loop()
        self._start = self._loop.time()

    def get_time(self) -> int:
        """Nanoseconds of loop time since :meth:`start`, or 0 before it."""
        if self._loop is None:
            return 0
        return round((self._loop.time() - self._start) * 1e9)
