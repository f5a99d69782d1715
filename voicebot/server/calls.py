"""``/api/v1/calls``: ACS webhooks (Event Grid, Call Automation callbacks) and the call-control API.

Webhooks (``POST /calls/events``, ``POST /calls/callbacks``) carry the callback secret in their
URL (``?secret=``), as ACS sends no credentials of ours. The call-control API (``POST
/calls/initiate``, ``POST /calls/{id}/hangup``, ``GET /calls/{id}``, ``GET /calls``) needs
``VOICEBOT_API_KEY`` as ``Authorization: Bearer <key>`` or ``x-api-key: <key>``. Secrets are
compared in constant time. Everything answers 503 while call control is not configured.

Failed Call Automation requests answer 504 (ACS too slow), 404 (ACS does not know the call) or
502 (ACS refused or unreachable), with the reason in ``detail``.
"""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request
from loguru import logger
from pydantic import BaseModel, ConfigDict, Field

from voicebot.acs.client import CallAutomationError
from voicebot.acs.control import E164, CallControl, UnknownCallError
from voicebot.acs.events import (
    INCOMING_CALL,
    SUBSCRIPTION_VALIDATION,
    EventFormatError,
    parse_callbacks,
    parse_event_grid,
    parse_incoming_call,
)
from voicebot.server.app import state_of

router = APIRouter(prefix="/calls", tags=["calls"])


def _matches(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def call_control(request: Request) -> CallControl:
    """The app's call control; 503 unless it is configured."""
    calls = state_of(request).calls
    if not calls.configured:
        raise HTTPException(503, "call control not configured: set VOICEBOT_ACS_CONNECTION_STRING")
    return calls


def webhook_caller(
    request: Request,
    calls: Annotated[CallControl, Depends(call_control)],
    secret: Annotated[str | None, Query()] = None,
) -> CallControl:
    """Call control, for a request whose ``?secret=`` is the callback secret (401 otherwise)."""
    expected = state_of(request).settings.callback_secret
    if expected is None or not _matches(secret, expected.get_secret_value()):
        raise HTTPException(401, "missing or wrong secret")
    return calls


def api_caller(
    request: Request,
    calls: Annotated[CallControl, Depends(call_control)],
    authorization: Annotated[str | None, Header()] = None,
    x_api_key: Annotated[str | None, Header()] = None,
) -> CallControl:
    """Call control, for a request with the API key (401 otherwise)."""
    expected = state_of(request).settings.api_key
    scheme, _, token = (authorization or "").partition(" ")
    bearer = token.strip() if scheme.lower() == "bearer" else None
    if expected is None or not (
        _matches(bearer, expected.get_secret_value())
        or _matches(x_api_key, expected.get_secret_value())
    ):
        raise HTTPException(401, "missing or wrong API key", headers={"WWW-Authenticate": "Bearer"})
    return calls


WebhookCalls = Annotated[CallControl, Depends(webhook_caller)]
ApiCalls = Annotated[CallControl, Depends(api_caller)]


async def _json(request: Request) -> Any:
    try:
        return await request.json()
    except ValueError:
        raise HTTPException(400, "body is not JSON") from None


def _failed(exc: CallAutomationError) -> HTTPException:
    return HTTPException(exc.http_status, str(exc))


@router.post("/events")
async def events(request: Request, calls: WebhookCalls) -> dict[str, Any]:
    """Event Grid: the subscription handshake, and incoming calls (answered with media streaming
    to our media endpoint). Other event types are acknowledged and ignored.

    Every incoming call of a batch is tried; if one could not be answered, the answer is that
    failure (Event Grid then redelivers the batch; ACS refuses calls already answered)."""
    try:
        batch = parse_event_grid(await _json(request))
        incoming = []
        for event in batch:
            if event.event_type == SUBSCRIPTION_VALIDATION:
                code = event.data.get("validationCode")
                if not isinstance(code, str) or not code:
                    raise EventFormatError("validation event: data.validationCode: missing")
                logger.info("Event Grid subscription validated")
                return {"validationResponse": code}
            if event.event_type == INCOMING_CALL:
                incoming.append(parse_incoming_call(event))
            else:
                logger.debug(f"Event Grid: ignoring {event.event_type} event {event.id}")
    except EventFormatError as exc:
        raise HTTPException(400, str(exc)) from None
    answered, failure = [], None
    for call in incoming:
        try:
            answered.append((await calls.answer(call)).call_id)
        except CallAutomationError as exc:
            failure = failure or exc
    if failure is not None:
        raise _failed(failure)
    return {"answered": answered}


@router.post("/callbacks")
async def callbacks(request: Request, calls: WebhookCalls) -> dict[str, Any]:
    """Call Automation callbacks: each updates its call's state."""
    try:
        batch = parse_callbacks(await _json(request))
    except EventFormatError as exc:
        raise HTTPException(400, str(exc)) from None
    handled = 0
    for event in batch:
        if await calls.handle_callback(event) is not None:
            handled += 1
    return {"handled": handled, "ignored": len(batch) - handled}


class InitiateCall(BaseModel):
    """``POST /calls/initiate``: whom to call, and from which of the resource's numbers."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    to: str = Field(pattern=E164.pattern, examples=["+15551234567"])
    from_: str | None = Field(default=None, alias="from", pattern=E164.pattern)


@router.post("/initiate", status_code=202)
async def initiate(body: InitiateCall, calls: ApiCalls) -> dict[str, Any]:
    """Place an outbound call; it streams to our media endpoint once the callee answers."""
    try:
        record = await calls.place_call(body.to, body.from_)
    except CallAutomationError as exc:
        raise _failed(exc) from None
    return record.view()


@router.post("/{call_id}/hangup", status_code=202)
async def hang_up(call_id: str, calls: ApiCalls) -> dict[str, Any]:
    """End a call for everyone; its state becomes ``disconnected`` when ACS confirms."""
    try:
        record = await calls.hang_up(call_id)
    except UnknownCallError as exc:
        raise HTTPException(404, str(exc)) from None
    except CallAutomationError as exc:
        raise _failed(exc) from None
    return record.view()


@router.get("/{call_id}")
async def get_call(call_id: str, calls: ApiCalls, refresh: bool = False) -> dict[str, Any]:
    """One call, with full numbers; ``?refresh=true`` adds ACS's own state (``acs_state``)."""
    record = await calls.get(call_id)
    if record is None:
        raise HTTPException(404, f"unknown call {call_id!r}")
    view = record.view()
    if refresh:
        try:
            view["acs_state"] = await calls.acs_state(call_id)
        except CallAutomationError as exc:
            raise _failed(exc) from None
    return view


@router.get("")
async def list_calls(calls: ApiCalls) -> dict[str, Any]:
    """Every known call, numbers masked."""
    return {"calls": [record.view(mask_numbers=True) for record in await calls.list()]}
