"""The event bus: non-blocking publish, local subscribers, and the Redis relay between workers.

Two buses in one process stand for two workers (each names its worker). The Redis tests use a
real Redis; the outage test kills a throwaway ``redis-server`` and starts it again on its port.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from session_support import RedisServers

from voicebot.events import (
    CallEnded,
    CallEvent,
    CallStarted,
    EventBus,
    Handoff,
    RedisRelay,
    Subscription,
    Transcript,
    TurnLatencyEvent,
    parse_event,
)
from voicebot.events.bus import STALE_CALL_SECS
from voicebot.events.model import event_json


@asynccontextmanager
async def running(bus: EventBus) -> AsyncIterator[EventBus]:
    await bus.start()
    try:
        yield bus
    finally:
        await bus.aclose()


async def next_event(subscription: Subscription, timeout: float = 2.0) -> CallEvent:
    return await asyncio.wait_for(subscription.get(), timeout)


async def wait_until(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.02)


def said(call_id: str, text: str, n: int = 1) -> Transcript:
    return Transcript(call_id=call_id, role="user", text=text, utterance=n)


# --- the model ----------------------------------------------------------------------------------


def test_events_round_trip_through_their_json() -> None:
    events: list[CallEvent] = [
        CallStarted(call_id="c1", at=1.5, worker="h:1", source="browser", pipeline="p"),
        Transcript(call_id="c1", at=2.0, worker="h:1", role="bot", text="Hi", final=False,
                   agent="auth", utterance=1),
        Handoff(call_id="c1", at=3.0, worker="h:1", from_agent="auth", to_agent="billing"),
        TurnLatencyEvent(call_id="c1", at=4.0, worker="h:1", turn=1, voice_to_voice_ms=812.5,
                         stages_ms={"vad": 200.0, "overhead": 612.5}),
        CallEnded(call_id="c1", at=5.0, worker="h:1", outcome="completed"),
    ]  # fmt: skip
    for event in events:
        assert parse_event(event_json(event)) == event
    assert event_json(events[2]) == (
        '{"call_id":"c1","at":3.0,"worker":"h:1","type":"handoff",'
        '"from_agent":"auth","to_agent":"billing","reason":"","turn":0}'
    )


# --- one worker -----------------------------------------------------------------------------------


async def test_subscribers_get_the_events_of_their_call_or_of_all() -> None:
    async with running(EventBus(worker="w1")) as bus:
        everything = bus.subscribe()
        only_b = bus.subscribe("b")
        bus.publish(said("a", "for a"))
        bus.publish(said("b", "for b"))
        first, second = await next_event(everything), await next_event(everything)
        mine = await next_event(only_b)
    assert [e.call_id for e in (first, second)] == ["a", "b"]
    assert isinstance(mine, Transcript) and mine.text == "for b"
    assert mine.worker == "w1"  # stamped by the bus
    assert only_b._queue.empty()


async def test_publish_never_waits_and_a_full_queue_drops_and_counts() -> None:
    bus = EventBus(worker="w1", queue_size=3)  # not started: nothing drains the queue
    start = time.perf_counter()
    accepted = [bus.publish(said("a", str(i))) for i in range(5)]
    assert time.perf_counter() - start < 0.05
    assert accepted == [True, True, True, False, False]
    assert (bus.published, bus.dropped) == (3, 2)
    subscription = bus.subscribe()
    async with running(bus):
        received = [await next_event(subscription) for _ in range(3)]
        bus.publish(said("a", "later"))
        received.append(await next_event(subscription))
    assert [e.text for e in received if isinstance(e, Transcript)] == ["0", "1", "2", "later"]
    assert bus.status()["dropped"] == 2


async def test_a_slow_subscriber_loses_events_without_holding_up_others() -> None:
    async with running(EventBus(worker="w1", subscriber_queue_size=2)) as bus:
        slow = bus.subscribe()
        fast = bus.subscribe(queue_size=100)
        for i in range(10):
            bus.publish(said("a", str(i), i))
        received = [await next_event(fast) for _ in range(10)]
    assert [e.text for e in received if isinstance(e, Transcript)] == [str(i) for i in range(10)]
    assert slow.dropped == 8 and slow._queue.qsize() == 2


async def test_the_snapshot_lists_active_calls_with_their_recent_events() -> None:
    async with running(EventBus(worker="w1")) as bus:
        subscription = bus.subscribe()
        bus.publish(CallStarted(call_id="a", pipeline="p"))
        bus.publish(Transcript(call_id="a", role="bot", text="Hello", agent="auth", utterance=1))
        bus.publish(CallStarted(call_id="b"))
        bus.publish(CallEnded(call_id="b", outcome="completed"))
        for _ in range(4):
            await next_event(subscription)
        [call] = bus.snapshot()
        assert bus.snapshot("b") == []
    assert call["call_id"] == "a" and call["worker"] == "w1" and call["agent"] == "auth"
    assert [e["type"] for e in call["events"]] == ["call_started", "transcript"]


# --- two workers over Redis -----------------------------------------------------------------


async def test_events_reach_the_subscribers_of_another_worker(redis_url: str, channel: str) -> None:
    one = EventBus(RedisRelay(redis_url, channel), worker="host:1")
    two = EventBus(RedisRelay(redis_url, channel), worker="host:2")
    async with running(one), running(two):
        await wait_until(lambda: one.status()["status"] == "ok" == two.status()["status"], 5)
        on_two = two.subscribe("call-1")
        on_one = one.subscribe("call-1")
        one.publish(CallStarted(call_id="call-1"))
        one.publish(said("call-1", "What is my balance?"))
        remote = [await next_event(on_two), await next_event(on_two)]
        local = [await next_event(on_one), await next_event(on_one)]
        await asyncio.sleep(0.2)
        assert on_one._queue.empty()  # its own events come back from Redis, and are ignored
        assert [e.type for e in remote] == ["call_started", "transcript"]
        assert remote == local and remote[0].worker == "host:1"
        assert two.snapshot()[0]["worker"] == "host:1"  # the call is active on worker one
        assert one.status()["relay"]["sent"] == 2 and two.status()["relay"]["received"] == 2


async def test_redis_down_local_events_go_on_and_the_relay_resumes(
    redis_servers: RedisServers, channel: str
) -> None:
    redis = await redis_servers.start()
    relay_one = RedisRelay(redis.url, channel, op_timeout_secs=0.3, retry_secs=0.2)
    relay_two = RedisRelay(redis.url, channel, op_timeout_secs=0.3, retry_secs=0.2)
    one, two = EventBus(relay_one, worker="host:1"), EventBus(relay_two, worker="host:2")
    async with running(one), running(two):
        await wait_until(lambda: one.status()["status"] == "ok" == two.status()["status"], 5)
        local, remote = one.subscribe(), two.subscribe()
        one.publish(said("c", "before"))
        assert isinstance(e := await next_event(remote), Transcript) and e.text == "before"
        await next_event(local)

        redis.kill()
        await wait_until(lambda: one.status()["status"] == "degraded", 5)
        start = time.monotonic()
        one.publish(said("c", "during"))
        during = await next_event(local)
        assert isinstance(during, Transcript) and during.text == "during"
        assert time.monotonic() - start < 0.2  # local delivery does not wait for Redis
        assert one.status()["relay"]["unsent"] >= 1 and "error" in one.status()["relay"]

        redis.launch()  # the same port again
        await redis.wait_ready()
        await wait_until(lambda: one.status()["status"] == "ok" == two.status()["status"], 5)
        one.publish(said("c", "after"))
        after = await next_event(remote)
        assert isinstance(after, Transcript) and after.text == "after"
        assert remote._queue.empty()  # "during" never reached worker two


async def test_a_call_not_heard_of_for_long_is_forgotten() -> None:
    now = [100.0]
    async with running(EventBus(worker="w1", clock=lambda: now[0])) as bus:
        subscription = bus.subscribe()
        bus.publish(CallStarted(call_id="gone", worker="dead:1"))  # its worker died mid-call
        await next_event(subscription)
        now[0] += STALE_CALL_SECS - 1
        assert [c["call_id"] for c in bus.snapshot()] == ["gone"]
        now[0] += 2
        assert bus.snapshot() == [] and bus.active_call_ids() == []
