"""WarmPool and call_in_thread on their own, with plain objects (no SDK, no network)."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field

import pytest

from voicebot.services.pools import WarmPool, call_in_thread

WAIT = 3.0  # seconds any background step may take here


@dataclass(eq=False)
class Thing:
    number: int
    ok: bool = True
    closed: threading.Event = field(default_factory=threading.Event)


class Factory:
    """Makes numbered things; fails while ``failing`` is set."""

    def __init__(self) -> None:
        self.made: list[Thing] = []
        self.failing = False

    def __call__(self) -> Thing:
        if self.failing:
            raise ConnectionError("service unreachable")
        thing = Thing(len(self.made))
        self.made.append(thing)
        return thing


def pool_of(factory: Factory, size: int = 2, max_age_secs: float = 60) -> WarmPool[Thing]:
    return WarmPool(
        "test-pool",
        create=factory,
        close=lambda thing: thing.closed.set(),
        healthy=lambda thing: thing.ok,
        size=size,
        max_age_secs=max_age_secs,
    )


def wait_until(condition: object, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


async def test_take_return_and_replace() -> None:
    factory = Factory()
    pool = pool_of(factory)
    assert pool.start(wait_secs=WAIT)
    status = pool.status()
    assert {
        k: status[k] for k in ("status", "size", "idle", "in_use", "created", "last_error")
    } == {
        "status": "ok",
        "size": 2,
        "idle": 2,
        "in_use": 0,
        "created": 2,
        "last_error": None,
    }
    assert 0 <= status["oldest_idle_secs"] < WAIT

    first = pool.take()
    assert first is not None
    assert pool.status()["in_use"] == 1
    wait_until(lambda: pool.status()["idle"] == 2)  # refilled behind the taker's back
    assert len(factory.made) == 3

    # Given back healthy to a full pool: the oldest idle one makes room (not a discard).
    assert first.value is factory.made[1]  # the youngest was lent
    pool.release(first)
    assert factory.made[0].closed.wait(WAIT)
    assert not first.value.closed.is_set()
    status = pool.status()
    assert (status["idle"], status["in_use"], status["discarded"]) == (2, 0, 0)

    # Given back broken: closed and replaced.
    second = pool.take()
    assert second is not None
    second.value.ok = False
    wait_until(lambda: pool.status()["idle"] == 2)
    pool.release(second)
    assert second.value.closed.wait(WAIT)
    assert pool.status()["discarded"] == 1

    # Given back healthy while there is room: reused.
    third, fourth = pool.take(), pool.take()
    assert third is not None and fourth is not None
    pool.release(third)
    assert not third.value.closed.is_set()
    await pool.aclose()
    assert all(thing.closed.wait(WAIT) for thing in factory.made if thing is not fourth.value)
    pool.release(fourth)  # lent out while the pool closed: closed on return
    assert fourth.value.closed.wait(WAIT)


async def test_idle_objects_that_break_or_age_are_replaced() -> None:
    factory = Factory()
    pool = pool_of(factory, size=1, max_age_secs=0.3)
    assert pool.start(wait_secs=WAIT)
    [first] = factory.made
    wait_until(lambda: first.closed.is_set() and pool.status()["idle"] == 1)
    assert pool.status()["discarded"] >= 1

    newest = factory.made[-1]
    newest.ok = False  # e.g. its connection dropped while idle
    wait_until(lambda: newest.closed.is_set())
    taken = pool.take()
    assert taken is None or taken.value.ok
    await pool.aclose()


async def test_a_miss_is_counted_and_an_adopted_object_can_join() -> None:
    factory = Factory()
    pool = pool_of(factory, size=1)  # not started: nothing idle
    assert pool.take() is None
    assert pool.status()["missed"] == 1
    made = pool.adopt(Thing(99))
    assert pool.status()["in_use"] == 1
    pool.release(made)
    assert pool.status()["idle"] == 1
    assert pool.take() is made
    pool.release(made, reusable=False, reason="synthesis failed")
    assert made.value.closed.wait(WAIT)
    await pool.aclose()


async def test_failures_are_reported_and_retried() -> None:
    factory = Factory()
    factory.failing = True
    pool = pool_of(factory, size=1)
    assert not pool.start(wait_secs=0.3)
    status = pool.status()
    assert status["status"] == "empty"
    assert status["last_error"] == "ConnectionError: service unreachable"
    assert status["last_error_at"] is not None
    factory.failing = False
    assert pool.start(wait_secs=WAIT)  # the retry after a 1 s back-off succeeds
    await pool.aclose()


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="size=-1"):
        pool_of(Factory(), size=-1)
    with pytest.raises(ValueError, match="max_age_secs=0"):
        pool_of(Factory(), max_age_secs=0)


async def test_call_in_thread_is_bounded_and_abandons_a_stuck_call() -> None:
    release = threading.Event()
    assert await call_in_thread(lambda: 42, timeout=1, name="quick") == 42
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        await call_in_thread(lambda: release.wait(30), timeout=0.2, name="stuck")
    assert time.monotonic() - start < 0.5
    release.set()
    with pytest.raises(ZeroDivisionError):
        await call_in_thread(lambda: 1 / 0, timeout=1, name="raises")
    await asyncio.sleep(0)
