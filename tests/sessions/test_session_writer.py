"""SessionWriter: non-blocking writes after each turn, survival of a Redis outage, resume."""

from __future__ import annotations

import time
import uuid

import pytest
from session_support import RedisServers, StoreFactory, free_port

from voicebot.sessions import (
    CallSession,
    DegradedCalls,
    InMemorySessionStore,
    RedisSessionStore,
    SessionWriter,
    WriterStatus,
    open_session,
)

pytestmark = pytest.mark.usefixtures("no_leaked_tasks")

FAST_RETRY = {"retry_initial_secs": 0.02, "retry_max_secs": 0.2}


def new_call_id() -> str:
    return f"call-{uuid.uuid4()}"


def take_turn(session: CallSession, question: str, answer: str) -> None:
    """What the agent router does at the end of a turn."""
    session.add_message("user", question)
    session.add_message("assistant", answer)
    session.turn_count += 1


class StatusLog:
    def __init__(self) -> None:
        self.seen: list[WriterStatus] = []

    def __call__(self, writer: SessionWriter) -> None:
        self.seen.append(writer.status)


async def test_each_turn_is_stored_after_a_flush(make_store: StoreFactory) -> None:
    store = make_store()
    session = CallSession.new(new_call_id(), agent="auth")
    log = StatusLog()
    async with SessionWriter(store, session, on_status=log) as writer:
        for turn in range(1, 4):
            take_turn(session, f"question {turn}", f"answer {turn}")
            writer.mark_dirty()
            assert await writer.flush()
            stored = await store.load(session.call_id)
            assert stored is not None
            assert stored.turn_count == turn
            assert [m.content for m in stored.messages()][-2:] == [
                f"question {turn}",
                f"answer {turn}",
            ]
        assert writer.status is WriterStatus.OK
        assert not writer.degraded and not writer.pending
        assert writer.writes == 3
    assert log.seen == [WriterStatus.CLOSED]
    assert session.version == 3


async def test_marks_return_at_once_and_coalesce(make_store: StoreFactory) -> None:
    store = make_store()
    session = CallSession.new(new_call_id(), agent="auth")
    async with SessionWriter(store, session) as writer:
        started = time.perf_counter()
        for turn in range(50):
            take_turn(session, f"q{turn}", f"a{turn}")
            writer.mark_dirty()
        marking = time.perf_counter() - started
        assert writer.pending
        assert await writer.flush()
    assert marking < 0.05
    assert 1 <= writer.writes < 50
    stored = await store.load(session.call_id)
    assert stored is not None and stored.turn_count == 50


async def test_close_stores_the_last_turn(make_store: StoreFactory) -> None:
    """On disconnect the call closes its writer: the turn just taken is stored."""
    store = make_store()
    session = CallSession.new(new_call_id(), agent="auth")
    writer = SessionWriter(store, session)
    take_turn(session, "bye", "goodbye")
    writer.mark_dirty()
    assert await writer.close() is True
    assert writer.status is WriterStatus.CLOSED
    stored = await store.load(session.call_id)
    assert stored is not None and stored.turn_count == 1

    writer.mark_dirty()  # after close: nothing happens, nothing raises
    assert await writer.close() is True


async def test_a_reconnected_call_resumes_on_another_worker(make_store: StoreFactory) -> None:
    worker_a, worker_b = make_store(), make_store()
    call_id = new_call_id()

    opened = await open_session(worker_a, CallSession.new(call_id, agent="auth"))
    assert not opened.resumed and opened.store_available
    first = opened.session
    writer_a = SessionWriter(worker_a, first)
    take_turn(first, "my account is 1234", "thanks, you are verified")
    first.memory["verified"] = True
    first.active_agent = "billing"
    writer_a.mark_dirty()
    assert await writer_a.flush()

    # The socket drops; ACS reconnects to worker B, which restores everything.
    reopened = await open_session(worker_b, CallSession.new(call_id, agent="auth"))
    assert reopened.resumed
    second = reopened.session
    assert second.active_agent == "billing"
    assert second.memory == {"verified": True}
    assert [m.content for m in second.messages("auth")] == [
        "my account is 1234",
        "thanks, you are verified",
    ]
    async with SessionWriter(worker_b, second) as writer_b:
        take_turn(second, "what is my balance?", "42 dollars")
        writer_b.mark_dirty()
        assert await writer_b.flush()
        assert writer_b.status is WriterStatus.OK

    # Worker A's pipeline, still winding down, must not overwrite what B stored.
    writer_a.mark_dirty()
    assert await writer_a.flush() is False
    assert writer_a.status is WriterStatus.SUPERSEDED
    await writer_a.close()
    stored = await worker_b.load(call_id)
    assert stored is not None and stored.turn_count == 2


async def test_a_conflict_with_a_writer_behind_overwrites(make_store: StoreFactory) -> None:
    store, other = make_store(), make_store()
    session = CallSession.new(new_call_id(), agent="auth")
    async with SessionWriter(store, session) as writer:
        take_turn(session, "q1", "a1")
        writer.mark_dirty()
        assert await writer.flush()
        # Someone else touches the call without taking a turn (e.g. call control).
        await other.update(session.call_id, lambda s: s.slots.update(note="x"))
        take_turn(session, "q2", "a2")
        writer.mark_dirty()
        assert await writer.flush()
        assert writer.status is WriterStatus.OK
    stored = await store.load(session.call_id)
    assert stored is not None and (stored.turn_count, stored.version) == (2, 3)


async def test_a_custom_conflict_policy_decides(make_store: StoreFactory) -> None:
    store, other = make_store(), make_store()
    session = CallSession.new(new_call_id(), agent="auth")
    seen: list[tuple[int, int]] = []

    def never_overwrite(stored: CallSession, local: CallSession) -> bool:
        seen.append((stored.version, local.version))
        return False

    async with SessionWriter(store, session, on_conflict=never_overwrite) as writer:
        writer.mark_dirty()
        assert await writer.flush()
        await other.update(session.call_id, lambda s: s.slots.update(note="x"))
        take_turn(session, "q", "a")
        writer.mark_dirty()
        assert await writer.flush() is False
        assert writer.status is WriterStatus.SUPERSEDED
    assert seen == [(2, 1)]
    stored = await store.load(session.call_id)
    assert stored is not None and (stored.slots, stored.turn_count) == ({"note": "x"}, 0)


async def test_an_unstorable_state_degrades_and_recovers_without_raising() -> None:
    store = InMemorySessionStore()
    session = CallSession.new(new_call_id(), agent="auth")
    log = StatusLog()
    async with SessionWriter(store, session, on_status=log, **FAST_RETRY) as writer:
        session.memory["handle"] = object()  # not JSON: a bug in a tool, not in the call
        writer.mark_dirty()
        assert await writer.flush(timeout=0.3) is False
        assert writer.degraded
        assert writer.last_error and "JSON-serialisable" in writer.last_error
        del session.memory["handle"]
        take_turn(session, "q", "a")
        writer.mark_dirty()
        assert await writer.flush()
    assert log.seen == [WriterStatus.DEGRADED, WriterStatus.OK, WriterStatus.CLOSED]


async def test_redis_down_at_start_then_up(redis_servers: RedisServers, session_env: str) -> None:
    """The call starts while Redis is down, goes on, and its state lands once Redis is up."""
    port = free_port()
    url = f"redis://127.0.0.1:{port}"
    degraded = DegradedCalls()
    log = StatusLog()

    def on_status(writer: SessionWriter) -> None:
        degraded(writer)
        log(writer)

    async with RedisSessionStore.from_url(url, env=session_env, op_timeout_secs=0.3) as store:
        assert (await store.health()).status == "degraded"
        opened = await open_session(store, CallSession.new(new_call_id(), agent="auth"))
        assert not opened.resumed and not opened.store_available
        session = opened.session
        writer = SessionWriter(store, session, on_status=on_status, **FAST_RETRY)
        for turn in range(3):
            take_turn(session, f"q{turn}", f"a{turn}")
            writer.mark_dirty()
        assert await writer.flush(timeout=0.5) is False
        assert writer.degraded
        assert degraded.call_ids() == [session.call_id]
        assert writer.last_error and "ConnectionError" in writer.last_error

        await redis_servers.start(port)
        take_turn(session, "q3", "a3")
        writer.mark_dirty()
        assert await writer.flush(timeout=5)
        assert writer.status is WriterStatus.OK
        assert len(degraded) == 0
        assert await writer.close()

        stored = await store.load(session.call_id)
        assert stored is not None
        assert stored.turn_count == 4
        assert len(stored.messages()) == 8
        assert (await store.health()).status == "ok"
    assert log.seen == [WriterStatus.DEGRADED, WriterStatus.OK, WriterStatus.CLOSED]


async def test_redis_killed_mid_call_then_back(
    redis_servers: RedisServers, session_env: str
) -> None:
    """Redis dies mid-call (its data with it): no turn is lost once it is back."""
    server = await redis_servers.start()
    async with RedisSessionStore.from_url(
        server.url, env=session_env, op_timeout_secs=0.3
    ) as store:
        session = CallSession.new(new_call_id(), agent="auth")
        log = StatusLog()
        async with SessionWriter(store, session, on_status=log, **FAST_RETRY) as writer:
            for turn in range(2):
                take_turn(session, f"q{turn}", f"a{turn}")
                writer.mark_dirty()
                assert await writer.flush()

            server.kill()
            for turn in range(2, 5):
                take_turn(session, f"q{turn}", f"a{turn}")
                writer.mark_dirty()
            assert await writer.flush(timeout=0.5) is False
            assert writer.degraded
            assert session.turn_count == 5  # the call went on in process

            await redis_servers.start(server.port)
            assert await writer.flush(timeout=5)
            assert writer.status is WriterStatus.OK

            take_turn(session, "q5", "a5")
            writer.mark_dirty()
        stored = await store.load(session.call_id)
        assert stored is not None
        assert stored.turn_count == 6
        assert stored.version == 2  # Redis came back empty: stored afresh, then one more turn
        assert [m.content for m in stored.messages() if m.role == "user"] == [
            f"q{i}" for i in range(6)
        ]
    assert log.seen == [WriterStatus.DEGRADED, WriterStatus.OK, WriterStatus.CLOSED]


async def test_close_is_bounded_while_redis_is_down(session_env: str) -> None:
    url = f"redis://127.0.0.1:{free_port()}"
    async with RedisSessionStore.from_url(url, env=session_env, op_timeout_secs=0.3) as store:
        session = CallSession.new(new_call_id(), agent="auth")
        writer = SessionWriter(store, session, retry_initial_secs=1.0, retry_max_secs=5.0)
        take_turn(session, "q", "a")
        writer.mark_dirty()
        started = time.monotonic()
        assert await writer.close(timeout=0.4) is False
        assert time.monotonic() - started < 1.0
        assert writer.status is WriterStatus.CLOSED
