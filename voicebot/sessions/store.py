"""The session store contract: load, versioned save, update with retry, delete, health.

Writes are optimistic: every stored session has a ``version``; :meth:`SessionStore.save` writes
only if the stored version is still the one the caller read, and raises :class:`SessionConflict`
otherwise. :meth:`SessionStore.update` is the read-modify-write loop on top of it, so two workers
changing the same call never lose each other's change.

Implementations: :class:`~voicebot.sessions.memory.InMemorySessionStore` (one process) and
:class:`~voicebot.sessions.redis_store.RedisSessionStore` (any number of workers). Both pass the
same contract tests.
"""

from __future__ import annotations

import asyncio
import random
from abc import ABC, abstractmethod
from collections.abc import Callable
from datetime import datetime
from types import TracebackType
from typing import ClassVar, Literal

from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticSerializationError

from voicebot.sessions.model import CallSession

DEFAULT_TTL_SECS = 24 * 60 * 60
"""How long a session is kept after its last write, in seconds (one day)."""

UPDATE_TIMEOUT_SECS = 5.0
"""How long :meth:`SessionStore.update` keeps retrying on conflicts, in seconds."""


class SessionStoreError(Exception):
    """The store could not do what was asked; the message says why (never session contents)."""


class SessionStoreUnavailable(SessionStoreError):
    """The store's backend could not be reached or did not answer in time (Redis down, timeout).

    Transient: the same call may succeed later. The in-process state is still valid.
    """


class SessionNotFound(SessionStoreError):
    """:meth:`SessionStore.update` was asked to change a call that has no stored session."""


class SessionConflict(SessionStoreError):
    """Another writer stored a newer version of the session since it was read."""

    def __init__(self, call_id: str, expected: int, actual: int) -> None:
        self.call_id = call_id
        self.expected = expected
        """The version the failed write was based on."""
        self.actual = actual
        """The version stored now (0: the session does not exist)."""
        super().__init__(
            f"session of call {call_id} was changed by another writer: the write expected "
            f"version {expected} but version {actual} is stored; load it again and reapply the "
            "change (SessionStore.update does this)"
        )


class StoreHealth(BaseModel):
    """What readiness reports about the store."""

    backend: str
    status: Literal["ok", "degraded"]
    latency_ms: float | None = None
    """Round trip of a ping, in milliseconds (None when it failed)."""
    detail: str | None = None
    """Why it is degraded."""


Change = Callable[[CallSession], CallSession | None]
"""A change for :meth:`SessionStore.update`: mutate the session in place (return None) or return
the session to store. It may run more than once, so it must not have other side effects."""


def encode_session(session: CallSession, *, version: int, updated_at: datetime) -> str:
    """The JSON a store keeps for ``session`` as ``version`` written at ``updated_at``."""
    try:
        stamped = session.model_copy(update={"version": version, "updated_at": updated_at})
        return stamped.model_dump_json()
    except (PydanticSerializationError, TypeError, ValueError) as exc:
        raise SessionStoreError(
            f"session of call {session.call_id} cannot be stored: memory and slots must be "
            f"JSON-serialisable ({type(exc).__name__})"
        ) from None


def decode_session(call_id: str, data: str | bytes, *, version: int) -> CallSession:
    """The session stored as ``data``, with the store's ``version``."""
    try:
        session = CallSession.model_validate_json(data)
    except ValidationError as exc:
        raise SessionStoreError(
            f"stored session of call {call_id} is unreadable ({exc.error_count()} problems, "
            f"first: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']})"
        ) from None
    session.version = version
    return session


class SessionStore(ABC):
    """Where call sessions live between turns, and between workers.

    Every method may raise :class:`SessionStoreUnavailable` when the backend is down; use
    :class:`~voicebot.sessions.writer.SessionWriter` on the audio path, which never lets that
    reach the pipeline. An invalid call id raises ``ValueError``.
    """

    backend: ClassVar[str]
    """Short name of the implementation (``memory``, ``redis``), for readiness and logs."""

    ttl_secs: float
    """Seconds a session is kept after its last write."""

    @abstractmethod
    async def load(self, call_id: str) -> CallSession | None:
        """The stored session of ``call_id`` (its ``version`` is the stored one), or None."""

    @abstractmethod
    async def save(self, session: CallSession, expected_version: int | None = None) -> CallSession:
        """Store ``session`` if the stored version is ``expected_version``; return ``session``.

        ``expected_version`` defaults to ``session.version`` (the version it was loaded with);
        0 means "the call must have no stored session". On success ``session.version`` becomes
        ``expected_version + 1``, ``session.updated_at`` the time of the write, and the key's TTL
        is reset to :attr:`ttl_secs`. The session is serialised in one step when the write starts,
        so later changes to it are not part of this write.

        Raises :class:`SessionConflict` if another writer stored a different version meanwhile.
        """

    @abstractmethod
    async def delete(self, call_id: str) -> bool:
        """Forget the session of ``call_id``; True if there was one."""

    @abstractmethod
    async def ttl(self, call_id: str) -> float | None:
        """Seconds until the session of ``call_id`` expires, or None if there is none."""

    @abstractmethod
    async def health(self) -> StoreHealth:
        """Whether the backend answers now, and how fast. Never raises."""

    async def aclose(self) -> None:  # noqa: B027 - a no-op by default, on purpose
        """Release connections. The store must not be used afterwards."""

    async def update(
        self,
        call_id: str,
        change: Change,
        *,
        default: Callable[[], CallSession] | None = None,
        timeout: float = UPDATE_TIMEOUT_SECS,
    ) -> CallSession:
        """Apply ``change`` to the stored session of ``call_id`` and store it, retrying on conflict.

        Each attempt loads the newest version and applies ``change`` to it, so concurrent updates
        from any number of workers all land. With no stored session, ``change`` applies to
        ``default()`` (raises :class:`SessionNotFound` when there is no ``default``). Raises
        :class:`SessionConflict` if ``timeout`` seconds of retries did not get a write through
        (a write storm on one call), :class:`SessionStoreUnavailable` if the backend is down.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        attempt = 0
        while True:
            session = await self.load(call_id)
            if session is None:
                if default is None:
                    raise SessionNotFound(f"call {call_id} has no stored session to update")
                session = default()
                session.version = 0
            expected = session.version
            changed = change(session)
            if changed is not None:
                session = changed
            if session.call_id != call_id:
                raise ValueError(f"update of call {call_id} produced a session of another call")
            try:
                return await self.save(session, expected_version=expected)
            except SessionConflict:
                if loop.time() >= deadline:
                    raise
            attempt += 1
            # Full jitter: racing writers spread out instead of colliding again in lockstep.
            await asyncio.sleep(random.uniform(0, min(0.05, 0.001 * 2**attempt)))

    async def __aenter__(self) -> SessionStore:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
