"""``WS /api/v1/media/stream``: one ACS call per connection, run through the configured pipeline.

ACS connects as the client, to the URL given when the call was answered or created. That URL
carries a signed token for the call id (see :mod:`voicebot.acs.tokens`); a connection without a
valid one is closed with 1008 and the reason. Over the worker's call limit it is closed with 1013.
"""

from __future__ import annotations

import asyncio
import json

from fastapi import APIRouter, WebSocket
from loguru import logger
from pipecat.transports.websocket.fastapi import FastAPIWebsocketParams, FastAPIWebsocketTransport

from voicebot.acs.tokens import verify
from voicebot.runner import CallRunner
from voicebot.server.app import state_of
from voicebot.transports.acs import ACS_SAMPLE_RATES, ACSMediaSerializer

router = APIRouter(tags=["media"])

#: WebSocket close codes (RFC 6455 / IANA registry).
POLICY_VIOLATION = 1008
TRY_AGAIN_LATER = 1013
#: How long ACS has to send its first message (AudioMetadata) after connecting, in seconds.
FIRST_MESSAGE_TIMEOUT_SECS = 5.0


@router.websocket("/media/stream")
async def media_stream(websocket: WebSocket) -> None:
    """Run one call over this socket until either side ends it."""
    state = state_of(websocket)
    settings = state.settings
    call_id = websocket.headers.get("x-ms-call-connection-id") or websocket.query_params.get(
        "call_id", ""
    )
    correlation_id = websocket.headers.get("x-ms-call-correlation-id", "")
    await websocket.accept()

    if not call_id:
        logger.warning("media stream refused: no call id (header or call_id query parameter)")
        await websocket.close(POLICY_VIOLATION, "missing call id")
        return
    problem = verify(state.signing_key, call_id, websocket.query_params.get("token"))
    if problem is not None:
        logger.warning(f"media stream for call {call_id} refused: {problem.value}")
        await websocket.close(POLICY_VIOLATION, problem.value)
        return
    if len(state.active) >= settings.max_calls:
        logger.warning(
            f"media stream for call {call_id} refused: worker at its limit of "
            f"{settings.max_calls} calls"
        )
        await websocket.close(TRY_AGAIN_LATER, "worker at call limit")
        return

    call_rate = await _call_rate(websocket, call_id)
    serializer = ACSMediaSerializer(
        call_id,
        ACSMediaSerializer.InputParams(
            sample_rate=call_rate, max_message_bytes=settings.max_message_bytes
        ),
    )
    transport = FastAPIWebsocketTransport(
        websocket,
        FastAPIWebsocketParams(
            serializer=serializer,
            audio_in_enabled=True,
            audio_out_enabled=True,
            add_wav_header=False,
            # The output resamples once to the call's rate and cuts 20 ms frames, as ACS
            # expects; no trailing silence burst when the call ends.
            audio_out_sample_rate=call_rate,
            audio_out_10ms_chunks=2,
            audio_out_end_silence_secs=0,
            allowed_origins=[],
        ),
    )
    call = CallRunner(
        state.spec,
        call_id=call_id,
        resources=state.resources,
        input=transport.input(),
        output=transport.output(),
        active=state.active,
    )

    @transport.event_handler("on_client_disconnected")
    async def _gone(_transport: FastAPIWebsocketTransport, _ws: WebSocket) -> None:
        await call.hang_up("media stream closed by ACS")

    logger.info(f"call {call_id} connected (correlation {correlation_id or '-'})")
    outcome = await call.run()
    if serializer.bad_input:
        logger.info(f"call {call_id}: bad input {dict(serializer.bad_input)}")
    logger.info(f"call {call_id} finished: {outcome.value}")


async def _call_rate(websocket: WebSocket, call_id: str) -> int | None:
    """The call's rate from ACS's first message, ``AudioMetadata`` (None if it is not that).

    Knowing it before the pipeline starts lets the output resample once, straight to the call
    rate. Anything else first is left to the serializer, which counts it as bad input.
    """
    try:
        first = await asyncio.wait_for(websocket.receive_text(), FIRST_MESSAGE_TIMEOUT_SECS)
        rate = json.loads(first)["audioMetadata"]["sampleRate"]
    except (TimeoutError, ValueError, KeyError, TypeError):
        logger.warning(f"call {call_id}: first message is not AudioMetadata")
        return None
    return rate if rate in ACS_SAMPLE_RATES else None
