"""The calls this server knows: one :class:`CallRecord` per ACS call, kept in a :class:`CallStore`.

A call's id is its ACS ``callConnectionId``. Records are immutable snapshots; a store changes one
only through :meth:`CallStore.update`, which applies a function to the current record atomically,
so a webhook that arrives before the answer request returns cannot lose either update.

Caller and callee numbers are personal data: records hold them in full (the call-control API shows
them to its authenticated users), but logs and list views use :func:`mask_party`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class CallState(StrEnum):
    """Where a call is, as Call Automation's callbacks tell it."""

    DIALING = "dialing"
    """Outbound: created, the callee has not answered yet."""
    ANSWERING = "answering"
    """Inbound: answered, ACS has not confirmed the connection yet."""
    CONNECTED = "connected"
    MEDIA_STREAMING = "media_streaming"
    """Connected and ACS streams the call's audio to the media endpoint."""
    TRANSFERRING = "transferring"
    DISCONNECTED = "disconnected"
    FAILED = "failed"
    """The call never connected (``CreateCallFailed``, ``AnswerCallFailed``)."""

    @property
    def ended(self) -> bool:
        return self in (CallState.DISCONNECTED, CallState.FAILED)


class CallDirection(StrEnum):
    INBOUND = "inbound"
    OUTBOUND = "outbound"


class ResultInfo(BaseModel):
    """ACS's ``resultInformation`` of the last callback that carried one."""

    model_config = ConfigDict(frozen=True, alias_generator=to_camel, populate_by_name=True)

    code: int | None = None
    sub_code: int | None = None
    message: str = ""


def _now() -> datetime:
    return datetime.now(UTC)


class CallRecord(BaseModel):
    """What this server knows about one call (a snapshot; change it with ``model_copy``)."""

    model_config = ConfigDict(frozen=True)

    call_id: str
    """ACS ``callConnectionId``."""
    direction: CallDirection | None = None
    """None while only callbacks have been seen (they can arrive before the answer returns)."""
    state: CallState
    caller: str | None = None
    """E.164 number (``+15551234567``) or, for a non-phone party, its ACS raw id."""
    callee: str | None = None
    correlation_id: str | None = None
    server_call_id: str | None = None
    stream_id: str | None = None
    """The id the call's media URL token is signed for (see :mod:`voicebot.acs.tokens`)."""
    created_at: datetime
    updated_at: datetime
    connected_at: datetime | None = None
    ended_at: datetime | None = None
    last_event: str | None = None
    """Short type of the last callback, e.g. ``CallConnected``."""
    result: ResultInfo | None = None
    outcome: str | None = None
    """How the call ended: the pipeline's outcome (``completed``, ``idle``, …), ``transferred``,
    or ``failed``."""
    error: str | None = None
    """The last failed Call Automation request for this call."""

    @classmethod
    def new(cls, call_id: str, state: CallState, **fields: Any) -> CallRecord:
        now = _now()
        return cls(call_id=call_id, state=state, created_at=now, updated_at=now, **fields)

    def changed(self, **changes: Any) -> CallRecord:
        """A copy with ``changes`` applied and ``updated_at`` set to now."""
        return self.model_copy(update={**changes, "updated_at": _now()})

    def view(self, *, mask_numbers: bool = False) -> dict[str, Any]:
        """The record as the call-control API shows it (JSON types, no media stream binding)."""
        data = self.model_dump(mode="json", exclude={"stream_id"})
        if mask_numbers:
            data["caller"] = mask_party(self.caller)
            data["callee"] = mask_party(self.callee)
        return data


def mask_party(party: str | None) -> str | None:
    """A phone number with all but its last four digits hidden (``+*******4567``); any other
    identifier cut to its kind prefix (``8:acs:…``). For logs and list views."""
    if not party:
        return party
    if party.startswith("+") or party.isdigit():
        digits = party.lstrip("+")
        return "+" + "*" * max(len(digits) - 4, 0) + digits[-4:]
    prefix, sep, _ = party.rpartition(":")
    return f"{prefix}{sep}…" if sep else "…"


RecordChange = Callable[[CallRecord | None], CallRecord | None]
"""Given the current record (None if unknown), the new one (None: leave the store unchanged)."""


class CallStore(Protocol):
    """Where call records live. In memory for one process; a shared store (Redis) implements the
    same three methods, with :meth:`update` as an atomic read-modify-write."""

    async def get(self, call_id: str) -> CallRecord | None: ...

    async def update(self, call_id: str, change: RecordChange) -> CallRecord | None:
        """Apply ``change`` to the record of ``call_id`` atomically; returns the stored record."""
        ...

    async def list(self) -> list[CallRecord]:
        """All known calls, oldest first."""
        ...


class InMemoryCallStore:
    """A :class:`CallStore` for one process. Bounded: past ``max_calls`` records, the oldest ended
    calls are forgotten (live ones never are)."""

    def __init__(self, max_calls: int = 1000) -> None:
        self._records: OrderedDict[str, CallRecord] = OrderedDict()
        self._max = max_calls

    async def get(self, call_id: str) -> CallRecord | None:
        return self._records.get(call_id)

    async def update(self, call_id: str, change: RecordChange) -> CallRecord | None:
        # No await between read and write: atomic on the event loop.
        current = self._records.get(call_id)
        new = change(current)
        if new is None:
            return current
        if new.call_id != call_id:
            raise ValueError(f"a change to call {call_id!r} returned call {new.call_id!r}")
        self._records[call_id] = new
        self._evict()
        return new

    async def list(self) -> list[CallRecord]:
        return list(self._records.values())

    def _evict(self) -> None:
        excess = len(self._records) - self._max
        if excess <= 0:
            return
        ended = [call_id for call_id, r in self._records.items() if r.state.ended][:excess]
        for call_id in ended:
            del self._records[call_id]
