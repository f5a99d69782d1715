"""A fake ACS Call Automation REST service on a real local socket, for tests.

The real ``azure-communication-callautomation`` SDK (1.6.0, api-version ``2026-03-12``) talks to it
over plain HTTP exactly as to ACS, so a test exercises the SDK's own request building, HMAC
signing, retries and error mapping. Point the SDK at :attr:`FakeCallAutomation.endpoint` with
:attr:`~FakeCallAutomation.access_key` (``CallAutomationClient(endpoint, AzureKeyCredential(key))``;
not ``from_connection_string``, which always forces ``https://``).

Routes, as the SDK calls them (each with ``?api-version=2026-03-12``), by operation name:

* ``create_call``: ``POST /calling/callConnections`` → 201 ``CallConnectionProperties``
* ``answer_call``: ``POST /calling/callConnections:answer`` → 200 ``CallConnectionProperties``
* ``get_call``: ``GET /calling/callConnections/{id}`` → 200 ``CallConnectionProperties``
* ``terminate_call``: ``POST /calling/callConnections/{id}:terminate`` → 204
  (``hang_up(is_for_everyone=True)``)
* ``hangup_call``: ``DELETE /calling/callConnections/{id}`` → 204
  (``hang_up(is_for_everyone=False)``)
* ``transfer_call``: ``POST /calling/callConnections/{id}:transferToParticipant`` → 202

Errors are ACS's shape, ``{"error": {"code": …, "message": …}}`` (an unknown call: 404, code
``8522``); :meth:`~FakeCallAutomation.fail` and :meth:`~FakeCallAutomation.stall` inject faults.

Every request is checked like ACS checks it: an ``Authorization: HMAC-SHA256 SignedHeaders=
x-ms-date;host;x-ms-content-sha256&Signature=…`` header, the body's SHA-256 in
``x-ms-content-sha256``, and the signature itself (HMAC-SHA256 with the base64-decoded access key
over ``"{METHOD}\\n{path?query}\\n{x-ms-date};{host};{content hash}"``); a request that fails is
answered 401. Every request is recorded (:attr:`~FakeCallAutomation.requests`), with its JSON body.

An incoming call starts with :meth:`~FakeCallAutomation.offer_call`, which returns the Event Grid
body ACS would post (answering needs its ``incomingCallContext``). With ``send_callbacks=True`` the
fake posts the CloudEvents ACS would to the call's ``callbackUri``: ``CallConnected`` and
``MediaStreamingStarted`` after an answer or create, ``CallDisconnected`` after a hang-up,
``CallTransferAccepted`` and ``CallDisconnected`` after a transfer. :meth:`send_event` posts any.

Example::

    async with FakeCallAutomation(send_callbacks=True) as acs:
        client = CallAutomationClient(acs.endpoint, AzureKeyCredential(acs.access_key))
        body = acs.offer_call("+15551234567", "+15557654321")   # POST it to your events webhook
        ...
    assert acs.of("answer_call")[0].body["mediaStreamingOptions"]["enableBidirectional"]
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import re
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
from aiohttp import web
from loguru import logger

__all__ = [
    "FakeCall",
    "FakeCallAutomation",
    "RecordedRequest",
    "incoming_call_event",
    "validation_event",
]

EVENT_PREFIX = "Microsoft.Communication."

_ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    ("POST", re.compile(r"^/calling/callConnections$"), "create_call"),
    ("POST", re.compile(r"^/calling/callConnections:answer$"), "answer_call"),
    ("GET", re.compile(r"^/calling/callConnections/(?P<id>[^/:]+)$"), "get_call"),
    ("DELETE", re.compile(r"^/calling/callConnections/(?P<id>[^/:]+)$"), "hangup_call"),
    ("POST", re.compile(r"^/calling/callConnections/(?P<id>[^/:]+):terminate$"), "terminate_call"),
    (
        "POST",
        re.compile(r"^/calling/callConnections/(?P<id>[^/:]+):transferToParticipant$"),
        "transfer_call",
    ),
]
_AUTHORIZATION = re.compile(
    r"^HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256"
    r"&Signature=(?P<sig>[A-Za-z0-9+/=]+)$"
)


@dataclass(frozen=True)
class RecordedRequest:
    """One request the fake received. ``operation`` is the route's name (``unknown`` if none)."""

    operation: str
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    """The parsed JSON body, or None."""
    auth_problem: str | None
    """Why the request's HMAC authentication was refused, or None if it passed."""


@dataclass
class FakeCall:
    """A call connection the fake holds."""

    call_id: str
    callback_uri: str
    direction: str
    source: dict[str, Any] | None
    targets: list[dict[str, Any]]
    media_streaming: dict[str, Any] | None
    server_call_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    correlation_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    state: str = "connecting"
    """``connecting``, ``connected`` or ``disconnected``."""


@dataclass
class _Fault:
    status: int
    code: str
    message: str
    stall_secs: float = 0.0


def _phone(number: str) -> dict[str, Any]:
    return {"kind": "phoneNumber", "rawId": f"4:{number}", "phoneNumber": {"value": number}}


def incoming_call_event(
    caller: str,
    callee: str,
    *,
    incoming_call_context: str | None = None,
    correlation_id: str | None = None,
    server_call_id: str | None = None,
) -> list[dict[str, Any]]:
    """The Event Grid body ACS posts for an incoming call from ``caller`` to ``callee`` (E.164)."""
    return [
        {
            "id": str(uuid.uuid4()),
            "topic": "/subscriptions/0000/resourceGroups/rg/providers/"
            "Microsoft.Communication/communicationServices/fake",
            "subject": f"/caller/4:{caller}/recipient/4:{callee}",
            "data": {
                "to": _phone(callee),
                "from": _phone(caller),
                "serverCallId": server_call_id or uuid.uuid4().hex,
                "callerDisplayName": "",
                "incomingCallContext": incoming_call_context or secrets.token_urlsafe(48),
                "correlationId": correlation_id or str(uuid.uuid4()),
            },
            "eventType": "Microsoft.Communication.IncomingCall",
            "dataVersion": "1.0",
            "metadataVersion": "1",
            "eventTime": _now(),
        }
    ]


def validation_event(code: str) -> list[dict[str, Any]]:
    """The Event Grid body of a subscription validation handshake."""
    return [
        {
            "id": str(uuid.uuid4()),
            "topic": "/subscriptions/0000",
            "subject": "",
            "data": {
                "validationCode": code,
                "validationUrl": f"https://rp.eventgrid.azure.net/validate?code={code}",
            },
            "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
            "eventTime": _now(),
            "metadataVersion": "1",
            "dataVersion": "2",
        }
    ]


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


class FakeCallAutomation:
    """The fake service; an async context manager serving on ``127.0.0.1`` at a free port.

    Parameters:
        access_key: The resource's base64 access key requests must be signed with (random if
            None).
        send_callbacks: Post the callbacks ACS would after each operation (see module doc).
        callback_delay_ms: Wait this long (ms) after an operation before posting its callbacks.
    """

    def __init__(
        self,
        *,
        access_key: str | None = None,
        send_callbacks: bool = False,
        callback_delay_ms: float = 0.0,
    ) -> None:
        self.access_key = access_key or base64.b64encode(secrets.token_bytes(32)).decode()
        self.send_callbacks = send_callbacks
        self.callback_delay_ms = callback_delay_ms
        self.requests: list[RecordedRequest] = []
        self.calls: dict[str, FakeCall] = {}
        self.callbacks_sent: list[tuple[str, dict[str, Any], int]] = []
        """``(url, event, status)`` of every callback posted."""
        self.next_call_id: str | None = None
        """The ``callConnectionId`` the next answered or created call gets (then random again)."""
        self._offers: dict[str, dict[str, Any]] = {}
        self._faults: dict[str, _Fault] = {}
        self._closing = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._port = 0

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:<port>`` (valid inside the ``async with`` block)."""
        return f"http://127.0.0.1:{self._port}"

    @property
    def connection_string(self) -> str:
        """``endpoint=http://…/;accesskey=…``. The SDK's ``from_connection_string`` would turn
        the endpoint into ``https://``; voicebot's own parser keeps the scheme."""
        return f"endpoint={self.endpoint}/;accesskey={self.access_key}"

    def of(self, operation: str) -> list[RecordedRequest]:
        """The recorded requests of one operation (``answer_call``, …), oldest first."""
        return [r for r in self.requests if r.operation == operation]

    def offer_call(self, caller: str, callee: str) -> list[dict[str, Any]]:
        """Ring: the Event Grid ``IncomingCall`` body for a call from ``caller`` to ``callee``;
        answering it (with its ``incomingCallContext``) creates the call connection."""
        event = incoming_call_event(caller, callee)
        self._offers[event[0]["data"]["incomingCallContext"]] = event[0]["data"]
        return event

    def fail(
        self,
        operation: str,
        status: int = 500,
        *,
        code: str = "InternalServerError",
        message: str = "injected failure",
    ) -> None:
        """Answer every later ``operation`` request with ``status`` and an ACS error body."""
        self._faults[operation] = _Fault(status, code, message)

    def stall(self, operation: str, seconds: float = 3600.0) -> None:
        """Hold every later ``operation`` request ``seconds`` before answering it (or until the
        fake closes), as an overloaded or half-dead service would."""
        self._faults[operation] = _Fault(200, "", "", stall_secs=seconds)

    def clear_faults(self) -> None:
        self._faults.clear()

    async def send_event(self, call_id: str, event_type: str, **data: Any) -> int:
        """Post one callback CloudEvent (``CallDisconnected``, …) for a call to its callbackUri,
        as ACS does; returns the HTTP status the receiver answered."""
        call = self.calls[call_id]
        return await self._post(call, self._cloud_event(call, event_type, data))

    async def __aenter__(self) -> FakeCallAutomation:
        app = web.Application(client_max_size=1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=1.0
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._port = int(self._runner.addresses[0][1])
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._closing.set()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=2.0)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    # ---------------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        operation, call_id = "unknown", ""
        for method, pattern, name in _ROUTES:
            match = pattern.match(request.path)
            if match and request.method == method:
                operation, call_id = name, match.groupdict().get("id", "")
                break
        problem = self._auth_problem(request, raw)
        self.requests.append(
            RecordedRequest(
                operation=operation,
                method=request.method,
                path=request.path,
                query=dict(request.query),
                headers=dict(request.headers),
                body=body,
                auth_problem=problem,
            )
        )
        if problem is not None:
            return _error(401, "Unauthorized", problem)
        if "api-version" not in request.query:
            return _error(400, "MissingApiVersion", "api-version query parameter is required")
        if operation == "unknown":
            return _error(404, "NotFound", f"no route {request.method} {request.path}")
        fault = self._faults.get(operation)
        if fault is not None:
            if fault.stall_secs:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), fault.stall_secs)
            else:
                return _error(fault.status, fault.code, fault.message)
        return await getattr(self, f"_{operation}")(body or {}, call_id)

    def _auth_problem(self, request: web.Request, raw: bytes) -> str | None:
        authorization = request.headers.get("Authorization", "")
        match = _AUTHORIZATION.match(authorization)
        if match is None:
            return "no HMAC-SHA256 Authorization header"
        date = request.headers.get("x-ms-date")
        content_hash = request.headers.get("x-ms-content-sha256")
        if not date or not content_hash:
            return "x-ms-date or x-ms-content-sha256 header missing"
        if content_hash != base64.b64encode(hashlib.sha256(raw).digest()).decode():
            return "x-ms-content-sha256 does not match the body"
        signed = f"{request.method}\n{request.raw_path}\n{date};{request.host};{content_hash}"
        key = base64.b64decode(self.access_key)
        expected = base64.b64encode(hmac.new(key, signed.encode(), hashlib.sha256).digest())
        if not hmac.compare_digest(match["sig"].encode(), expected):
            return "HMAC signature does not match"
        return None

    async def _answer_call(self, body: dict[str, Any], _call_id: str) -> web.Response:
        offer = self._offers.pop(str(body.get("incomingCallContext", "")), None)
        if offer is None:
            return _error(400, "8523", "Invalid request: unknown or used incomingCallContext")
        call = FakeCall(
            call_id=self._new_call_id(),
            callback_uri=str(body.get("callbackUri", "")),
            direction="inbound",
            source=offer["from"],
            targets=[offer["to"]],
            media_streaming=body.get("mediaStreamingOptions"),
            server_call_id=offer["serverCallId"],
            correlation_id=offer["correlationId"],
        )
        return self._connect(call, 200)

    async def _create_call(self, body: dict[str, Any], _call_id: str) -> web.Response:
        targets = body.get("targets") or []
        if not targets or not body.get("callbackUri"):
            return _error(400, "BadRequest", "targets and callbackUri are required")
        call = FakeCall(
            call_id=self._new_call_id(),
            callback_uri=str(body["callbackUri"]),
            direction="outbound",
            source=body.get("sourceCallerIdNumber"),
            targets=list(targets),
            media_streaming=body.get("mediaStreamingOptions"),
        )
        return self._connect(call, 201)

    async def _get_call(self, _body: dict[str, Any], call_id: str) -> web.Response:
        call = self.calls.get(call_id)
        if call is None:
            return _error(404, "8522", "Call not found.")
        return web.json_response(self._properties(call), status=200)

    async def _hangup_call(self, _body: dict[str, Any], call_id: str) -> web.Response:
        return self._disconnect(call_id)

    async def _terminate_call(self, _body: dict[str, Any], call_id: str) -> web.Response:
        return self._disconnect(call_id)

    async def _transfer_call(self, body: dict[str, Any], call_id: str) -> web.Response:
        call = self.calls.get(call_id)
        if call is None or call.state == "disconnected":
            return _error(404, "8522", "Call not found.")
        if not body.get("targetParticipant"):
            return _error(400, "BadRequest", "targetParticipant is required")
        context = body.get("operationContext")
        if self.send_callbacks:
            call.state = "disconnected"
            self._later(call, ["CallTransferAccepted", "CallDisconnected"], context)
        return web.json_response({"operationContext": context}, status=202)

    def _new_call_id(self) -> str:
        call_id, self.next_call_id = self.next_call_id or str(uuid.uuid4()), None
        return call_id

    def _connect(self, call: FakeCall, status: int) -> web.Response:
        self.calls[call.call_id] = call
        answer = self._properties(call)
        call.state = "connected"
        if self.send_callbacks:
            events = ["CallConnected"]
            if call.media_streaming and call.media_streaming.get("startMediaStreaming"):
                events.append("MediaStreamingStarted")
            self._later(call, events, None)
        return web.json_response(answer, status=status)

    def _disconnect(self, call_id: str) -> web.Response:
        call = self.calls.get(call_id)
        if call is None or call.state == "disconnected":
            return _error(404, "8522", "Call not found.")
        call.state = "disconnected"
        if self.send_callbacks:
            self._later(call, ["CallDisconnected"], None)
        return web.Response(status=204)

    def _properties(self, call: FakeCall) -> dict[str, Any]:
        props: dict[str, Any] = {
            "callConnectionId": call.call_id,
            "serverCallId": call.server_call_id,
            "targets": call.targets,
            "callConnectionState": call.state,
            "callbackUri": call.callback_uri,
            "correlationId": call.correlation_id,
        }
        if call.direction == "outbound" and call.source:
            props["sourceCallerIdNumber"] = call.source
        elif call.source:
            props["source"] = call.source
        if call.media_streaming:
            started = bool(call.media_streaming.get("startMediaStreaming"))
            props["mediaStreamingSubscription"] = {
                "id": str(uuid.uuid5(uuid.NAMESPACE_URL, call.call_id)),
                "state": "active" if started and call.state == "connected" else "inactive",
                "subscribedContentTypes": ["audio"],
            }
        return props

    def _cloud_event(
        self, call: FakeCall, event_type: str, data: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "callConnectionId": call.call_id,
            "serverCallId": call.server_call_id,
            "correlationId": call.correlation_id,
            "operationContext": None,
            "resultInformation": {"code": 200, "subCode": 0, "message": f"{event_type}."},
        }
        if event_type.startswith("MediaStreaming"):
            status = event_type[0].lower() + event_type[1:]
            payload["mediaStreamingUpdate"] = {
                "contentType": "Audio",
                "mediaStreamingStatus": status,
                "mediaStreamingStatusDetails": "subscriptionStarted"
                if event_type == "MediaStreamingStarted"
                else "subscriptionStopped",
            }
        payload.update(data or {})
        source = f"calling/callConnections/{call.call_id}"
        return {
            "id": str(uuid.uuid4()),
            "source": source,
            "type": f"{EVENT_PREFIX}{event_type}",
            "data": payload,
            "time": _now(),
            "specversion": "1.0",
            "datacontenttype": "application/json",
            "subject": source,
        }

    def _later(self, call: FakeCall, event_types: list[str], context: str | None) -> None:
        events = [
            self._cloud_event(call, t, {"operationContext": context} if context else None)
            for t in event_types
        ]
        task = asyncio.create_task(
            self._post_all(call, events), name=f"acs-callbacks-{call.call_id}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _post_all(self, call: FakeCall, events: list[dict[str, Any]]) -> None:
        # After the operation's own response, as ACS does.
        await asyncio.sleep(self.callback_delay_ms / 1000)
        for event in events:
            await self._post(call, event)

    async def _post(self, call: FakeCall, event: dict[str, Any]) -> int:
        if self._session is None:
            raise RuntimeError("FakeCallAutomation is not running (use `async with`)")
        try:
            async with self._session.post(call.callback_uri, json=[event]) as response:
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            logger.warning(f"fake ACS: callback to {call.callback_uri.split('?')[0]} failed: {exc}")
            status = 0
        self.callbacks_sent.append((call.callback_uri, event, status))
        return status


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)
