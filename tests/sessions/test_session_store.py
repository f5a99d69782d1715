"""The SessionStore contract, run against the in-memory store and a real Redis alike."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import datetime

import pytest
from session_support import StoreFactory

from voicebot.sessions import (
    CallDirection,
    CallSession,
    SessionConflict,
    SessionNotFound,
    SessionStore,
)


def new_call_id() -> str:
    return f"call-{uuid.uuid4()}"


def sample_session(call_id: str) -> CallSession:
    session = CallSession.new(
        call_id,
        agent="auth",
        correlation_id="corr-1",
        direction=CallDirection.OUTBOUND,
        caller="+15550100",
        callee="+15550199",
    )
    session.add_message("system", "You verify callers.")
    session.add_message("user", "My account is 1234.")
    session.add_message("assistant", None, tool_calls=[{"id": "t1", "type": "function"}])
    session.add_message("tool", "verified", tool_call_id="t1")
    session.add_message("user", "What is my balance?", agent="billing")
    session.memory.update({"verified": True, "account": "1234", "since": "2020-01-01"})
    session.slots["amount"] = 42.17
    session.turn_count = 2
    return session


async def test_round_trip_keeps_everything(make_store: StoreFactory) -> None:
    store = make_store()
    session = sample_session(new_call_id())
    before = session.model_dump()

    saved = await store.save(session)

    assert saved is session
    assert session.version == 1
    assert session.updated_at >= before["updated_at"]
    loaded = await store.load(session.call_id)
    assert loaded is not None
    assert loaded.model_dump() == session.model_dump()
    assert loaded.history["auth"][2].model_dump() == {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "t1", "type": "function"}],
    }
    assert loaded.messages("billing")[0].content == "What is my balance?"
    assert loaded.created_at == before["created_at"]
    assert isinstance(loaded.updated_at, datetime)
    assert loaded.updated_at.tzinfo is not None


async def test_a_loaded_session_is_a_copy(make_store: StoreFactory) -> None:
    store = make_store()
    session = await store.save(sample_session(new_call_id()))
    session.memory["changed_after_save"] = True
    loaded = await store.load(session.call_id)
    assert loaded is not None
    assert "changed_after_save" not in loaded.memory
    loaded.turn_count = 99
    again = await store.load(session.call_id)
    assert again is not None and again.turn_count == 2


async def test_unknown_call_loads_as_none_and_delete_forgets(make_store: StoreFactory) -> None:
    store = make_store()
    call_id = new_call_id()
    assert await store.load(call_id) is None
    assert await store.ttl(call_id) is None
    assert await store.delete(call_id) is False

    await store.save(CallSession.new(call_id))
    assert await store.delete(call_id) is True
    assert await store.load(call_id) is None
    assert await store.delete(call_id) is False


async def test_ttl_is_set_and_refreshed_by_every_write(make_store: StoreFactory) -> None:
    store = make_store(ttl_secs=3.0)
    session = await store.save(CallSession.new(new_call_id()))
    first = await store.ttl(session.call_id)
    assert first is not None and 2.5 < first <= 3.0

    await asyncio.sleep(0.4)
    aged = await store.ttl(session.call_id)
    assert aged is not None and aged < first - 0.3

    await store.save(session)
    refreshed = await store.ttl(session.call_id)
    assert refreshed is not None and refreshed > aged + 0.3


async def test_a_session_expires_after_its_ttl(make_store: StoreFactory) -> None:
    store = make_store(ttl_secs=0.3)
    session = await store.save(CallSession.new(new_call_id()))
    await asyncio.sleep(0.6)
    assert await store.load(session.call_id) is None
    # Expired is gone: a new session may be stored from version 0.
    await store.save(CallSession.new(session.call_id))


async def test_a_stale_write_is_a_conflict(make_store: StoreFactory) -> None:
    worker_a, worker_b = make_store(), make_store()
    call_id = new_call_id()
    await worker_a.save(CallSession.new(call_id, agent="auth"))

    seen_by_a = await worker_a.load(call_id)
    seen_by_b = await worker_b.load(call_id)
    assert seen_by_a is not None and seen_by_b is not None
    seen_by_a.turn_count = 1
    await worker_a.save(seen_by_a)

    seen_by_b.active_agent = "billing"
    with pytest.raises(SessionConflict) as raised:
        await worker_b.save(seen_by_b)
    assert (raised.value.expected, raised.value.actual) == (1, 2)
    assert "another writer" in str(raised.value)
    assert seen_by_b.version == 1  # a failed write changes nothing

    stored = await worker_b.load(call_id)
    assert stored is not None
    assert (stored.version, stored.turn_count, stored.active_agent) == (2, 1, "auth")


async def test_creating_a_session_that_exists_is_a_conflict(make_store: StoreFactory) -> None:
    store = make_store()
    call_id = new_call_id()
    await store.save(CallSession.new(call_id))
    with pytest.raises(SessionConflict) as raised:
        await store.save(CallSession.new(call_id))
    assert (raised.value.expected, raised.value.actual) == (0, 1)


async def test_explicit_expected_version_wins_over_the_sessions(make_store: StoreFactory) -> None:
    store = make_store()
    session = await store.save(CallSession.new(new_call_id()))
    session.version = 7  # whatever the object says, the caller names the version it read
    await store.save(session, expected_version=1)
    assert session.version == 2


async def test_update_applies_a_change_and_creates_with_default(make_store: StoreFactory) -> None:
    store = make_store()
    call_id = new_call_id()
    with pytest.raises(SessionNotFound):
        await store.update(call_id, lambda s: None)

    def hand_off(session: CallSession) -> None:
        session.active_agent = "billing"

    created = await store.update(call_id, hand_off, default=lambda: CallSession.new(call_id))
    assert (created.version, created.active_agent) == (1, "billing")

    replaced = await store.update(call_id, lambda s: s.model_copy(update={"turn_count": 5}))
    assert (replaced.version, replaced.turn_count) == (2, 5)

    with pytest.raises(ValueError, match="another call"):
        await store.update(call_id, lambda s: CallSession.new(new_call_id()))


async def test_racing_updates_from_two_clients_lose_nothing(make_store: StoreFactory) -> None:
    worker_a, worker_b = make_store(), make_store()
    call_id = new_call_id()
    per_worker, rounds = 12, 4
    attempts = 0

    def add_turn(tag: str) -> Callable[[CallSession], None]:
        def change(session: CallSession) -> None:
            nonlocal attempts
            attempts += 1
            session.turn_count += 1
            session.add_message("user", tag, agent="auth")

        return change

    async def writer(store: SessionStore, name: str, index: int) -> None:
        for round_ in range(rounds):
            await store.update(
                call_id,
                add_turn(f"{name}-{index}-{round_}"),
                default=lambda: CallSession.new(call_id, agent="auth"),
                timeout=30,
            )

    await asyncio.gather(
        *(writer(worker_a, "a", i) for i in range(per_worker)),
        *(writer(worker_b, "b", i) for i in range(per_worker)),
    )

    final = await worker_a.load(call_id)
    total = 2 * per_worker * rounds
    assert final is not None
    assert final.turn_count == total
    assert final.version == total
    tags = sorted(m.content or "" for m in final.messages("auth"))
    expected = sorted(
        f"{name}-{i}-{r}" for name in "ab" for i in range(per_worker) for r in range(rounds)
    )
    assert tags == expected
    assert attempts > total, "the writers never collided: the race tested nothing"


async def test_bad_call_ids_are_refused(make_store: StoreFactory) -> None:
    store = make_store()
    for bad in ["", "has space", "brace{", "brace}", "x" * 300, "tab\t"]:
        with pytest.raises(ValueError):
            await store.load(bad)


async def test_health_is_ok_with_a_latency(make_store: StoreFactory) -> None:
    health = await make_store().health()
    assert health.status == "ok"
    assert health.latency_ms is not None and health.latency_ms >= 0
