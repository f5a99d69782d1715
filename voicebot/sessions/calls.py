"""The sessions of the calls one process runs: :class:`CallSessions` and :class:`LiveSession`.

One :class:`CallSessions` per process (created in the app lifespan, kept in the process's shared
resources under :data:`SESSIONS_RESOURCE`) holds the session store, the calls whose state cannot
be stored right now (:class:`~voicebot.sessions.writer.DegradedCalls`, for readiness) and the
:class:`LiveSession` of every call in progress, by call id.

A call's endpoint opens its live session before the call's pipeline is built
(:meth:`CallSessions.open`: the stored session if the call was here before, else a fresh one, and
the call's :class:`~voicebot.sessions.writer.SessionWriter`) and closes it when the call ends
(a last write, bounded). Processors find it by the call id they are built for
(:func:`live_session`); that is how the agents processor restores a resumed call and marks the
state dirty after every turn, without any change to how pipelines are built.
"""

from __future__ import annotations

from loguru import logger

from voicebot.services.resources import SharedResources
from voicebot.sessions.model import CallSession
from voicebot.sessions.resume import open_session
from voicebot.sessions.store import SessionStore
from voicebot.sessions.writer import FLUSH_TIMEOUT_SECS, DegradedCalls, SessionWriter

SESSIONS_RESOURCE = "sessions"
"""Key of the process's :class:`CallSessions` in its shared resources."""


class LiveSession:
    """The session of one call in progress on this worker, and the writer that stores it.

    ``resumed`` is True when the call was here before (another socket, maybe another worker):
    the pipeline restores from :attr:`session` and does not greet again. ``restored`` is set by
    whoever restored it (the agents processor), so a second restore does not happen.
    """

    def __init__(
        self,
        session: CallSession,
        writer: SessionWriter,
        *,
        resumed: bool,
        store_available: bool,
        owner: CallSessions | None = None,
    ) -> None:
        self.session = session
        self.writer = writer
        self.resumed = resumed
        self.store_available = store_available
        self.restored = False
        self._owner = owner

    def __repr__(self) -> str:
        return (
            f"LiveSession({self.session!r}, resumed={self.resumed}, "
            f"writer={self.writer.status.value})"
        )

    @property
    def call_id(self) -> str:
        return self.session.call_id

    def mark_dirty(self) -> None:
        """The session changed: store it soon. Returns at once, never raises."""
        self.writer.mark_dirty(self.session)

    async def close(self, timeout: float = FLUSH_TIMEOUT_SECS) -> bool:
        """Store the last state (at most ``timeout`` s) and forget the call; whether it is stored.

        Never raises (except ``CancelledError``); safe to call more than once.
        """
        try:
            return await self.writer.close(timeout)
        finally:
            if self._owner is not None:
                self._owner._release(self)


class CallSessions:
    """The process's session store and the live sessions of its calls; see the module docstring.

    ``close_timeout_secs`` bounds the last write of each call (:meth:`LiveSession.close`).
    """

    def __init__(
        self,
        store: SessionStore,
        *,
        close_timeout_secs: float = FLUSH_TIMEOUT_SECS,
    ) -> None:
        self.store = store
        self.degraded = DegradedCalls()
        """Calls whose newest state could not be stored (the store is down); for readiness."""
        self._close_timeout = close_timeout_secs
        self._live: dict[str, LiveSession] = {}

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, call_id: object) -> bool:
        return call_id in self._live

    def live(self, call_id: str) -> LiveSession | None:
        """The live session of ``call_id`` on this worker, if the call is in progress here."""
        return self._live.get(call_id)

    async def open(self, fresh: CallSession) -> LiveSession:
        """Open the session of ``fresh.call_id``: the stored one if any, else ``fresh``.

        Never raises: with the store down the call starts with ``fresh`` and its writer keeps
        trying. If this worker still holds the call's previous session (its socket dropped and
        it is winding down), that one is closed first, so its last write lands before the load.
        """
        call_id = fresh.call_id
        previous = self._live.get(call_id)
        if previous is not None:
            logger.info(f"call {call_id}: closing its previous session before resuming")
            await previous.close(self._close_timeout)
        opened = await open_session(self.store, fresh)
        writer = SessionWriter(
            self.store,
            opened.session,
            on_status=self.degraded,
            close_timeout_secs=self._close_timeout,
        )
        writer.start()
        live = LiveSession(
            opened.session,
            writer,
            resumed=opened.resumed,
            store_available=opened.store_available,
            owner=self,
        )
        self._live[call_id] = live
        return live

    def _release(self, live: LiveSession) -> None:
        if self._live.get(live.call_id) is live:
            del self._live[live.call_id]
        self.degraded(live.writer)  # a closed writer is no longer degraded

    async def aclose(self) -> None:
        """Close every live session (last writes, bounded), then the store. At shutdown."""
        for live in list(self._live.values()):
            await live.close(self._close_timeout)
        await self.store.aclose()


def live_session(resources: SharedResources, call_id: str) -> LiveSession | None:
    """The live session of ``call_id`` from a process's shared resources, or None.

    None when the process keeps no sessions (a pipeline run on its own: tests, the harness) or
    the call's endpoint opened none.
    """
    if SESSIONS_RESOURCE not in resources:
        return None
    sessions = resources.get(SESSIONS_RESOURCE, _missing)
    return sessions.live(call_id) if isinstance(sessions, CallSessions) else None


def _missing() -> CallSessions:
    raise LookupError(f"no {SESSIONS_RESOURCE!r} resource")
