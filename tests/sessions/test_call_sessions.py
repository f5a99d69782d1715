"""A call's live session: opened by its endpoint, restored and kept up to date by its agents.

In memory and on the harness's virtual clock; the same over real Redis and real servers is in
test_call_resume.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipecat.frames.frames import TTSTextFrame

from voicebot.agents.router import AgentRouter
from voicebot.agents.session import AgentSession, ConversationHistory
from voicebot.agents.store import load_store
from voicebot.build.loader import load_pipeline
from voicebot.services.resources import SharedResources
from voicebot.sessions import CallSession, InMemorySessionStore, SessionStoreUnavailable
from voicebot.sessions.calls import SESSIONS_RESOURCE, CallSessions, live_session
from voicebot.testing import CallHarness

REPO = Path(__file__).resolve().parents[2]
BANK = REPO / "pipelines" / "bank.yaml"
TURN_SECS = 4.0


def message(role: str, content: str | None, **extra: Any) -> dict[str, Any]:
    return {"role": role, "content": content, **extra}


# --- the conversation, per agent -----------------------------------------------------------------


def test_messages_are_filed_under_the_agent_that_was_talking() -> None:
    history = ConversationHistory()
    context = [message("assistant", "Welcome."), message("user", "My bill.")]
    assert {a: [m.content for m in ms] for a, ms in history.update(context, "auth").items()} == {
        "auth": ["Welcome.", "My bill."]
    }
    context.append(message("assistant", "Through to billing."))
    stored = history.update(context, "billing")
    assert [m.content for m in stored["auth"]] == ["Welcome.", "My bill."]
    assert [m.content for m in stored["billing"]] == ["Through to billing."]
    assert [m.model_extra["seq"] for m in stored["auth"] + stored["billing"]] == [0, 1, 2]


def test_a_message_changed_in_place_is_stored_as_it_is_now() -> None:
    history = ConversationHistory()
    result = message("tool", "IN_PROGRESS", tool_call_id="call_1")
    context = [message("user", "Balance?"), result]
    history.update(context, "billing")
    result["content"] = '{"balance": 1}'  # pipecat fills the result in when it comes
    [_, tool] = history.update(context, "billing")["billing"]
    assert tool.content == '{"balance": 1}'
    assert tool.model_extra == {"tool_call_id": "call_1", "seq": 1}


def test_what_a_replaced_context_held_is_kept_before_the_new_one() -> None:
    history = ConversationHistory()
    history.update([message("user", "one"), message("assistant", "two")], "auth")
    stored = history.update([message("user", "three")], "support")  # a fresh-context agent
    assert [m.content for m in stored["auth"]] == ["one", "two"]
    assert [(m.content, m.model_extra["seq"]) for m in stored["support"]] == [("three", 2)]


def test_messages_that_are_not_chat_text_are_left_out() -> None:
    history = ConversationHistory()
    parts = [{"type": "text", "text": "hi"}]
    stored = history.update(
        [object(), message("developer", "x"), message("user", parts), message("user", "ok")],
        "auth",
    )
    assert [m.content for m in stored["auth"]] == ["ok"]


def test_a_stored_conversation_is_restored_in_the_order_it_was_said() -> None:
    history = ConversationHistory()
    stored = history.update(
        [
            message("user", "a"),
            message("assistant", None, tool_calls=[{"id": "c1", "type": "function"}]),
            message("assistant", "b"),
            message("user", "c"),
        ],
        "auth",
    )
    call = CallSession.new("call-1", agent="billing")
    call.history = {"billing": stored["auth"][2:], "auth": stored["auth"][:2]}
    restored = ConversationHistory().restore(call)
    assert restored == [
        {"role": "user", "content": "a"},
        {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function"}]},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
    ]


# --- the agents' state and the session ---------------------------------------------------------


def agents(call_id: str = "call-1") -> AgentSession:
    return AgentSession(call_id, load_store(REPO / "agents"), "auth", has_llm=False)


async def test_a_fresh_session_takes_the_calls_starting_state() -> None:
    calls = CallSessions(InMemorySessionStore())
    live = await calls.open(CallSession.new("call-1"))
    state = agents()
    assert state.attach(live) == []
    assert not state.resumed
    assert live.session.active_agent == "auth"
    assert live.session.memory is state.memory  # one dict: what tools learn is in the session
    state.memory["verified"] = True
    state.turn = 2
    state.save([message("user", "hi")])
    assert await live.writer.flush()
    stored = await calls.store.load("call-1")
    assert stored is not None
    assert (stored.turn_count, stored.memory["verified"]) == (2, True)
    assert [m.content for m in stored.history["auth"]] == ["hi"]
    await live.close()


async def test_a_resumed_session_restores_agent_memory_visits_turn_and_conversation() -> None:
    store = InMemorySessionStore()
    stored = CallSession.new("call-1", agent="billing")
    stored.memory = {"verified": True, "bank_name": "Contoso Bank"}
    stored.visits = {"auth": 1, "billing": 1}
    stored.turn_count = 3
    stored.add_message("user", "My PIN is 1234.", seq=0)
    await store.save(stored)
    live = await CallSessions(store).open(CallSession.new("call-1"))
    assert live.resumed

    state = agents()
    assert state.attach(live) == [{"role": "user", "content": "My PIN is 1234."}]
    assert state.resumed and live.restored
    assert (state.active, state.turn, state.visits) == ("billing", 3, {"auth": 1, "billing": 1})
    assert state.memory["verified"] is True
    # Attached once: another processor of the call does not restore it a second time.
    assert agents().attach(live) == []
    await live.close()


async def test_a_stored_agent_the_store_no_longer_has_starts_over_at_the_start_agent() -> None:
    store = InMemorySessionStore()
    await store.save(CallSession.new("call-1", agent="retired"))
    live = await CallSessions(store).open(CallSession.new("call-1"))
    state = agents()
    state.attach(live)
    assert state.active == "auth" and live.session.active_agent == "auth"
    await live.close()


# --- the process's live sessions -----------------------------------------------------------------


async def test_live_sessions_are_found_by_call_id_until_closed() -> None:
    resources = SharedResources()
    calls = resources.get(SESSIONS_RESOURCE, lambda: CallSessions(InMemorySessionStore()))
    assert live_session(SharedResources(), "call-1") is None  # a process that keeps none
    live = await calls.open(CallSession.new("call-1"))
    assert live_session(resources, "call-1") is live
    assert "call-1" in calls and len(calls) == 1
    await live.close()
    assert live_session(resources, "call-1") is None
    await live.close()  # twice is fine


async def test_a_reconnection_on_the_same_worker_waits_for_the_old_sockets_last_write() -> None:
    calls = CallSessions(InMemorySessionStore())
    old = await calls.open(CallSession.new("call-1", agent="auth"))
    old.session.turn_count = 2
    old.mark_dirty()
    new = await calls.open(CallSession.new("call-1"))  # before the old socket's handler closed
    assert new.resumed and new.session.turn_count == 2
    assert old.writer.status.value == "closed"
    assert calls.live("call-1") is new
    await new.close()


class DownStore(InMemorySessionStore):
    """A store whose backend is unreachable."""

    async def load(self, call_id: str) -> CallSession | None:
        raise SessionStoreUnavailable("down")

    async def save(self, session: CallSession, expected_version: int | None = None) -> None:
        raise SessionStoreUnavailable("down")


async def test_with_the_store_down_a_call_starts_afresh_and_is_counted_degraded() -> None:
    calls = CallSessions(DownStore(), close_timeout_secs=0.2)
    live = await calls.open(CallSession.new("call-1"))
    assert not live.resumed and not live.store_available
    live.mark_dirty()
    assert not await live.writer.flush(0.3)
    assert calls.degraded.call_ids() == ["call-1"]
    assert not await live.close()
    assert len(calls.degraded) == 0 and len(calls) == 0


# --- a whole call, dropped and resumed (virtual time) ------------------------------------------


def spoken(call: CallHarness) -> str:
    return " ".join(f.text for f in call.of_type(TTSTextFrame))


async def converse(call: CallHarness, lines: list[str]) -> None:
    await call.wait(TURN_SECS)
    for line in lines:
        await call.say(line)
        await call.wait(TURN_SECS)


async def test_a_resumed_call_goes_on_listening_and_answers_from_what_it_learned() -> None:
    spec = load_pipeline(BANK, env={})
    store = InMemorySessionStore()

    resources = SharedResources()
    calls = resources.get(SESSIONS_RESOURCE, lambda: CallSessions(store))
    live = await calls.open(CallSession.new("bank-1"))
    async with CallHarness(spec, resources=resources, call_id="bank-1") as call:
        await converse(
            call, ["I need help with my bill.", "My account number is 12345678.", "My PIN is 1234."]
        )
    writes_before = live.writer.writes
    assert await live.close()
    assert writes_before >= 3  # one at least per turn (and per agent entered)
    first = spoken(call)
    assert first.startswith("Welcome to Contoso Bank.")

    resources = SharedResources()  # another worker
    calls = resources.get(SESSIONS_RESOURCE, lambda: CallSessions(store))
    live = await calls.open(CallSession.new("bank-1"))
    assert live.resumed and live.session.active_agent == "billing"
    async with CallHarness(spec, resources=resources, call_id="bank-1") as call:
        await call.wait(TURN_SECS)
        assert spoken(call) == ""  # no greeting: the resumed call goes on listening
        await call.say("What is my balance?")
        await call.wait(TURN_SECS)
        router = call.processor(AgentRouter)
    assert spoken(call) == "Your balance is $1,234.56."
    assert [(r.kind, r.agent, r.reason) for r in router.decisions.records][0] == (
        "enter",
        "billing",
        "resumed",
    )
    assert await live.close()
    stored = await store.load("bank-1")
    assert stored is not None
    assert stored.turn_count == 4 and stored.visits == {"auth": 1, "billing": 1}
    assert stored.history["billing"][-1].content == "Your balance is $1,234.56."
    said = [m for history in stored.history.values() for m in history if m.role == "user"]
    assert len(said) == 4  # the restored messages were recognised, not stored twice
