"""Where a call's endpoint starts its session, and what readiness says about the store.

Every endpoint that carries a conversation (the ACS media stream, a browser conversation) calls
:func:`start_call_session` once it has accepted the call and before it builds the pipeline, and
closes what it returns when the call ends::

    live = await start_call_session(state, call_id, direction="inbound", caller=caller)
    try:
        await CallRunner(state.spec, call_id=call_id, ...).run()
    finally:
        await live.close()          # last write, bounded; never raises

``call_id`` is what identifies the conversation across reconnections: the ACS call connection id,
or the browser's session id. If the call was here before (on this worker or another), its stored
session is loaded and the pipeline's agents carry on from it without greeting again.

The process's :class:`~voicebot.sessions.calls.CallSessions` (store, degraded calls, live
sessions) is created in the app lifespan from the environment (see
:mod:`voicebot.sessions.settings`) and kept in the shared resources, where the agents processor
finds the call's live session by call id.
"""

from __future__ import annotations

from typing import Any

from voicebot.server.app import AppState
from voicebot.sessions.calls import SESSIONS_RESOURCE, CallSessions, LiveSession
from voicebot.sessions.model import CallDirection, CallSession
from voicebot.sessions.settings import SessionSettings, create_session_store


def create_call_sessions(settings: SessionSettings | None = None) -> CallSessions:
    """The process's sessions on the store ``settings`` ask for (default: the environment)."""
    return CallSessions(create_session_store(settings))


def open_call_sessions(state: AppState, settings: SessionSettings | None = None) -> CallSessions:
    """Create the process's :class:`CallSessions` (once; the app lifespan does) in its shared
    resources, which close it (live sessions' last writes, then the store) at shutdown."""
    return state.resources.get(
        SESSIONS_RESOURCE, lambda: create_call_sessions(settings), close=CallSessions.aclose
    )


def call_sessions(state: AppState) -> CallSessions:
    """The process's :class:`CallSessions` (created from the environment on first use, if the
    app's lifespan has not created it)."""
    return open_call_sessions(state)


async def start_call_session(
    state: AppState,
    call_id: str,
    *,
    direction: CallDirection | str = CallDirection.INBOUND,
    correlation_id: str | None = None,
    caller: str | None = None,
    callee: str | None = None,
) -> LiveSession:
    """Open the session of conversation ``call_id``: resumed if stored, else fresh. Never raises.

    The metadata is used for a fresh session only (a resumed one keeps what it was stored with).
    The returned session's writer stores the state in the background whenever the pipeline marks
    it dirty; ``await live.close()`` when the call ends stores the last state, bounded.

    Raises:
        ValueError: ``call_id`` cannot be a session key (braces, whitespace, control characters).
    """
    fresh = CallSession.new(
        call_id,
        correlation_id=correlation_id or None,
        direction=direction,
        caller=caller,
        callee=callee,
    )
    return await call_sessions(state).open(fresh)


async def sessions_check(state: AppState) -> dict[str, Any]:
    """Readiness of the session store: ``ok``, or ``degraded`` while the store cannot be
    reached or some calls' state cannot be stored (the calls go on with in-process state)."""
    sessions = call_sessions(state)
    health = await sessions.store.health()
    degraded_calls = len(sessions.degraded)
    status = "ok" if health.status == "ok" and degraded_calls == 0 else "degraded"
    return {
        **health.model_dump(),
        "status": status,
        "live_calls": len(sessions),
        "degraded_calls": degraded_calls,
    }
