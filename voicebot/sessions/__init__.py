"""Call state that outlives the media socket: per-call sessions in memory or Redis.

* :mod:`~voicebot.sessions.model` — :class:`CallSession`, what is kept per call.
* :mod:`~voicebot.sessions.store` — the :class:`SessionStore` contract (versioned writes).
* :mod:`~voicebot.sessions.memory`, :mod:`~voicebot.sessions.redis_store` — the two stores.
* :mod:`~voicebot.sessions.keys` — the Redis key scheme.
* :mod:`~voicebot.sessions.writer` — :class:`SessionWriter`, non-blocking writes for one call.
* :mod:`~voicebot.sessions.resume` — :func:`open_session`, resume or start a call's session.
* :mod:`~voicebot.sessions.settings` — :func:`create_session_store` from the environment.

See docs/sessions.md for the key scheme, the guarantees and how a call uses them.
"""

from voicebot.sessions.memory import InMemorySessionStore
from voicebot.sessions.model import CallDirection, CallMetadata, CallSession, ChatMessage
from voicebot.sessions.redis_store import RedisSessionStore
from voicebot.sessions.resume import OpenedSession, open_session
from voicebot.sessions.settings import SessionSettings, create_session_store
from voicebot.sessions.store import (
    SessionConflict,
    SessionNotFound,
    SessionStore,
    SessionStoreError,
    SessionStoreUnavailable,
    StoreHealth,
)
from voicebot.sessions.writer import DegradedCalls, SessionWriter, WriterStatus

__all__ = [
    "CallDirection",
    "CallMetadata",
    "CallSession",
    "ChatMessage",
    "DegradedCalls",
    "InMemorySessionStore",
    "OpenedSession",
    "RedisSessionStore",
    "SessionConflict",
    "SessionNotFound",
    "SessionSettings",
    "SessionStore",
    "SessionStoreError",
    "SessionStoreUnavailable",
    "SessionWriter",
    "StoreHealth",
    "WriterStatus",
    "create_session_store",
    "open_session",
]
