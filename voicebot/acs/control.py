"""Call control: answer and place ACS calls with media streaming, follow them, end them.

One :class:`CallControl` per process (created with the app, closed in its lifespan). It answers an
``IncomingCall`` with bidirectional media streaming to our media WebSocket, under a URL signed for
a fresh *stream id* (the ACS call id does not exist until the answer returns, so the token cannot
be bound to it); it keeps each call's :class:`~voicebot.acs.calls.CallRecord` up to date from
ACS's callbacks, cancels a call's pipeline when ACS reports the call disconnected, and hangs up
through ACS when the pipeline ends the call from the bot's side.

Without ``VOICEBOT_ACS_CONNECTION_STRING`` it is *not configured*: the call endpoints answer 503.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlencode

from loguru import logger

from voicebot.acs.calls import (
    CallDirection,
    CallRecord,
    CallState,
    CallStore,
    InMemoryCallStore,
    RecordChange,
    mask_party,
)
from voicebot.acs.client import (
    CallAutomation,
    CallAutomationError,
    parse_connection_string,
    streaming_options,
)
from voicebot.acs.events import CallEvent, IncomingCall
from voicebot.acs.tokens import media_url
from voicebot.runner import ActiveCalls, CallOutcome

if TYPE_CHECKING:
    from azure.communication.callautomation import MediaStreamingOptions

    from voicebot.build.loader import PipelineSpec
    from voicebot.config import Settings

_T = TypeVar("_T")

#: An E.164 phone number: ``+``, country code, subscriber number; 8 to 15 digits.
E164 = re.compile(r"^\+[1-9]\d{7,14}$")

#: Pipeline outcomes after which the bot, not the caller, ended the call: hang up through ACS,
#: or the caller stays in a silent call. (CANCELLED means the caller or the socket is gone.)
BOT_ENDED = frozenset(
    {CallOutcome.COMPLETED, CallOutcome.IDLE, CallOutcome.MAX_DURATION, CallOutcome.ERROR}
)

#: Callback types that change a call's record; others are acknowledged and ignored.
HANDLED_EVENTS = frozenset(
    {
        "CallConnected",
        "CallDisconnected",
        "MediaStreamingStarted",
        "MediaStreamingStopped",
        "MediaStreamingFailed",
        "CallTransferAccepted",
        "CallTransferFailed",
        "CreateCallFailed",
        "AnswerCallFailed",
        "ParticipantsUpdated",
    }
)


class CallControlSettingsError(ValueError):
    """Call control is asked for (a connection string is set) but its settings are incomplete."""


class UnknownCallError(LookupError):
    """No call with this id is known here."""


def call_rate(pipeline_rate: int) -> int:
    """The rate ACS should stream a call at for a pipeline whose input runs at ``pipeline_rate``
    (Hz): 24000 for 24 kHz and above, else 16000."""
    return 24000 if pipeline_rate >= 24000 else 16000


def next_state(state: CallState, event_type: str) -> CallState:
    """A call's state after a callback of ``event_type``; ended calls stay ended, and events that
    arrive late (``CallConnected`` after ``MediaStreamingStarted``) never move a call back."""
    if state.ended:
        return state
    early = (CallState.ANSWERING, CallState.DIALING)
    match event_type:
        case "CallConnected" if state in early:
            return CallState.CONNECTED
        case "MediaStreamingStarted" if state in (*early, CallState.CONNECTED):
            return CallState.MEDIA_STREAMING
        case "MediaStreamingStopped" | "MediaStreamingFailed" if state is CallState.MEDIA_STREAMING:
            return CallState.CONNECTED
        case "CallTransferAccepted":
            return CallState.TRANSFERRING
        case "CallTransferFailed" if state is CallState.TRANSFERRING:
            return CallState.CONNECTED
        case "CreateCallFailed" | "AnswerCallFailed":
            return CallState.FAILED
        case "CallDisconnected":
            return CallState.DISCONNECTED
    return state


def apply_event(record: CallRecord | None, event: CallEvent) -> CallRecord:
    """``record`` (None: a call first heard of through this callback) updated by ``event``."""
    now = datetime.now(UTC)
    if record is None:
        record = CallRecord.new(event.call_connection_id, CallState.CONNECTED)
    state = next_state(record.state, event.type)
    changes: dict[str, Any] = {"state": state, "last_event": event.type}
    if event.result is not None:
        changes["result"] = event.result
    if event.correlation_id and not record.correlation_id:
        changes["correlation_id"] = event.correlation_id
    if event.server_call_id and not record.server_call_id:
        changes["server_call_id"] = event.server_call_id
    if state in (CallState.CONNECTED, CallState.MEDIA_STREAMING) and record.connected_at is None:
        changes["connected_at"] = now
    if state.ended and record.ended_at is None:
        changes["ended_at"] = now
    if not record.outcome:
        if event.type == "CallTransferAccepted":
            changes["outcome"] = "transferred"
        elif state is CallState.FAILED:
            changes["outcome"] = "failed"
    return record.changed(**changes)


class CallControl:
    """Answers, places, follows and ends this process's ACS calls.

    ``client`` None means call control is not configured (no ACS resource): every operation that
    needs ACS raises RuntimeError, and :meth:`on_call_finished` only records the outcome.
    """

    def __init__(
        self,
        client: CallAutomation | None = None,
        *,
        store: CallStore | None = None,
        active: ActiveCalls | None = None,
        base_url: str = "http://127.0.0.1:8000",
        callback_secret: str = "",
        signing_key: bytes = b"",
        media_token_ttl_secs: int = 300,
        sample_rate: int = 16000,
    ) -> None:
        self.client = client
        self.store: CallStore = store if store is not None else InMemoryCallStore()
        self.active = active if active is not None else ActiveCalls()
        self.base_url = base_url.rstrip("/")
        self.sample_rate = sample_rate
        self._callback_secret = callback_secret
        self._signing_key = signing_key
        self._token_ttl = media_token_ttl_secs
        self._last_error: str | None = None
        self._last_error_at: datetime | None = None
        self._last_request_failed = False

    @classmethod
    def from_settings(
        cls, settings: Settings, spec: PipelineSpec, active: ActiveCalls, signing_key: bytes
    ) -> CallControl:
        """Call control as the settings ask for it; raises CallControlSettingsError listing every
        missing or bad setting when a connection string is set but the rest is not."""
        common: dict[str, Any] = {
            "active": active,
            "base_url": settings.base_url,
            "signing_key": signing_key,
            "media_token_ttl_secs": settings.media_token_ttl_secs,
            "sample_rate": call_rate(spec.audio.in_rate),
        }
        if settings.acs_connection_string is None:
            return cls(**common)
        problems = []
        if settings.api_key is None or not settings.api_key.get_secret_value():
            problems.append("VOICEBOT_API_KEY: not set (the call-control API needs it)")
        if settings.callback_secret is None or not settings.callback_secret.get_secret_value():
            problems.append("VOICEBOT_CALLBACK_SECRET: not set (ACS webhooks need it)")
        if settings.acs_endpoint and not settings.acs_endpoint.startswith(("http://", "https://")):
            problems.append(
                f"VOICEBOT_ACS_ENDPOINT: {settings.acs_endpoint!r} is not an http(s) URL"
            )
        endpoint = access_key = ""
        try:
            endpoint, access_key = parse_connection_string(
                settings.acs_connection_string.get_secret_value()
            )
        except ValueError as exc:
            problems.append(f"VOICEBOT_ACS_CONNECTION_STRING: {exc}")
        if problems:
            raise CallControlSettingsError(
                "call control is not usable:\n  " + "\n  ".join(problems)
            )
        client = CallAutomation(settings.acs_endpoint or endpoint, access_key)
        if not settings.public_url:
            logger.warning(
                f"VOICEBOT_PUBLIC_URL is not set: ACS is told to call back {settings.base_url}, "
                "which it can reach only if that address is public"
            )
        secret = settings.callback_secret.get_secret_value() if settings.callback_secret else ""
        return cls(client, callback_secret=secret, **common)

    @property
    def configured(self) -> bool:
        return self.client is not None

    @property
    def callback_url(self) -> str:
        """Where ACS posts a call's callbacks; carries the callback secret."""
        query = urlencode({"secret": self._callback_secret})
        return f"{self.base_url}/api/v1/calls/callbacks?{query}"

    def status(self) -> dict[str, Any]:
        """For ``/health/ready``: configured or not, the ACS host, and the last failed request
        (``status`` is ``error`` while the most recent request to ACS failed)."""
        if self.client is None:
            return {"status": "not_configured"}
        return {
            "status": "error" if self._last_request_failed else "ok",
            "endpoint": self.client.host,
            "last_error": self._last_error,
            "last_error_at": self._last_error_at.isoformat() if self._last_error_at else None,
        }

    async def answer(self, incoming: IncomingCall) -> CallRecord:
        """Answer an incoming call, streaming its media to our media endpoint."""
        client = self._client()
        stream_id = uuid.uuid4().hex
        caller, callee = incoming.from_.party, incoming.to.party
        logger.info(
            f"incoming call {mask_party(caller)} → {mask_party(callee)} "
            f"(correlation {incoming.correlation_id or '-'}): answering"
        )
        connection = await self._request(
            client.answer(incoming.incoming_call_context, self.callback_url, self._media(stream_id))
        )

        def answered(record: CallRecord | None) -> CallRecord:
            base = record or CallRecord.new(connection.call_id, CallState.ANSWERING)
            return base.changed(
                direction=CallDirection.INBOUND,
                caller=caller,
                callee=callee,
                correlation_id=connection.correlation_id or incoming.correlation_id or None,
                server_call_id=connection.server_call_id or incoming.server_call_id or None,
                stream_id=stream_id,
            )

        record = await self._update(connection.call_id, answered)
        logger.info(f"call {record.call_id} answered ({record.state.value})")
        return record

    async def place_call(self, to: str, caller_id: str | None = None) -> CallRecord:
        """Call ``to`` (E.164) from ``caller_id`` (E.164, one of the resource's numbers)."""
        client = self._client()
        stream_id = uuid.uuid4().hex
        logger.info(f"placing a call to {mask_party(to)}")
        connection = await self._request(
            client.create(to, self.callback_url, self._media(stream_id), caller_id=caller_id)
        )

        def created(record: CallRecord | None) -> CallRecord:
            base = record or CallRecord.new(connection.call_id, CallState.DIALING)
            return base.changed(
                direction=CallDirection.OUTBOUND,
                caller=caller_id,
                callee=to,
                correlation_id=connection.correlation_id or None,
                server_call_id=connection.server_call_id or None,
                stream_id=stream_id,
            )

        record = await self._update(connection.call_id, created)
        logger.info(f"call {record.call_id} to {mask_party(to)} created ({record.state.value})")
        return record

    async def hang_up(self, call_id: str) -> CallRecord:
        """End a known call for everyone (ACS then posts ``CallDisconnected``)."""
        client = self._client()
        record = await self._known(call_id)
        await self._request(client.hang_up(call_id), call_id=call_id)
        logger.info(f"call {call_id}: hung up")
        return record

    async def transfer(self, call_id: str, to: str) -> CallRecord:
        """Transfer a known call to the phone number ``to`` (E.164), e.g. to a human agent."""
        if not E164.match(to):
            raise ValueError(f"transfer target {mask_party(to)!r} is not an E.164 phone number")
        client = self._client()
        await self._known(call_id)
        await self._request(client.transfer(call_id, to), call_id=call_id)
        logger.info(f"call {call_id}: transferring to {mask_party(to)}")
        return await self._update(
            call_id, lambda r: r.changed(state=CallState.TRANSFERRING) if r else None
        )

    async def get(self, call_id: str) -> CallRecord | None:
        return await self.store.get(call_id)

    async def acs_state(self, call_id: str) -> str:
        """ACS's own ``callConnectionState`` of a known call, asked now."""
        client = self._client()
        await self._known(call_id)
        return (await self._request(client.get(call_id), call_id=call_id)).state

    async def list(self) -> list[CallRecord]:
        return await self.store.list()

    async def handle_callback(self, event: CallEvent) -> CallRecord | None:
        """Update the call's record from one ACS callback; on ``CallDisconnected`` also cancel
        the call's pipeline if this process runs it."""
        if event.type not in HANDLED_EVENTS:
            logger.debug(f"call {event.call_connection_id}: ignoring callback {event.type}")
            return None
        record = await self._update(event.call_connection_id, lambda r: apply_event(r, event))
        result = event.result
        detail = f" ({result.code}/{result.sub_code}: {result.message})" if result else ""
        logger.info(f"call {record.call_id}: {event.type} → {record.state.value}{detail}")
        if event.type == "CallDisconnected":
            for key in (record.call_id, record.stream_id):
                runner = self.active.get(key) if key else None
                if runner is not None:
                    await runner.hang_up("ACS reported the call disconnected")
                    break
        return record

    async def on_call_finished(self, call_id: str, outcome: CallOutcome) -> None:
        """The media endpoint's pipeline for ``call_id`` (the ACS call id, or the stream id the
        media URL was signed for) has ended with ``outcome``. If the bot ended it, hang up through
        ACS so the caller is not left in a silent call. Never raises."""
        record = await self._find(call_id)
        if record is None:
            logger.debug(f"call {call_id} finished ({outcome.value}) but is not known here")
            return
        record = await self._update(
            record.call_id, lambda r: r.changed(outcome=r.outcome or outcome.value) if r else None
        )
        if outcome not in BOT_ENDED or record.state.ended or self.client is None:
            return
        try:
            await self.hang_up(record.call_id)
        except (CallAutomationError, UnknownCallError) as exc:
            logger.warning(f"call {record.call_id}: could not hang up after the bot ended: {exc}")

    async def aclose(self) -> None:
        if self.client is not None:
            await self.client.aclose()

    def _client(self) -> CallAutomation:
        if self.client is None:
            raise RuntimeError("call control is not configured (no ACS connection string)")
        return self.client

    def _media(self, stream_id: str) -> MediaStreamingOptions:
        url = media_url(self.base_url, self._signing_key, stream_id, self._token_ttl)
        return streaming_options(url, self.sample_rate)

    async def _known(self, call_id: str) -> CallRecord:
        record = await self.store.get(call_id)
        if record is None:
            raise UnknownCallError(f"unknown call {call_id!r}")
        return record

    async def _find(self, call_or_stream_id: str) -> CallRecord | None:
        record = await self.store.get(call_or_stream_id)
        if record is not None:
            return record
        return next((r for r in await self.store.list() if r.stream_id == call_or_stream_id), None)

    async def _update(self, call_id: str, change: RecordChange) -> CallRecord:
        record = await self.store.update(call_id, change)
        if record is None:
            raise UnknownCallError(f"unknown call {call_id!r}")
        return record

    async def _request(self, request: Awaitable[_T], *, call_id: str | None = None) -> _T:
        """Await one Call Automation request, keeping its failure for readiness and the call."""
        try:
            result = await request
        except CallAutomationError as exc:
            self._last_error, self._last_error_at = str(exc), datetime.now(UTC)
            self._last_request_failed = True
            message = str(exc)
            logger.warning(f"call {call_id or '-'}: {message}")
            if call_id is not None:
                await self.store.update(call_id, lambda r: r.changed(error=message) if r else None)
            raise
        self._last_request_failed = False
        return result
