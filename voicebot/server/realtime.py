"""``WS /api/v1/realtime/dashboard`` (live call events), ``WS /api/v1/realtime/conversation``
(a person talks to the bot from a browser), and the two pages that use them.

**Dashboard.** A client authenticates with ``?token=`` or a first JSON message
``{"type":"subscribe","token":"...","call_id":null}`` within :data:`FIRST_MESSAGE_TIMEOUT_SECS`;
the token is ``VOICEBOT_DASHBOARD_TOKEN`` or one signed by this deployment for the subject
``dashboard`` (:func:`dashboard_token`). Without a valid one the socket is closed with 1008 and
the reason. The subscription is one call (``call_id``, in the query or the message) or every
call (no ``call_id``); ``{"type":"subscribe","call_id":...}`` later changes it. The server
answers ``{"type":"hello",...}``, then ``{"type":"snapshot","calls":[...]}`` (active calls with
their recent events), then each live event as its own JSON message (see
:mod:`voicebot.events.model`). Who is connected, to what, since when and on which worker is in
``GET /api/v1/health/ready`` (:class:`DashboardClients`).

**Conversation.** The page sends ``{"type":"start","sample_rate":16000}`` (or 24000) first; the
server answers ``{"type":"session","session_id":...,"sample_rate":...,"resumed":false}``, then
PCM16 mono binary frames flow both ways (see :mod:`voicebot.transports.browser`) along with the
call's live events as JSON (``transcript``, ``handoff``, ``turn_latency``, ``error``,
``call_ended``) and ``{"type":"interrupt"}`` on barge-in. The call runs the server's pipeline
through the same :class:`~voicebot.runner.CallRunner` as a phone call. The session id is the
call id: a page that lost its socket reconnects with ``?session_id=<id>`` (to any worker sharing
the session store) and the conversation resumes where it was (``"resumed": true``), without a
new greeting. Connections from another site (an ``Origin`` whose host is not this server's) are
refused with 1008; a draining worker refuses with 1013.

**Pages.** ``GET /dashboard`` and ``GET /conversation``: static HTML and JavaScript from
``voicebot/server/static`` (no build step, nothing from a CDN).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

from fastapi import APIRouter, HTTPException, WebSocket
from fastapi.responses import FileResponse
from loguru import logger
from pipecat.transports.websocket.fastapi import FastAPIWebsocketTransport
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette.websockets import WebSocketDisconnect, WebSocketState

from voicebot.acs.tokens import sign, verify
from voicebot.events import CallEvents, EventBus, Subscription, event_bus_for, event_json
from voicebot.events.model import worker_name
from voicebot.processors.transcript import TranscriptRecorder
from voicebot.runner import CallOutcome, CallRunner
from voicebot.server.app import AppState, state_of
from voicebot.server.media import (
    POLICY_VIOLATION,
    TRY_AGAIN_LATER,
    call_transport,
    transcripts,
)
from voicebot.server.sessions import start_call_session
from voicebot.sessions.keys import check_call_id
from voicebot.sessions.model import CallDirection
from voicebot.telemetry import telemetry_for
from voicebot.transports.browser import BROWSER_SAMPLE_RATES, BrowserAudioSerializer

router = APIRouter(tags=["realtime"])
pages = APIRouter(tags=["pages"])

STATIC_DIR = Path(__file__).parent / "static"
"""The pages' files."""

#: Seconds a client has for its first message (dashboard without a query token; conversation).
FIRST_MESSAGE_TIMEOUT_SECS = 5.0
#: Subject of signed dashboard tokens.
DASHBOARD_SUBJECT = "dashboard"
#: Key of the process's :class:`DashboardClients` in its shared resources.
DASHBOARD_CLIENTS_RESOURCE = "dashboard_clients"
NORMAL_CLOSURE = 1000


class DashboardSettings(BaseSettings):
    """``VOICEBOT_DASHBOARD_TOKEN``: a fixed token dashboard clients may use (unset: only
    tokens signed by the deployment, see :func:`dashboard_token`)."""

    model_config = SettingsConfigDict(env_prefix="VOICEBOT_DASHBOARD_", extra="ignore")

    token: SecretStr | None = Field(default=None, min_length=16)


def dashboard_token(key: bytes, ttl_secs: int = 3600) -> str:
    """A dashboard token signed with the deployment's key (``Settings.media_signing_key()``)."""
    return sign(key, DASHBOARD_SUBJECT, ttl_secs)


def dashboard_token_problem(state: AppState, token: str | None) -> str | None:
    """None if ``token`` opens the dashboard, else why not (the close reason)."""
    fixed = DashboardSettings().token
    if token and fixed is not None and hmac.compare_digest(token, fixed.get_secret_value()):
        return None
    problem = verify(state.signing_key, DASHBOARD_SUBJECT, token)
    return problem.value if problem is not None else None


@dataclass
class DashboardClient:
    """One connected dashboard: ``subscription`` is a call id or ``*`` (every call)."""

    client_id: str
    subscription: str
    since: float
    """``time.time()`` when it connected."""
    worker: str
    peer: str


class DashboardClients:
    """The dashboard clients connected to this worker (one instance per process)."""

    def __init__(self) -> None:
        self._clients: dict[str, DashboardClient] = {}

    def add(self, client: DashboardClient) -> None:
        self._clients[client.client_id] = client

    def remove(self, client_id: str) -> None:
        self._clients.pop(client_id, None)

    def __len__(self) -> int:
        return len(self._clients)

    def status(self) -> dict[str, Any]:
        """For readiness: this worker and who is connected to it."""
        return {
            "status": "ok",
            "worker": worker_name(),
            "connected": len(self._clients),
            "clients": [asdict(c) for c in self._clients.values()],
        }


def dashboard_clients(state: AppState) -> DashboardClients:
    return state.resources.get(DASHBOARD_CLIENTS_RESOURCE, DashboardClients)


# --- the dashboard --------------------------------------------------------------------------------


@router.websocket("/realtime/dashboard")
async def dashboard(websocket: WebSocket) -> None:
    """Stream live call events to one authenticated dashboard client."""
    state = state_of(websocket)
    await websocket.accept()
    token = websocket.query_params.get("token")
    call_id = websocket.query_params.get("call_id") or None
    if not token:
        try:
            first = await asyncio.wait_for(websocket.receive_text(), FIRST_MESSAGE_TIMEOUT_SECS)
            message = json.loads(first)
            token = str(message.get("token") or "")
            call_id = message.get("call_id") or call_id
        except (TimeoutError, ValueError, AttributeError, KeyError):
            token = ""
        except WebSocketDisconnect:
            return
    problem = dashboard_token_problem(state, token)
    if problem is not None:
        logger.warning(f"dashboard client refused: {problem}")
        await websocket.close(POLICY_VIOLATION, problem)
        return

    bus = event_bus_for(state.resources)
    clients = dashboard_clients(state)
    peer = f"{websocket.client.host}:{websocket.client.port}" if websocket.client else ""
    client = DashboardClient(uuid.uuid4().hex[:12], call_id or "*", time.time(), bus.worker, peer)
    clients.add(client)
    logger.info(
        f"dashboard client {client.client_id} connected ({peer}), watching {client.subscription}"
    )
    subscription = _subscribe(bus, call_id)
    try:
        await websocket.send_text(
            json.dumps(
                {
                    "type": "hello",
                    "client_id": client.client_id,
                    "worker": bus.worker,
                    "subscription": call_id,
                }
            )
        )
        await _send_snapshot(websocket, bus, call_id)
        sender = asyncio.create_task(_forward(websocket, subscription), name="dashboard-send")
        try:
            while True:
                message = json.loads(await websocket.receive_text())
                if isinstance(message, dict) and message.get("type") == "subscribe":
                    call_id = message.get("call_id") or None
                    client.subscription = call_id or "*"
                    subscription.close()
                    subscription = _subscribe(bus, call_id)
                    sender.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await sender
                    await _send_snapshot(websocket, bus, call_id)
                    sender = asyncio.create_task(
                        _forward(websocket, subscription), name="dashboard-send"
                    )
        except (WebSocketDisconnect, ValueError, KeyError):  # KeyError: a binary message
            pass
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender
    except WebSocketDisconnect:
        pass
    finally:
        subscription.close()
        clients.remove(client.client_id)
        logger.info(f"dashboard client {client.client_id} disconnected")
    if websocket.application_state == WebSocketState.CONNECTED:
        with contextlib.suppress(Exception):
            await websocket.close(NORMAL_CLOSURE)


def _subscribe(bus: EventBus, call_id: str | None) -> Subscription:
    return bus.subscribe(call_id)


async def _send_snapshot(websocket: WebSocket, bus: EventBus, call_id: str | None) -> None:
    calls = bus.snapshot(call_id)
    await websocket.send_text(json.dumps({"type": "snapshot", "calls": calls}))


async def _forward(websocket: WebSocket, subscription: Subscription) -> None:
    """Send each event of ``subscription`` as a JSON text message until the socket goes."""
    async for event in subscription:
        await websocket.send_text(event_json(event))


# --- the conversation -----------------------------------------------------------------------------


@router.websocket("/realtime/conversation")
async def conversation(websocket: WebSocket) -> None:
    """Run one browser conversation over this socket until either side ends it."""
    state = state_of(websocket)
    settings = state.settings
    await websocket.accept()
    session_id = websocket.query_params.get("session_id") or ""
    refusal = _conversation_refusal(websocket, state, session_id)
    if refusal is not None:
        code, reason = refusal
        logger.warning(f"browser conversation refused: {reason}")
        await websocket.close(code, reason)
        return
    call_id = session_id or f"web-{uuid.uuid4().hex}"

    try:
        first = await asyncio.wait_for(websocket.receive_text(), FIRST_MESSAGE_TIMEOUT_SECS)
        rate = _start_rate(first)
    except TimeoutError:
        rate = None
    except WebSocketDisconnect:
        return
    except KeyError:  # a binary first message
        rate = None
    if rate is None:
        reason = f'first message must be {{"type":"start","sample_rate":{BROWSER_SAMPLE_RATES}}}'
        logger.warning(f"browser conversation {call_id} refused: {reason}")
        await websocket.close(POLICY_VIOLATION, reason[:120])
        return

    record = transcripts(state).start(call_id)
    telemetry = telemetry_for(state.resources)
    observed = telemetry.call(call_id, pipeline=state.spec.name)
    bus = event_bus_for(state.resources)
    events = CallEvents(bus, call_id, source="browser", pipeline=state.spec.name)
    events.attach(record, observed)
    subscription = bus.subscribe(call_id)

    async def control(kind: str, _message: dict[str, Any]) -> None:
        if kind == "stop":
            await call.hang_up("the browser ended the conversation")

    serializer = BrowserAudioSerializer(
        call_id,
        BrowserAudioSerializer.InputParams(
            sample_rate=rate, max_message_bytes=settings.max_message_bytes
        ),
        on_control=control,
    )
    # The Origin was checked above (same host only).
    transport = call_transport(cast(WebSocket, _CloseDeferred(websocket)), serializer, rate)
    call = CallRunner(
        state.spec,
        call_id=call_id,
        resources=state.resources,
        input=transport.input(),
        output=transport.output(),
        active=state.active,
        observers=[TranscriptRecorder(record), observed],
    )

    @transport.event_handler("on_client_disconnected")
    async def _gone(_transport: FastAPIWebsocketTransport, _ws: WebSocket) -> None:
        await call.hang_up("the browser closed the conversation")

    # The conversation's stored state if this session was here before (a reconnection, on
    # this worker or another): the agents carry on from it without greeting again.
    live = await start_call_session(state, call_id, direction=CallDirection.BROWSER)
    forwarder: asyncio.Task[None] | None = None
    try:  # from here on, whatever happens (the page may leave at once), all of it is closed
        await websocket.send_text(
            json.dumps(
                {
                    "type": "session",
                    "session_id": call_id,
                    "sample_rate": rate,
                    "resumed": live.resumed,
                }
            )
        )
        forwarder = asyncio.create_task(
            _forward_conversation(websocket, subscription), name=f"conversation-events-{call_id}"
        )
        events.started()
        logger.info(f"browser conversation {call_id} connected at {rate} Hz")
        outcome = await call.run()
    finally:
        result = call.outcome or CallOutcome.COMPLETED
        record.finish(result.value)
        observed.finish(call.outcome, call.error)
        events.ended(result.value, call.error)
        await live.close()  # the last state, bounded; the page may reconnect anywhere
        if forwarder is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(forwarder), 1.0)  # call_ended is sent
            forwarder.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await forwarder
        subscription.close()
    if serializer.bad_input:
        logger.info(f"browser conversation {call_id}: bad input {dict(serializer.bad_input)}")
    logger.info(f"browser conversation {call_id} finished: {outcome.value}")
    if websocket.application_state == WebSocketState.CONNECTED:
        with contextlib.suppress(Exception):
            await websocket.close(NORMAL_CLOSURE, outcome.value)


class _CloseDeferred:
    """The conversation's socket as its transport sees it: closing it is left to the endpoint,
    which first sends the page the call's last events (``call_ended``)."""

    def __init__(self, websocket: WebSocket) -> None:
        self._websocket = websocket

    def __getattr__(self, name: str) -> Any:
        return getattr(self._websocket, name)

    async def close(self, code: int = NORMAL_CLOSURE, reason: str | None = None) -> None:
        """Nothing now: the endpoint closes the socket once the call's events are sent."""


def _conversation_refusal(
    websocket: WebSocket, state: AppState, session_id: str
) -> tuple[int, str] | None:
    """``(close code, reason)`` if this conversation may not start, else None."""
    origin = websocket.headers.get("origin")
    if origin and urlsplit(origin).netloc != websocket.headers.get("host", ""):
        return POLICY_VIOLATION, "origin not allowed"
    if session_id:
        try:
            check_call_id(session_id)
        except ValueError as exc:
            return POLICY_VIOLATION, str(exc)[:120]
        if session_id in state.active:
            return POLICY_VIOLATION, "session already connected"
    if state.draining:
        return TRY_AGAIN_LATER, "worker draining"
    if len(state.active) >= state.settings.max_calls:
        return TRY_AGAIN_LATER, "worker at call limit"
    return None


def _start_rate(first: str) -> int | None:
    """The announced rate if ``first`` is a valid start message, else None."""
    try:
        message = json.loads(first)
        if message.get("type") != "start":
            return None
        rate = message.get("sample_rate")
    except (ValueError, AttributeError, RecursionError):
        return None
    return rate if type(rate) is int and rate in BROWSER_SAMPLE_RATES else None


async def _forward_conversation(websocket: WebSocket, subscription: Subscription) -> None:
    """Send the conversation's events to the page until ``call_ended`` has gone."""
    async for event in subscription:
        if event.type == "call_started":
            continue
        if websocket.application_state != WebSocketState.CONNECTED:
            return
        with contextlib.suppress(Exception):
            await websocket.send_text(event_json(event))
        if event.type == "call_ended":
            return


# --- pages ----------------------------------------------------------------------------------------

_PAGES = {"dashboard": "dashboard.html", "conversation": "conversation.html"}


@pages.get("/dashboard", include_in_schema=False)
async def dashboard_page() -> FileResponse:
    """The live dashboard (opens ``/api/v1/realtime/dashboard`` with the page URL's token)."""
    return FileResponse(STATIC_DIR / _PAGES["dashboard"], media_type="text/html")


@pages.get("/conversation", include_in_schema=False)
async def conversation_page() -> FileResponse:
    """Talk to the bot from the browser's microphone."""
    return FileResponse(STATIC_DIR / _PAGES["conversation"], media_type="text/html")


@pages.get("/static/{name}", include_in_schema=False)
async def static_file(name: str) -> FileResponse:
    """A script of the pages (only files directly in the static folder)."""
    path = STATIC_DIR / name
    if "/" in name or name.startswith(".") or not path.is_file():
        raise HTTPException(status_code=404, detail=f"no static file {name!r}")
    media_type = "text/javascript" if name.endswith(".js") else None
    return FileResponse(path, media_type=media_type)
