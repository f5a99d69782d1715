"""Our client of ACS Call Automation: the async SDK, one per process, every request bounded.

:class:`CallAutomation` wraps ``azure.communication.callautomation.aio.CallAutomationClient`` with
the few operations a voice bot needs (answer, create, hang up, transfer, get) and turns every way
they can fail (ACS refuses, does not answer within ``timeout_secs``, cannot be reached) into one
:class:`CallAutomationError` whose message says which operation, where, and why.

Requests are signed with the resource's access key (HMAC-SHA256, by the SDK). ``endpoint`` may be
plain ``http://`` (a local fake); the SDK only forces ``https://`` for an endpoint without a
scheme, and for ``from_connection_string``, which this module therefore does not use.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlparse

from azure.communication.callautomation import (
    AudioFormat,
    CallConnectionProperties,
    MediaStreamingAudioChannelType,
    MediaStreamingContentType,
    MediaStreamingOptions,
    PhoneNumberIdentifier,
    StreamingTransportType,
)
from azure.communication.callautomation.aio import CallAutomationClient
from azure.core.credentials import AzureKeyCredential
from azure.core.exceptions import AzureError, HttpResponseError, ServiceRequestError

#: Upper bound of one Call Automation operation, retries included, in seconds.
DEFAULT_TIMEOUT_SECS = 10.0

#: Retries of the SDK's pipeline (connection errors, 408/429/5xx), all within the timeout above.
RETRY_TOTAL = 2
RETRY_BACKOFF_SECS = 0.25

_T = TypeVar("_T")


class CallAutomationError(Exception):
    """A Call Automation operation failed. ``status`` is ACS's HTTP status when it answered."""

    def __init__(
        self, operation: str, message: str, *, status: int | None = None, timed_out: bool = False
    ) -> None:
        super().__init__(f"{operation}: {message}")
        self.operation = operation
        self.status = status
        self.timed_out = timed_out

    @property
    def http_status(self) -> int:
        """The status our API answers with: 504 on timeout, 404 when ACS does not know the call,
        else 502 (ACS refused or is unreachable)."""
        if self.timed_out:
            return 504
        return 404 if self.status == 404 else 502


@dataclass(frozen=True)
class CallConnection:
    """The parts of ACS's ``CallConnectionProperties`` this server uses."""

    call_id: str
    """``callConnectionId``."""
    server_call_id: str
    correlation_id: str
    state: str
    """ACS's ``callConnectionState``: ``connecting``, ``connected``, ``disconnected``, …"""

    @classmethod
    def of(cls, props: CallConnectionProperties) -> CallConnection:
        return cls(
            call_id=props.call_connection_id or "",
            server_call_id=props.server_call_id or "",
            correlation_id=props.correlation_id or "",
            state=str(props.call_connection_state or ""),
        )


def parse_connection_string(text: str) -> tuple[str, str]:
    """``(endpoint, access_key)`` of ``endpoint=https://…/;accesskey=…``; the endpoint keeps its
    scheme (``https://`` if it has none). Raises ValueError listing everything missing or bad."""
    parts: dict[str, str] = {}
    for element in text.split(";"):
        key, sep, value = element.strip().partition("=")
        if sep:
            parts[key.lower()] = value.strip()
    problems = []
    endpoint = parts.get("endpoint", "").rstrip("/")
    if not endpoint:
        problems.append("no endpoint=…")
    elif "://" not in endpoint:
        endpoint = f"https://{endpoint}"
    access_key = parts.get("accesskey", "")
    if not access_key:
        problems.append("no accesskey=…")
    else:
        try:
            base64.b64decode(access_key, validate=True)
        except (binascii.Error, ValueError):
            problems.append("accesskey is not base64")
    if endpoint and not urlparse(endpoint).hostname:
        problems.append("endpoint has no host")
    if problems:
        raise ValueError(
            "; ".join(problems) + " (expected endpoint=https://<resource>.communication.azure.com/"
            ";accesskey=<base64 key>)"
        )
    return endpoint, access_key


def streaming_options(transport_url: str, sample_rate: int) -> MediaStreamingOptions:
    """Bidirectional, mixed-audio PCM streaming of a call to ``transport_url`` (our media
    WebSocket), with DTMF, started as soon as the call connects. ``sample_rate``: 16000 or 24000
    (Hz), the PCM rate both ways."""
    formats = {16000: AudioFormat.PCM16_K_MONO, 24000: AudioFormat.PCM24_K_MONO}
    if sample_rate not in formats:
        raise ValueError(f"ACS streams 16000 or 24000 Hz, not {sample_rate!r}")
    return MediaStreamingOptions(
        transport_url=transport_url,
        transport_type=StreamingTransportType.WEBSOCKET,
        content_type=MediaStreamingContentType.AUDIO,
        audio_channel_type=MediaStreamingAudioChannelType.MIXED,
        start_media_streaming=True,
        enable_bidirectional=True,
        audio_format=formats[sample_rate],
        enable_dtmf_tones=True,
    )


class CallAutomation:
    """ACS Call Automation for one process (create it in the app lifespan, :meth:`aclose` it at
    the end). Every operation takes at most ``timeout_secs`` or raises CallAutomationError."""

    def __init__(
        self, endpoint: str, access_key: str, *, timeout_secs: float = DEFAULT_TIMEOUT_SECS
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.timeout_secs = timeout_secs
        self._sdk = CallAutomationClient(
            self.endpoint,
            AzureKeyCredential(access_key),
            connection_timeout=timeout_secs,
            read_timeout=timeout_secs,
            retry_total=RETRY_TOTAL,
            retry_backoff_factor=RETRY_BACKOFF_SECS,
            retry_backoff_max=1,
        )

    @classmethod
    def from_connection_string(
        cls,
        connection_string: str,
        *,
        endpoint: str = "",
        timeout_secs: float = DEFAULT_TIMEOUT_SECS,
    ) -> CallAutomation:
        """A client of the resource in ``connection_string``; ``endpoint`` overrides its endpoint
        (e.g. ``http://127.0.0.1:8123`` for a local fake)."""
        own_endpoint, access_key = parse_connection_string(connection_string)
        return cls(endpoint or own_endpoint, access_key, timeout_secs=timeout_secs)

    @property
    def host(self) -> str:
        """The endpoint's host (and port), for logs and readiness."""
        return urlparse(self.endpoint).netloc

    async def answer(
        self,
        incoming_call_context: str,
        callback_url: str,
        media: MediaStreamingOptions,
        *,
        operation_context: str | None = None,
    ) -> CallConnection:
        """Answer an incoming call; ACS then streams its media as ``media`` says."""
        props = await self._run(
            "answer call",
            lambda: self._sdk.answer_call(
                incoming_call_context,
                callback_url,
                media_streaming=media,
                operation_context=operation_context,
            ),
        )
        return CallConnection.of(props)

    async def create(
        self,
        to: str,
        callback_url: str,
        media: MediaStreamingOptions,
        *,
        caller_id: str | None = None,
        operation_context: str | None = None,
    ) -> CallConnection:
        """Call the phone number ``to`` (E.164), shown ``caller_id`` (one of the resource's
        numbers; needed for PSTN callees)."""
        props = await self._run(
            "create call",
            lambda: self._sdk.create_call(
                PhoneNumberIdentifier(to),
                callback_url,
                source_caller_id_number=PhoneNumberIdentifier(caller_id) if caller_id else None,
                media_streaming=media,
                operation_context=operation_context,
            ),
        )
        return CallConnection.of(props)

    async def hang_up(self, call_id: str) -> None:
        """End the call for everyone on it."""
        connection = self._sdk.get_call_connection(call_id)
        await self._run("hang up", lambda: connection.hang_up(is_for_everyone=True))

    async def transfer(
        self, call_id: str, to: str, *, operation_context: str | None = None
    ) -> None:
        """Transfer the caller to the phone number ``to`` (E.164); the bot leaves the call when
        the transfer is accepted (``CallTransferAccepted``, then ``CallDisconnected``)."""
        connection = self._sdk.get_call_connection(call_id)
        await self._run(
            "transfer call",
            lambda: connection.transfer_call_to_participant(
                PhoneNumberIdentifier(to), operation_context=operation_context
            ),
        )

    async def get(self, call_id: str) -> CallConnection:
        """ACS's current view of the call."""
        connection = self._sdk.get_call_connection(call_id)
        props = await self._run("get call", connection.get_call_properties)
        return CallConnection.of(props)

    async def aclose(self) -> None:
        await self._sdk.close()

    async def _run(self, operation: str, request: Callable[[], Awaitable[_T]]) -> _T:
        try:
            return await asyncio.wait_for(request(), self.timeout_secs)
        except TimeoutError:
            raise CallAutomationError(
                operation,
                f"no answer from ACS at {self.host} within {self.timeout_secs:g} s",
                timed_out=True,
            ) from None
        except HttpResponseError as exc:
            raise CallAutomationError(
                operation,
                f"ACS at {self.host} answered {exc.status_code}: {_reason(exc)}",
                status=exc.status_code,
            ) from exc
        except ServiceRequestError as exc:
            raise CallAutomationError(
                operation, f"cannot reach ACS at {self.host}: {_first_line(exc)}"
            ) from exc
        except AzureError as exc:
            raise CallAutomationError(
                operation, f"request to ACS at {self.host} failed: {_first_line(exc)}"
            ) from exc


def _reason(exc: HttpResponseError) -> str:
    """ACS's error code and message, or the HTTP reason."""
    error = exc.error
    if error is not None and (error.code or error.message):
        return f"{error.code or '-'}: {error.message or ''}".strip()
    return exc.reason or _first_line(exc)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
