from __future__ import annotations

import asyncio
import time

import pytest

from voicebot.testing.clock import LoopClock, virtual_time


def _patched(loop: asyncio.AbstractEventLoop) -> list[str]:
    selector = loop._selector  # type: ignore[attr-defined]
    names = [n for n in ("time", "run_in_executor") if n in vars(loop)]
    return names + (["select"] if "select" in vars(selector) else [])


async def test_a_long_sleep_takes_no_real_time() -> None:
    loop = asyncio.get_running_loop()
    real_start = time.monotonic()
    async with virtual_time() as clock:
        before = loop.time()
        await asyncio.sleep(30)
        assert loop.time() - before == pytest.approx(30, abs=1e-9)
        assert clock.now() == pytest.approx(30, abs=1e-9)
        assert clock.skipped == pytest.approx(30, abs=1e-9)
    assert time.monotonic() - real_start < 0.5


async def test_concurrent_sleeps_end_in_order_at_their_exact_times() -> None:
    async with virtual_time() as clock:
        ended: list[tuple[float, float]] = []

        async def sleep(seconds: float) -> None:
            await asyncio.sleep(seconds)
            ended.append((seconds, clock.now()))

        await asyncio.gather(sleep(3), sleep(0.5), sleep(2), sleep(0.25))
    assert [s for s, _ in ended] == [0.25, 0.5, 2, 3]
    for seconds, at in ended:
        assert at == pytest.approx(seconds, abs=1e-9)


async def test_timeouts_fire_on_virtual_time() -> None:
    async with virtual_time() as clock:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.Event().wait(), timeout=10)
        assert clock.now() == pytest.approx(10, abs=1e-9)


async def test_time_does_not_jump_past_executor_work() -> None:
    """While a thread works the loop waits for real, so virtual time runs at real pace (the
    short sleep ends first, the thread ends after about 0.05 s); jumps resume once it is done."""
    loop = asyncio.get_running_loop()
    ended: list[tuple[str, float]] = []
    async with virtual_time() as clock:

        async def work() -> None:
            real_start = time.monotonic()
            await loop.run_in_executor(None, time.sleep, 0.05)
            assert time.monotonic() - real_start >= 0.05
            ended.append(("thread", clock.now()))

        async def sleep(seconds: float) -> None:
            await asyncio.sleep(seconds)
            ended.append((f"sleep {seconds}", clock.now()))

        await asyncio.gather(work(), sleep(0.01), sleep(1.0))
        assert clock.executor_jobs_in_flight == 0
    assert [name for name, _ in ended] == ["sleep 0.01", "thread", "sleep 1.0"]
    times = dict(ended)
    assert 0.01 < times["thread"] < 0.5
    assert times["sleep 1.0"] == pytest.approx(1.0, abs=1e-9)


async def test_to_thread_counts_as_executor_work() -> None:
    async with virtual_time() as clock:
        task = asyncio.ensure_future(asyncio.to_thread(time.sleep, 0.02))
        await asyncio.sleep(0)
        assert clock.executor_jobs_in_flight == 1
        await task
        assert clock.executor_jobs_in_flight == 0


async def test_the_loop_is_restored_on_exit() -> None:
    loop = asyncio.get_running_loop()
    async with virtual_time():
        assert _patched(loop) == ["time", "run_in_executor", "select"]
        await asyncio.sleep(5)
    assert _patched(loop) == []
    real_start = time.monotonic()
    await asyncio.sleep(0.05)
    assert time.monotonic() - real_start >= 0.05


async def test_the_loop_is_restored_on_error() -> None:
    loop = asyncio.get_running_loop()
    with pytest.raises(ValueError, match="boom"):
        async with virtual_time():
            await asyncio.sleep(5)
            raise ValueError("boom")
    assert _patched(loop) == []


async def test_timers_pending_at_exit_keep_their_remaining_delay() -> None:
    loop = asyncio.get_running_loop()
    fired = asyncio.Event()
    async with virtual_time():
        await asyncio.sleep(60)
        loop.call_later(0.1, fired.set)
    real_start = time.monotonic()
    await asyncio.wait_for(fired.wait(), timeout=2)
    assert 0.05 <= time.monotonic() - real_start < 1


async def test_nesting_is_refused() -> None:
    async with virtual_time():
        with pytest.raises(RuntimeError, match="already active"):
            async with virtual_time():
                pass


async def test_loop_clock_follows_virtual_time() -> None:
    async with virtual_time():
        clock = LoopClock()
        assert clock.get_time() == 0
        clock.start()
        await asyncio.sleep(2.5)
        assert clock.get_time() == 2_500_000_000
