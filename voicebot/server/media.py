"""``WS /api/v1/media/stream``: one ACS call per connection, run through the configured pipeline.

ACS connects as the client, to the URL given when the call was answered or created. That URL
carries a signed token for the call id (see :mod:`voicebot.acs.tokens`); a connection without a
valid one is closed with 1008 and the reason, as is a second connection for a call already
connected. Over the worker's call limit it is closed with 1013.

Bad input is survived: every message the serializer rejects (invalid JSON, unknown ``kind``,
invalid base64, odd-length PCM, oversize, binary frames, audio before ``AudioMetadata``, an
unsupported rate, ...) is dropped, logged once per kind and counted per call by a
:class:`BadInputGuard`. A flood is not: more than :data:`FLOOD_LIMIT` rejected messages within
any :data:`FLOOD_WINDOW_SECS` closes that call's socket, and only that call's, with a code for
what the flood mostly was (see :data:`BAD_INPUT_CLOSE_CODES`): 1009 oversize messages, 1007
undecodable data, 1008 protocol violations. ACS sends 50 messages a second, so the rule lets
through a bad message now and then and closes a stream that is at least half garbage within a
second — including a call whose ``AudioMetadata`` names a rate ACS does not stream, since all
its audio then counts as audio before metadata.

Each call's :class:`~voicebot.processors.transcript.CallTranscript` (what was said, handoffs,
bad input counts, outcome) is kept in the process's
:class:`~voicebot.processors.transcript.TranscriptStore`, a shared resource.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable

from fastapi import APIRouter, WebSocket
from loguru import logger
from pipecat.serializers.base_serializer import FrameSerializer
from pipecat.transports.websocket.fastapi import FastAPIWebsocketParams, FastAPIWebsocketTransport
from starlette.websockets import WebSocketDisconnect, WebSocketState

from voicebot.acs.tokens import verify
from voicebot.acs.transfer import TransferObserver
from voicebot.events import CallEvents, event_bus_for
from voicebot.processors.transcript import (
    TRANSCRIPTS_RESOURCE,
    TranscriptRecorder,
    TranscriptStore,
)
from voicebot.runner import CallOutcome, CallRunner
from voicebot.server.app import AppState, state_of
from voicebot.server.sessions import start_call_session
from voicebot.sessions.keys import check_call_id
from voicebot.telemetry import telemetry_for
from voicebot.transports.acs import ACS_SAMPLE_RATES, ACSMediaSerializer
from voicebot.transports.websocket import CallWebsocketTransport

router = APIRouter(tags=["media"])

#: WebSocket close codes (RFC 6455 / IANA registry).
INVALID_DATA = 1007
POLICY_VIOLATION = 1008
MESSAGE_TOO_BIG = 1009
TRY_AGAIN_LATER = 1013
#: How long ACS has to send its first message (AudioMetadata) after connecting, in seconds.
FIRST_MESSAGE_TIMEOUT_SECS = 5.0

#: A call is closed when more than FLOOD_LIMIT of its messages are rejected within any
#: FLOOD_WINDOW_SECS seconds (a sliding window).
FLOOD_LIMIT = 25
FLOOD_WINDOW_SECS = 1.0

#: The close code for a flood of each kind of bad input (the serializer's kind names):
#: 1009 for messages too big, 1007 for data that cannot be decoded, 1008 for well-formed
#: messages that break the protocol. Kinds not listed count as protocol violations.
BAD_INPUT_CLOSE_CODES: dict[str, int] = {
    "oversize": MESSAGE_TOO_BIG,
    "invalid_json": INVALID_DATA,
    "invalid_base64": INVALID_DATA,
    "odd_length_pcm": INVALID_DATA,
    "binary_frame": POLICY_VIOLATION,
    "unknown_kind": POLICY_VIOLATION,
    "malformed": POLICY_VIOLATION,
    "audio_before_metadata": POLICY_VIOLATION,
    "unsupported_rate": POLICY_VIOLATION,
    "invalid_dtmf": POLICY_VIOLATION,
}

_FLOOD_OF = {
    MESSAGE_TOO_BIG: "oversize messages",
    INVALID_DATA: "undecodable messages",
    POLICY_VIOLATION: "protocol violations",
}


class BadInputGuard:
    """Counts one call's rejected media messages and closes the call when they flood in.

    Awaited by the serializer with each rejected message's kind (``on_bad_input``). Over the
    flood rule (more than ``limit`` within any ``window_secs`` seconds) it awaits
    ``close(code, reason)`` once, with the close code of the kind most of the window's messages
    were (ties go to the latest message's kind); later messages are only counted.

    ``counts`` may be a counter kept elsewhere (the call's record); ``clock`` gives seconds.

    Attributes:
        counts: Rejected messages by kind, for the whole call (for logs and metrics).
        closed_with: ``(code, reason)`` once a flood closed the call, else None.
    """

    def __init__(
        self,
        call_id: str,
        close: Callable[[int, str], Awaitable[None]],
        *,
        limit: int = FLOOD_LIMIT,
        window_secs: float = FLOOD_WINDOW_SECS,
        counts: Counter[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.call_id = call_id
        self.counts: Counter[str] = counts if counts is not None else Counter()
        self.closed_with: tuple[int, str] | None = None
        self._close = close
        self._limit = limit
        self._window = window_secs
        self._clock = clock
        self._recent: deque[tuple[float, int]] = deque()  # (monotonic time, close code)

    async def __call__(self, kind: str) -> None:
        self.counts[kind] += 1
        if self.closed_with is not None:
            return
        now = self._clock()
        code = BAD_INPUT_CLOSE_CODES.get(kind, POLICY_VIOLATION)
        self._recent.append((now, code))
        while now - self._recent[0][0] > self._window:
            self._recent.popleft()
        if len(self._recent) <= self._limit:
            return
        by_code = Counter(c for _, c in self._recent)
        top = max(by_code, key=lambda c: (by_code[c], c == code))
        reason = f"flood of {_FLOOD_OF[top]}: {len(self._recent)} bad in {self._window:g} s"
        self.closed_with = (top, reason)
        self._recent.clear()
        logger.warning(f"call {self.call_id}: closing the media stream ({top}): {reason}")
        await self._close(top, reason)

    def summary(self) -> str:
        """``invalid_json=3, oversize=1`` (most frequent first), or ``none``."""
        return ", ".join(f"{k}={n}" for k, n in self.counts.most_common()) or "none"


def transcripts(state: AppState) -> TranscriptStore:
    """The process's record of its calls (created on first use, kept in its shared resources)."""
    return state.resources.get(TRANSCRIPTS_RESOURCE, TranscriptStore)


@router.websocket("/media/stream")
async def media_stream(websocket: WebSocket) -> None:
    """Run one call over this socket until either side ends it."""
    state = state_of(websocket)
    settings = state.settings
    # The URL was signed before ACS assigned the call connection id (answer/create), so the token
    # covers the stream id in the URL's call_id; the call is known by ACS's id when it sends one.
    stream_id = websocket.query_params.get("call_id", "")
    call_id = websocket.headers.get("x-ms-call-connection-id") or stream_id
    correlation_id = websocket.headers.get("x-ms-call-correlation-id", "")
    await websocket.accept()

    if not call_id:
        logger.warning("media stream refused: no call id (header or call_id query parameter)")
        await websocket.close(POLICY_VIOLATION, "missing call id")
        return
    try:
        check_call_id(call_id)
    except ValueError as exc:
        logger.warning(f"media stream refused: {exc}")
        await websocket.close(POLICY_VIOLATION, "invalid call id")
        return
    problem = verify(state.signing_key, stream_id, websocket.query_params.get("token"))
    if problem is not None:
        logger.warning(f"media stream for call {call_id} refused: {problem.value}")
        await websocket.close(POLICY_VIOLATION, problem.value)
        return
    if call_id in state.active:
        logger.warning(f"media stream for call {call_id} refused: the call is already connected")
        await websocket.close(POLICY_VIOLATION, "call already connected")
        return
    if state.draining:
        logger.warning(f"media stream for call {call_id} refused: worker draining")
        await websocket.close(TRY_AGAIN_LATER, "worker draining")
        return
    if len(state.active) >= settings.max_calls:
        logger.warning(
            f"media stream for call {call_id} refused: worker at its limit of "
            f"{settings.max_calls} calls"
        )
        await websocket.close(TRY_AGAIN_LATER, "worker at call limit")
        return

    try:
        first = await asyncio.wait_for(_receive_data(websocket), FIRST_MESSAGE_TIMEOUT_SECS)
    except TimeoutError:
        logger.warning(f"call {call_id}: no message within {FIRST_MESSAGE_TIMEOUT_SECS:g} s")
        first = None
    except WebSocketDisconnect:
        logger.info(f"call {call_id}: media stream closed before its first message")
        return
    call_rate = _metadata_rate(first) if first is not None else None
    record = transcripts(state).start(call_id)
    telemetry = telemetry_for(state.resources)

    async def count_bad_input(kind: str) -> None:
        telemetry.record_bad_input(kind)
        await guard(kind)

    async def close_flooded(code: int, reason: str) -> None:
        if websocket.application_state == WebSocketState.CONNECTED:
            await websocket.close(code, reason)
        await call.hang_up(f"media stream closed: {reason}")

    guard = BadInputGuard(call_id, close_flooded, counts=record.bad_input)
    serializer = ACSMediaSerializer(
        call_id,
        ACSMediaSerializer.InputParams(
            sample_rate=call_rate, max_message_bytes=settings.max_message_bytes
        ),
        on_bad_input=count_bad_input,
    )
    if first is not None and call_rate is None:
        # Counted under its kind like any later bad message. Were it valid DTMF, the digit is
        # lost: the pipeline does not run yet.
        await serializer.deserialize(first)
    transport = call_transport(websocket, serializer, call_rate)
    known = await state.calls.get(call_id)
    observed = telemetry.call(
        call_id,
        correlation_id=correlation_id,
        caller=known.caller if known is not None else None,
        pipeline=state.spec.name,
    )
    events = CallEvents(event_bus_for(state.resources), call_id, pipeline=state.spec.name)
    events.attach(record, observed)  # live events from what the record and observer see
    call = CallRunner(
        state.spec,
        call_id=call_id,
        resources=state.resources,
        input=transport.input(),
        output=transport.output(),
        active=state.active,
        observers=[TranscriptRecorder(record), observed, TransferObserver(call_id, state.calls)],
    )

    @transport.event_handler("on_client_disconnected")
    async def _gone(_transport: FastAPIWebsocketTransport, _ws: WebSocket) -> None:
        if guard.closed_with is None:  # else we closed it, and hung up already
            await call.hang_up("media stream closed by ACS")

    # The call's stored state, if it was here before (another socket, maybe another worker):
    # its agents carry on from it without greeting again.
    live = await start_call_session(
        state,
        call_id,
        direction=known.direction.value if known is not None and known.direction else "inbound",
        correlation_id=correlation_id,
        caller=known.caller if known is not None else None,
        callee=known.callee if known is not None else None,
    )
    logger.info(
        f"call {call_id} connected (correlation {correlation_id or '-'})"
        + (f", resuming at turn {live.session.turn_count}" if live.resumed else "")
    )
    events.started()
    try:
        outcome = await call.run()
    finally:
        record.finish((call.outcome or CallOutcome.COMPLETED).value)
        observed.finish(call.outcome, call.error)
        events.ended((call.outcome or CallOutcome.COMPLETED).value, call.error)
        await live.close()  # the last state, bounded; the call may reconnect anywhere
    if guard.counts:
        logger.info(f"call {call_id}: bad input {guard.summary()}")
    logger.info(f"call {call_id} finished: {outcome.value}")
    await state.calls.on_call_finished(call_id, outcome)


def call_transport(
    websocket: WebSocket, serializer: FrameSerializer, rate: int | None
) -> CallWebsocketTransport:
    """The transport of one call on ``websocket``: PCM16 audio both ways through ``serializer``.

    The output resamples once to the call's ``rate`` (None: the pipeline's) and cuts 20 ms
    frames, as ACS (and the browser page) expect; no trailing silence burst when the call ends.
    Origins are checked by the endpoint, not here.
    """
    return CallWebsocketTransport(
        websocket,
        FastAPIWebsocketParams(
            serializer=serializer,
            audio_in_enabled=True,
            audio_out_enabled=True,
            add_wav_header=False,
            audio_out_sample_rate=rate,
            audio_out_10ms_chunks=2,
            audio_out_end_silence_secs=0,
            allowed_origins=[],
        ),
    )


async def _receive_data(websocket: WebSocket) -> str | bytes:
    """The next message's text or bytes; raises ``WebSocketDisconnect`` if the socket closed."""
    message = await websocket.receive()
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000), message.get("reason"))
    data: str | bytes | None = message.get("text")
    return data if data is not None else message.get("bytes") or b""


def _metadata_rate(first: str | bytes) -> int | None:
    """The call's rate if ``first`` is a valid ``AudioMetadata``, else None.

    Knowing it before the pipeline starts lets the output resample once, straight to the call
    rate. Anything else first goes to the serializer, which counts it as bad input.
    """
    try:
        message = json.loads(first)
        if message["kind"] != "AudioMetadata":
            return None
        rate = message["audioMetadata"]["sampleRate"]
    except (ValueError, KeyError, TypeError, RecursionError):
        return None
    return rate if type(rate) is int and rate in ACS_SAMPLE_RATES else None
