"""CallSession, the key scheme and the settings: what is kept, how it is named, what is hidden."""

from __future__ import annotations

import pytest

from voicebot.sessions import (
    CallSession,
    InMemorySessionStore,
    RedisSessionStore,
    SessionSettings,
    create_session_store,
)
from voicebot.sessions.keys import check_call_id, session_key


def test_repr_leaves_out_personal_data() -> None:
    session = CallSession.new("c-1", agent="auth", caller="+15550100", callee="+15550199")
    session.add_message("user", "my card is 4111 1111 1111 1111")
    session.memory["account"] = "98765"
    session.slots["dob"] = "1980-02-03"
    shown = repr(session) + str(session) + repr(session.messages()[0])
    for secret in ["+15550100", "+15550199", "4111", "98765", "1980-02-03"]:
        assert secret not in shown
    assert "c-1" in shown and "auth" in shown


def test_messages_need_an_agent() -> None:
    session = CallSession.new("c-1")
    with pytest.raises(ValueError, match="no active agent"):
        session.add_message("user", "hello")
    session.add_message("user", "hello", agent="support")
    assert session.history == {"support": [session.messages("support")[0]]}


def test_key_scheme_uses_the_call_id_as_hash_tag() -> None:
    key = session_key("4f1c-77", env="prod")
    assert key == "voicebot:prod:call:{4f1c-77}:session"
    assert session_key("x", env="e", prefix="acme") == "acme:e:call:{x}:session"


@pytest.mark.parametrize("bad", ["", "a{b", "a}b", "a b", "a\nb", "x" * 257])
def test_call_ids_that_would_break_the_key_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        check_call_id(bad)
    with pytest.raises(ValueError):
        CallSession.new(bad)


def test_acs_and_browser_ids_are_fine() -> None:
    for good in ["421f0c00-80b6-4e5d-a2c4-1a2b3c4d5e6f", "aHR0cHM6Ly9.x_y-z", "s:1/2"]:
        assert check_call_id(good) == good


def test_settings_pick_memory_without_a_url(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ["REDIS_URL", "VOICEBOT_REDIS_URL", "VOICEBOT_SESSION_STORE"]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("VOICEBOT_SESSION_TTL_SECS", "600")
    store = create_session_store()
    assert isinstance(store, InMemorySessionStore)
    assert store.ttl_secs == 600


async def test_settings_pick_redis_from_redis_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://:hunter2@127.0.0.1:1/0")
    monkeypatch.setenv("VOICEBOT_SESSION_ENV", "staging")
    settings = SessionSettings()
    assert "hunter2" not in repr(settings)
    store = create_session_store(settings)
    assert isinstance(store, RedisSessionStore)
    assert (store.env, store.is_cluster) == ("staging", False)
    await store.aclose()

    monkeypatch.setenv("VOICEBOT_REDIS_CLUSTER", "true")
    store = create_session_store()
    assert isinstance(store, RedisSessionStore) and store.is_cluster
    await store.aclose()


def test_bad_settings_name_the_variable_and_hide_the_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://:hunter2@127.0.0.1:1/0")
    monkeypatch.setenv("VOICEBOT_SESSION_ENV", "prod east")
    with pytest.raises(ValueError) as raised:
        SessionSettings()
    assert "env" in str(raised.value)
    assert "hunter2" not in str(raised.value)
    monkeypatch.delenv("REDIS_URL")
    monkeypatch.setenv("VOICEBOT_SESSION_ENV", "prod")
    monkeypatch.setenv("VOICEBOT_SESSION_STORE", "redis")
    with pytest.raises(ValueError, match="REDIS_URL is not set"):
        SessionSettings()
