"""Start a call's session: resume the stored one if the call was here before, else a fresh one.

A media socket that ACS reconnects for the same call connection id (or a browser that reconnects
with its session id) finds the state the previous pipeline stored, on whichever worker it lands:
the new pipeline restores agent, memory and history from it and does not greet again.
"""

from __future__ import annotations

from dataclasses import dataclass

from loguru import logger

from voicebot.sessions.model import CallSession
from voicebot.sessions.store import SessionStore, SessionStoreError, SessionStoreUnavailable


@dataclass(frozen=True)
class OpenedSession:
    session: CallSession
    """The session the call goes on with (stored, or ``fresh``)."""
    resumed: bool
    """True when a stored session was found: restore from it and do not greet again."""
    store_available: bool
    """False when the store could not be read; the call starts afresh and its writer retries."""


async def open_session(store: SessionStore, fresh: CallSession) -> OpenedSession:
    """The stored session of ``fresh.call_id`` if there is one, else ``fresh``. Never raises.

    ``fresh`` is what a new call starts with (``CallSession.new(call_id, agent=..., ...)``). If the
    store is down the call starts with ``fresh`` (it cannot know it was here before). A stored
    session this version of voicebot cannot read is dropped, so the call can store anew.
    """
    call_id = fresh.call_id
    try:
        stored = await store.load(call_id)
    except SessionStoreUnavailable as exc:
        logger.warning(f"call {call_id}: session store unavailable, starting afresh ({exc})")
        return OpenedSession(session=fresh, resumed=False, store_available=False)
    except SessionStoreError as exc:
        logger.error(f"call {call_id}: {exc}; dropping it and starting afresh")
        try:
            await store.delete(call_id)
        except SessionStoreError:
            return OpenedSession(session=fresh, resumed=False, store_available=False)
        return OpenedSession(session=fresh, resumed=False, store_available=True)
    if stored is None:
        return OpenedSession(session=fresh, resumed=False, store_available=True)
    logger.info(
        f"call {call_id}: resuming session (agent {stored.active_agent}, turn {stored.turn_count})"
    )
    return OpenedSession(session=stored, resumed=True, store_available=True)
