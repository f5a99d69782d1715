"""Write a call's session in the background, so the audio path never waits on the store.

One :class:`SessionWriter` per call. The call's code changes its :class:`CallSession` in place and
calls :meth:`SessionWriter.mark_dirty` after every turn (it returns at once); the writer's task
stores the newest state as soon as it can. On disconnect :meth:`SessionWriter.close` makes a last
write, bounded by a timeout, and ends the task.

When the store is down (Redis stopped, unreachable, too slow) the call goes on with its in-process
state: the writer turns :attr:`~SessionWriter.degraded`, tells ``on_status``, keeps retrying with
exponential backoff, and writes the newest state once the store is back — every turn taken
meanwhile is in it. No store error ever reaches the caller of :meth:`~SessionWriter.mark_dirty`,
:meth:`~SessionWriter.flush` or :meth:`~SessionWriter.close`.

When another worker wrote the same call meanwhile (the call was resumed elsewhere), the write
conflicts; ``on_conflict(stored, local)`` decides whether this writer overwrites the stored state
(True) or stops writing because the call has moved on without it (False, status ``superseded``).
The default, :func:`keep_local_unless_behind`, overwrites unless the stored session has more turns.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from enum import StrEnum
from types import TracebackType

from loguru import logger

from voicebot.sessions.model import CallSession
from voicebot.sessions.store import SessionConflict, SessionStore, SessionStoreError

FLUSH_TIMEOUT_SECS = 2.0
"""Default bound of :meth:`SessionWriter.flush` and :meth:`SessionWriter.close`, in seconds."""

RETRY_INITIAL_SECS = 0.1
"""First pause after a failed write, in seconds; doubles up to ``RETRY_MAX_SECS``."""

RETRY_MAX_SECS = 2.0
"""Longest pause between two tries while the store is down, in seconds."""

_CONFLICT_ROUNDS = 5


class WriterStatus(StrEnum):
    OK = "ok"
    """Every write so far went through (or nothing was written yet)."""
    DEGRADED = "degraded"
    """The last write failed; the state is kept and retried."""
    SUPERSEDED = "superseded"
    """Another worker carries the call on; this writer stores nothing more."""
    CLOSED = "closed"
    """:meth:`SessionWriter.close` ran; the writer stores nothing more."""


ConflictPolicy = Callable[[CallSession, CallSession], bool]
"""``(stored, local) -> True`` to overwrite the stored session with the local one."""


def keep_local_unless_behind(stored: CallSession, local: CallSession) -> bool:
    """Overwrite unless the stored session is further on (more turns): then the call goes on
    elsewhere and this worker's copy is stale."""
    return local.turn_count >= stored.turn_count


class SessionWriter:
    """Stores one call's session from a background task it owns; see the module docstring.

    ``session`` is the call's live session (loaded for a resumed call, new otherwise); its
    ``version`` is where writing starts. ``on_status(writer)`` is called on every status change
    (e.g. to report degraded calls in readiness); it must not block or raise.

    Use it as ``async with SessionWriter(store, session) as writer:`` or call :meth:`close`
    when the call ends. The task starts on first use, so the writer may be made anywhere.
    """

    def __init__(
        self,
        store: SessionStore,
        session: CallSession,
        *,
        on_status: Callable[[SessionWriter], None] | None = None,
        on_conflict: ConflictPolicy = keep_local_unless_behind,
        retry_initial_secs: float = RETRY_INITIAL_SECS,
        retry_max_secs: float = RETRY_MAX_SECS,
        close_timeout_secs: float = FLUSH_TIMEOUT_SECS,
    ) -> None:
        if retry_initial_secs <= 0 or retry_max_secs < retry_initial_secs:
            raise ValueError(
                "session writer needs 0 < retry_initial_secs <= retry_max_secs "
                f"(got {retry_initial_secs!r} and {retry_max_secs!r})"
            )
        self._store = store
        self._session = session
        self._on_status = on_status
        self._on_conflict = on_conflict
        self._retry_initial = retry_initial_secs
        self._retry_max = retry_max_secs
        self._close_timeout = close_timeout_secs
        self._stored_version = session.version
        self._marked = 0
        """How many times the state was marked dirty."""
        self._written = 0
        """The value of ``_marked`` the last successful write covered."""
        self._dirty = asyncio.Event()
        self._retry_now = asyncio.Event()
        self._waiters: list[tuple[int, asyncio.Future[bool]]] = []
        self._task: asyncio.Task[None] | None = None
        self._status = WriterStatus.OK
        self._closed = False
        self.last_error: str | None = None
        """Why the last write failed (no session contents), or None after a success."""
        self.writes = 0
        """Successful writes so far."""

    @property
    def call_id(self) -> str:
        return self._session.call_id

    @property
    def session(self) -> CallSession:
        """The live session this writer stores."""
        return self._session

    @property
    def status(self) -> WriterStatus:
        return self._status

    @property
    def degraded(self) -> bool:
        """True while the newest state could not be stored (the store is down or failing)."""
        return self._status is WriterStatus.DEGRADED

    @property
    def pending(self) -> bool:
        """True while a marked state has not been stored yet."""
        return self._written < self._marked

    def start(self) -> None:
        """Start the background task now, in the caller's task (else it starts on first use).

        The call's endpoint does, so the task belongs to the call's whole lifetime rather than to
        whichever processor marks the state first.
        """
        self._ensure_task()

    def mark_dirty(self, session: CallSession | None = None) -> None:
        """The session changed (a turn ended, an agent handed off): store it soon.

        Returns at once and never raises; call it from the event loop (not from an SDK callback
        thread). Pass ``session`` if the call replaced its session object. After :meth:`close` or
        once superseded it does nothing.
        """
        if self._closed or self._status is WriterStatus.SUPERSEDED:
            return
        if session is not None:
            self._session = session
        self._marked += 1
        self._dirty.set()
        self._ensure_task()

    async def flush(self, timeout: float = FLUSH_TIMEOUT_SECS) -> bool:
        """Wait until the state marked so far is stored; True if it is, False on timeout.

        False also when the store is down (the writer keeps trying) or the writer is superseded
        or closed. Never raises; a flush asks for an immediate try even during a backoff pause.
        """
        target = self._marked
        if self._written >= target:
            return True
        if self._closed or self._status is WriterStatus.SUPERSEDED:
            return False
        if not self._ensure_task():
            return False
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        entry = (target, waiter)
        self._waiters.append(entry)
        self._retry_now.set()
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.shield(waiter)
        except TimeoutError:
            return False
        finally:
            if entry in self._waiters:
                self._waiters.remove(entry)

    async def close(self, timeout: float | None = None) -> bool:
        """Store the last state (within ``timeout``, default ``close_timeout_secs``), then stop.

        Returns whether the last state is stored. Safe to call more than once; never raises
        except ``CancelledError`` when the caller itself is cancelled.
        """
        if self._closed:
            return not self.pending
        bound = self._close_timeout if timeout is None else timeout
        try:
            stored = await self.flush(bound) if self.pending else True
        finally:
            self._closed = True
            task, self._task = self._task, None
            if task is not None and not task.done():
                task.cancel()
                await asyncio.wait([task])
            self._resolve_waiters(final=True)
        if not stored and self._status is not WriterStatus.SUPERSEDED:
            logger.warning(
                f"call {self.call_id}: last session state not stored "
                f"({self.last_error or 'timed out'}); it is lost when this process exits"
            )
        self._set_status(WriterStatus.CLOSED)
        return stored

    async def __aenter__(self) -> SessionWriter:
        self._ensure_task()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _ensure_task(self) -> bool:
        """Start the background task if needed; False when there is no running loop."""
        if self._task is not None or self._closed:
            return self._task is not None
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        self._task = loop.create_task(self._run(), name=f"session-writer-{self.call_id}")
        return True

    async def _run(self) -> None:
        delay = self._retry_initial
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            target = self._marked
            if target <= self._written:
                continue
            try:
                await self._write()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any store failure: keep the state, try again later
                self.last_error = f"{type(exc).__name__}: {exc}"
                self._set_status(WriterStatus.DEGRADED)
                self._dirty.set()
                await self._pause(delay)
                delay = min(delay * 2, self._retry_max)
                continue
            delay = self._retry_initial
            if self._status is WriterStatus.SUPERSEDED:
                self._resolve_waiters(final=True)
                return
            self._written = target
            self.writes += 1
            self.last_error = None
            self._set_status(WriterStatus.OK)
            self._resolve_waiters()

    async def _pause(self, seconds: float) -> None:
        """Sleep ``seconds``, or less if a flush asks for a try now."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._retry_now.wait()
        self._retry_now.clear()

    async def _write(self) -> None:
        """Store the live session; on a conflict, settle it with ``on_conflict``."""
        session = self._session
        expected = self._stored_version
        for _ in range(_CONFLICT_ROUNDS):
            try:
                await self._store.save(session, expected_version=expected)
            except SessionConflict:
                stored = await self._store.load(session.call_id)
                if stored is None:
                    expected = 0  # expired or lost with a Redis restart: store it afresh
                    continue
                if not self._on_conflict(stored, session):
                    logger.warning(
                        f"call {self.call_id}: another worker stored a newer session "
                        f"(version {stored.version}, turn {stored.turn_count}); this one stops "
                        "writing"
                    )
                    self._set_status(WriterStatus.SUPERSEDED)
                    return
                expected = stored.version
                continue
            self._stored_version = session.version
            return
        raise SessionStoreError(
            f"session of call {session.call_id} kept conflicting with other writers "
            f"({_CONFLICT_ROUNDS} tries)"
        )

    def _resolve_waiters(self, *, final: bool = False) -> None:
        for target, waiter in list(self._waiters):
            if waiter.done():
                continue
            if self._written >= target:
                waiter.set_result(True)
            elif final:
                waiter.set_result(False)

    def _set_status(self, status: WriterStatus) -> None:
        if status is self._status:
            return
        previous, self._status = self._status, status
        if status is WriterStatus.DEGRADED:
            logger.warning(
                f"call {self.call_id}: session store unavailable, going on with in-process "
                f"state and retrying ({self.last_error})"
            )
        elif previous is WriterStatus.DEGRADED and status is WriterStatus.OK:
            logger.info(f"call {self.call_id}: session store back, state stored")
        if self._on_status is not None:
            try:
                self._on_status(self)
            except Exception:
                logger.exception(f"call {self.call_id}: session on_status callback failed")


class DegradedCalls:
    """Which calls' writers are degraded now: pass it as every writer's ``on_status``.

    Readiness reports ``len(degraded_calls)`` and :meth:`call_ids`.
    """

    def __init__(self) -> None:
        self._ids: set[str] = set()

    def __call__(self, writer: SessionWriter) -> None:
        if writer.degraded:
            self._ids.add(writer.call_id)
        else:
            self._ids.discard(writer.call_id)

    def __len__(self) -> int:
        return len(self._ids)

    def call_ids(self) -> list[str]:
        return sorted(self._ids)
