"""Sessions kept in this process: the default when no Redis is configured.

Resume works only when the reconnecting call lands on the same process. Sessions are stored as
JSON, exactly as in Redis, so a caller can never change a stored session by mutating an object it
saved or loaded, and the two stores behave alike (same versions, conflicts and TTLs).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from voicebot.sessions.keys import check_call_id
from voicebot.sessions.model import CallSession, utc_now
from voicebot.sessions.store import (
    DEFAULT_TTL_SECS,
    SessionConflict,
    SessionStore,
    StoreHealth,
    decode_session,
    encode_session,
)

_SWEEP_EVERY_SECS = 30.0


@dataclass
class _Entry:
    version: int
    data: str
    expires_at: float


class InMemorySessionStore(SessionStore):
    """A :class:`SessionStore` in a dict; one process, lost when it exits.

    ``clock`` (monotonic seconds) decides expiry; tests may pass their own.
    """

    backend: ClassVar[str] = "memory"

    def __init__(
        self,
        *,
        ttl_secs: float = DEFAULT_TTL_SECS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl_secs <= 0:
            raise ValueError(f"session ttl_secs must be positive (got {ttl_secs!r})")
        self.ttl_secs = ttl_secs
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._next_sweep = clock() + _SWEEP_EVERY_SECS

    def __len__(self) -> int:
        self._expire(force=True)
        return len(self._entries)

    async def load(self, call_id: str) -> CallSession | None:
        check_call_id(call_id)
        # Yield like a networked store would, so concurrent callers interleave the same way.
        await asyncio.sleep(0)
        entry = self._live(call_id)
        if entry is None:
            return None
        return decode_session(call_id, entry.data, version=entry.version)

    async def save(self, session: CallSession, expected_version: int | None = None) -> CallSession:
        expected = session.version if expected_version is None else expected_version
        now = utc_now()
        data = encode_session(session, version=expected + 1, updated_at=now)
        await asyncio.sleep(0)
        self._expire()
        entry = self._live(session.call_id)
        actual = entry.version if entry is not None else 0
        if actual != expected:
            raise SessionConflict(session.call_id, expected, actual)
        self._entries[session.call_id] = _Entry(
            version=expected + 1, data=data, expires_at=self._clock() + self.ttl_secs
        )
        session.version = expected + 1
        session.updated_at = now
        return session

    async def delete(self, call_id: str) -> bool:
        check_call_id(call_id)
        if self._live(call_id) is None:
            return False
        del self._entries[call_id]
        return True

    async def ttl(self, call_id: str) -> float | None:
        check_call_id(call_id)
        entry = self._live(call_id)
        return None if entry is None else entry.expires_at - self._clock()

    async def health(self) -> StoreHealth:
        return StoreHealth(backend=self.backend, status="ok", latency_ms=0.0)

    def _live(self, call_id: str) -> _Entry | None:
        entry = self._entries.get(call_id)
        if entry is not None and entry.expires_at <= self._clock():
            del self._entries[call_id]
            return None
        return entry

    def _expire(self, *, force: bool = False) -> None:
        """Drop expired sessions; a full sweep runs at most every ``_SWEEP_EVERY_SECS``."""
        now = self._clock()
        if not force and now < self._next_sweep:
            return
        self._next_sweep = now + _SWEEP_EVERY_SECS
        for call_id in [c for c, e in self._entries.items() if e.expires_at <= now]:
            del self._entries[call_id]
