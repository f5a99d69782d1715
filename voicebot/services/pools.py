"""Pre-warmed pools of client objects, and bounded calls into SDKs that block.

Some vendor SDKs (the Azure Speech SDK is one) hold a network connection inside an object that
is slow to open and whose methods block a thread, sometimes for tens of seconds when the service
is unreachable. Two tools for them:

* :class:`WarmPool` keeps ``size`` objects ready, each created (and connected) ahead of time by a
  thread of the pool's own, so a call takes one in microseconds instead of waiting for a
  connection. A call returns what it took when it ends; broken or old objects are closed and
  replaced in the background.
* :func:`call_in_thread` runs a blocking function on a daemon thread and waits for it at most a
  given time, so ending a call never waits on an SDK longer than its budget. A thread that is
  still stuck past its bound is abandoned (it is a daemon: it never holds up process exit).

Nothing here touches the event loop from another thread except to resolve a future, and no
asyncio task outlives the call that awaited it.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from loguru import logger

T = TypeVar("T")
R = TypeVar("R")

__all__ = ["Pooled", "WarmPool", "call_in_thread", "start_daemon"]

_thread_ids = itertools.count(1)


def start_daemon(fn: Callable[[], R], name: str) -> Future[R]:
    """Run ``fn`` on a new daemon thread; its result (or exception) lands in the returned future.

    The thread holds the only reference to what ``fn`` closes over once the caller lets go, so
    objects whose destructors block (SDK recognizers) are destroyed there, not on the caller's
    thread.
    """
    future: Future[R] = Future()

    def run() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(fn())
        except BaseException as exc:  # handed to whoever waits; nothing else to do here
            future.set_exception(exc)

    threading.Thread(target=run, name=f"{name}-{next(_thread_ids)}", daemon=True).start()
    return future


async def call_in_thread(fn: Callable[[], R], *, timeout: float, name: str) -> R:
    """``fn()`` on a daemon thread, awaited for at most ``timeout`` seconds.

    Raises:
        TimeoutError: ``fn`` did not return in time; it keeps running on its thread, abandoned.
        Exception: Whatever ``fn`` raised.
    """
    future = start_daemon(fn, name)
    try:
        return await asyncio.wait_for(asyncio.wrap_future(future), timeout)
    except TimeoutError:
        logger.warning(f"{name}: still blocked after {timeout:.1f} s; left to finish on its own")
        raise


@dataclass(eq=False)
class Pooled(Generic[T]):
    """One object of a :class:`WarmPool`, with when it was made (``time.monotonic()``)."""

    value: T
    created_at: float = field(default_factory=time.monotonic)

    @property
    def age_secs(self) -> float:
        return time.monotonic() - self.created_at


class WarmPool(Generic[T]):
    """Up to ``size`` idle objects, created and connected ahead of use by a maintainer thread.

    ``create()`` blocks (it may wait for a connection) and raises when the object cannot be made
    ready; ``healthy(value)`` says whether an idle object can still be used (its connection is
    up); ``close(value)`` releases one and may block, so it always runs on a daemon thread.

    :meth:`take` never blocks: it hands out the youngest healthy idle object or None (the caller
    then makes one itself and may :meth:`adopt` it). :meth:`release` returns an object; it goes
    back to the idle set if it is reusable, healthy and younger than ``max_age_secs`` (the
    oldest idle one is closed if that makes one too many), and is closed otherwise. Every
    ``check_interval_secs`` and whenever an object is taken or returned, the maintainer closes
    idle objects that are broken or too old and refills the pool, backing off (1 s doubling to
    30 s) while creation fails; the last failure is in :meth:`status`.
    """

    def __init__(
        self,
        name: str,
        *,
        create: Callable[[], T],
        close: Callable[[T], Any],
        healthy: Callable[[T], bool] = lambda _value: True,
        size: int,
        max_age_secs: float,
        close_timeout_secs: float = 1.0,
        check_interval_secs: float = 1.0,
    ) -> None:
        if size < 0:
            raise ValueError(f"{name}: size={size!r} must be >= 0")
        if max_age_secs <= 0:
            raise ValueError(f"{name}: max_age_secs={max_age_secs!r} must be > 0")
        self.name = name
        self.size = size
        self.max_age_secs = max_age_secs
        self._create = create
        self._close = close
        self._healthy = healthy
        self._close_timeout = close_timeout_secs
        self._check_interval = check_interval_secs
        self._cond = threading.Condition()
        self._idle: list[Pooled[T]] = []
        self._in_use: set[Pooled[T]] = set()
        self._creating = 0
        self._closed = False
        self._thread: threading.Thread | None = None
        self._closing: list[Future[Any]] = []
        self.created = 0
        """Objects the maintainer made ready since the pool started."""
        self.discarded = 0
        """Objects closed because they were broken, too old or not wanted back."""
        self.taken = 0
        """Calls served from the idle set."""
        self.missed = 0
        """Calls that found no idle object."""
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        """``time.time()`` of :attr:`last_error`."""

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self, wait_secs: float = 0.0) -> bool:
        """Start the maintainer (once); wait up to ``wait_secs`` for the pool to be full.

        Returns whether the pool was full when this returned. Blocks: call it from a worker
        thread (a provider's ``warm`` hook), not the event loop, unless ``wait_secs`` is 0.
        """
        with self._cond:
            if self._closed:
                raise RuntimeError(f"{self.name} is closed")
            if self._thread is None and self.size > 0:
                self._thread = threading.Thread(
                    target=self._maintain, name=f"{self.name}-maintainer", daemon=True
                )
                self._thread.start()
            deadline = time.monotonic() + wait_secs
            while len(self._idle) < self.size and (left := deadline - time.monotonic()) > 0:
                self._cond.wait(min(left, 0.05))
            return len(self._idle) >= self.size

    async def aclose(self, timeout: float | None = None) -> None:
        """Stop refilling, close idle objects; waits at most ``timeout`` s for them to close.

        Objects in use are closed when released.
        """
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._cond.notify_all()
        for item in idle:
            self._discard(item, "pool closed", count=False)
        waiting = [f for f in self._closing if not f.done()]
        if waiting:
            budget = self._close_timeout if timeout is None else timeout
            await asyncio.wait([asyncio.wrap_future(f) for f in waiting], timeout=budget)

    @property
    def closed(self) -> bool:
        return self._closed

    # -- use -------------------------------------------------------------------------------------

    def take(self) -> Pooled[T] | None:
        """The youngest ready idle object, now in use; None if there is none (never blocks)."""
        stale: list[tuple[Pooled[T], str]] = []
        taken: Pooled[T] | None = None
        with self._cond:
            while self._idle:
                item = self._idle.pop()
                problem = self._problem(item)
                if problem is None:
                    taken = item
                    self._in_use.add(item)
                    self.taken += 1
                    break
                stale.append((item, problem))
            if taken is None:
                self.missed += 1
            self._cond.notify_all()
        for item, problem in stale:
            self._discard(item, problem)
        return taken

    def adopt(self, value: T) -> Pooled[T]:
        """Track an object the caller made itself (none was idle) as in use."""
        item = Pooled(value)
        with self._cond:
            self._in_use.add(item)
        return item

    def release(self, item: Pooled[T], *, reusable: bool = True, reason: str = "") -> None:
        """Give back an object taken or adopted; never blocks.

        It rejoins the idle set if ``reusable`` and still healthy and young, while there is
        room; otherwise it is closed on a daemon thread (``reason`` says why, for the log).
        """
        surplus: list[Pooled[T]] = []
        with self._cond:
            if item not in self._in_use:
                return
            self._in_use.discard(item)
            problem = reason or "not reusable"
            if reusable:
                problem = self._problem(item) or ("pool closed" if self._closed else "")
            if not problem:
                # Keep the youngest: the oldest idle ones make room, if need be.
                self._idle.append(item)
                self._idle.sort(key=lambda pooled: pooled.created_at)
                while len(self._idle) > self.size:
                    surplus.append(self._idle.pop(0))
            self._cond.notify_all()
        if problem:
            self._discard(item, problem, count=problem != "pool closed")
        for extra in surplus:
            self._discard(extra, "pool full", count=False)

    def status(self) -> dict[str, Any]:
        """State for a readiness probe: sizes, ages (s) and the last failure."""
        with self._cond:
            ages = [item.age_secs for item in self._idle]
            return {
                "status": "ok" if len(self._idle) or not self.size else "empty",
                "size": self.size,
                "idle": len(self._idle),
                "in_use": len(self._in_use),
                "creating": self._creating,
                "oldest_idle_secs": round(max(ages), 1) if ages else None,
                "max_age_secs": self.max_age_secs,
                "created": self.created,
                "discarded": self.discarded,
                "taken": self.taken,
                "missed": self.missed,
                "last_error": self.last_error,
                "last_error_at": self.last_error_at,
            }

    # -- internals -----------------------------------------------------------------------------

    def _problem(self, item: Pooled[T]) -> str | None:
        if item.age_secs >= self.max_age_secs:
            return f"older than {self.max_age_secs:g} s"
        try:
            if not self._healthy(item.value):
                return "broken"
        except Exception as exc:
            return f"health check failed: {exc!r}"
        return None

    def _discard(self, item: Pooled[T], reason: str, *, count: bool = True) -> None:
        if count:
            self.discarded += 1
        logger.debug(f"{self.name}: closing one ({reason})")
        value = item.value
        del item

        def close() -> None:
            nonlocal value
            try:
                self._close(value)
            except Exception as exc:
                logger.warning(f"{self.name}: closing one failed: {exc!r}")
            finally:
                del value  # the last reference: a blocking destructor runs on this thread

        self._closing = [f for f in self._closing if not f.done()]
        self._closing.append(start_daemon(close, f"{self.name}-close"))

    def _maintain(self) -> None:
        backoff = 1.0
        while True:
            stale: list[tuple[Pooled[T], str]] = []
            with self._cond:
                if self._closed:
                    return
                for item in list(self._idle):
                    if (problem := self._problem(item)) is not None:
                        self._idle.remove(item)
                        stale.append((item, problem))
                missing = self.size - len(self._idle) - self._creating
                if missing > 0:
                    self._creating += 1
            for item, problem in stale:
                self._discard(item, problem)
            if missing <= 0:
                with self._cond:
                    if self._closed:
                        return
                    next_expiry = min(
                        (self.max_age_secs - item.age_secs for item in self._idle),
                        default=self.max_age_secs,
                    )
                    # Also wake now and then to notice connections that dropped while idle.
                    self._cond.wait(max(0.05, min(next_expiry, self._check_interval)))
                continue
            try:
                value = self._create()
            except Exception as exc:
                with self._cond:
                    self._creating -= 1
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    self.last_error_at = time.time()
                    self._cond.notify_all()
                logger.warning(
                    f"{self.name}: could not make one ready: {exc}; retry in {backoff:g} s"
                )
                with self._cond:
                    if not self._closed:
                        self._cond.wait(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            backoff = 1.0
            item = Pooled(value)
            surplus: list[Pooled[T]] = []
            with self._cond:
                self._creating -= 1
                if self._closed:
                    surplus.append(item)
                else:
                    self.created += 1
                    self._idle.append(item)
                    self._idle.sort(key=lambda pooled: pooled.created_at)
                    # A call may have given one back meanwhile: keep the youngest.
                    while len(self._idle) > self.size:
                        surplus.append(self._idle.pop(0))
                self._cond.notify_all()
            for extra in surplus:
                self._discard(extra, "pool closed" if self._closed else "pool full", count=False)
