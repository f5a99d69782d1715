"""A fake OpenAI / Azure OpenAI chat-completions server on a real local socket, for tests.

The real ``openai`` SDK, and anything built on it (pipecat's ``OpenAILLMService`` and
``AzureLLMService``), talks to it over HTTP exactly as to the real service, so a test exercises
the client's own request building, SSE parsing, retries and error mapping. What the server answers
is a script of :class:`~voicebot.testing.fakes.ScriptedReply` (the same model the in-process
``FakeLLMService`` uses) or a responder callable; how long it takes is declared in milliseconds;
faults (429, 5xx, a cut stream, a slow first token) are injected per request.

Three API surfaces are served on one port (see :class:`Surface`):

* ``openai``: ``POST /v1/chat/completions``, key in ``Authorization: Bearer``.
* ``azure``: ``POST /openai/deployments/{deployment}/chat/completions?api-version=...``, key in
  ``api-key`` (or ``Authorization: Bearer``, as an Entra ID token would come).
* ``azure_v1``: ``POST /openai/v1/chat/completions`` (Azure's v1 surface), either header.

Streaming answers (``"stream": true``) are Server-Sent Events: ``data: {chunk}`` events and a
final ``data: [DONE]``. Azure surfaces first send a chunk with ``"choices": []`` and
``prompt_filter_results`` (unless ``azure_prompt_filter=False``); with
``stream_options.include_usage`` every chunk carries ``"usage": null`` and a last chunk with
``"choices": []`` carries the usage. Token counts are approximate: one token per word of the
prompt's text and one per streamed fragment of the answer.

Example::

    async with FakeOpenAIServer(["Hello there."], ttft_ms=200) as server:
        client = AsyncOpenAI(base_url=server.base_url, api_key=server.api_key)
        stream = await client.chat.completions.create(model="gpt-4o", messages=..., stream=True)
        ...
    assert server.requests[0].messages == [...]

Delays are measured on the event loop's clock (``loop.time()``).
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from aiohttp import web
from loguru import logger
from pydantic import BaseModel, ConfigDict, Field

from voicebot.testing.fakes import ScriptedReply

__all__ = [
    "CutStream",
    "Fault",
    "FakeOpenAIServer",
    "RateLimited",
    "RecordedRequest",
    "Responder",
    "ServerError",
    "SlowFirstToken",
    "Surface",
]

Surface = Literal["openai", "azure", "azure_v1"]
"""Which API a request was addressed to (see the module docstring)."""

_SURFACES: dict[str, Surface] = {"openai": "openai", "azure": "azure", "azure_v1": "azure_v1"}
_AZURE_SURFACES = ("azure", "azure_v1")
_T = TypeVar("_T")


# --------------------------------------------------------------------------------------------
# Faults
# --------------------------------------------------------------------------------------------


class RateLimited(BaseModel):
    """Answer 429 with a ``retry-after`` header and an error body; the reply is not consumed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    retry_after_s: float = Field(
        default=1.0, ge=0, description="Seconds put in the retry-after header."
    )


class ServerError(BaseModel):
    """Answer a 5xx error with an error body; the reply is not consumed.

    The ``openai`` SDK retries 5xx answers (``max_retries``, 2 by default).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    status: int = Field(default=500, ge=500, le=599, description="HTTP status code.")


class CutStream(BaseModel):
    """Close the connection after ``after_chunks`` SSE events, never sending ``[DONE]``.

    The reply is consumed (it was produced, then lost in transit). Every ``data:`` event counts,
    including Azure's prompt-filter chunk. A non-streaming request is cut before any byte of the
    answer.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    after_chunks: int = Field(default=1, ge=0, description="SSE events sent before the cut.")


class SlowFirstToken(BaseModel):
    """Answer normally, but with this time to first token; the reply is consumed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ttft_ms: float = Field(ge=0, description="Milliseconds from the request to the first token.")


Fault = RateLimited | ServerError | CutStream | SlowFirstToken
"""A fault the server can inject into one request."""

Responder = Callable[[dict[str, Any]], ScriptedReply | str]
"""Answers one request: gets its JSON body, returns the reply (a plain string is text)."""


# --------------------------------------------------------------------------------------------
# Recorded requests
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordedRequest:
    """One request the server received, with what it answered.

    Credentials are not kept: ``headers`` lacks ``api-key`` and ``authorization``, and
    ``api_key_present`` / ``api_key_valid`` say whether a key was offered and matched.

    Attributes:
        index: Position among all requests received, from 0.
        received_at: Loop time (``loop.time()``, s) when the request's body had been read.
        method: HTTP method.
        path: URL path, e.g. ``/v1/chat/completions``.
        query: Query parameters, e.g. ``{"api-version": "2024-10-21"}``.
        surface: The API addressed, or None for an unknown route (answered 404).
        deployment: The Azure deployment named in the path, if any.
        headers: Request headers, names lowercased, credentials removed.
        api_key_present: A key was offered in a header the surface accepts.
        api_key_valid: The offered key matched the server's.
        body: The JSON body (an empty dict if there was none or it was not a JSON object).
        status: The HTTP status answered (200 also for a stream that was then cut).
        fault: The injected fault applied, if any.
    """

    index: int
    received_at: float
    method: str
    path: str
    query: dict[str, str]
    surface: Surface | None
    deployment: str | None
    headers: dict[str, str]
    api_key_present: bool
    api_key_valid: bool
    body: dict[str, Any]
    status: int
    fault: Fault | None

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The request's ``messages``."""
        return list(self.body.get("messages") or [])

    @property
    def tools(self) -> list[dict[str, Any]]:
        """The request's ``tools`` (empty if none)."""
        return list(self.body.get("tools") or [])

    @property
    def model(self) -> str | None:
        """The ``model`` in the body (Azure clients put the deployment there too)."""
        model = self.body.get("model")
        return model if isinstance(model, str) else None

    @property
    def api_version(self) -> str | None:
        """The ``api-version`` query parameter (Azure)."""
        return self.query.get("api-version")

    @property
    def temperature(self) -> float | None:
        """The ``temperature`` sent, if any."""
        return self.body.get("temperature")

    @property
    def max_tokens(self) -> int | None:
        """The ``max_tokens`` sent, if any."""
        return self.body.get("max_tokens")

    @property
    def max_completion_tokens(self) -> int | None:
        """The ``max_completion_tokens`` sent, if any."""
        return self.body.get("max_completion_tokens")

    @property
    def stream(self) -> bool:
        """Whether a streaming answer was asked for."""
        return bool(self.body.get("stream"))

    @property
    def include_usage(self) -> bool:
        """Whether ``stream_options.include_usage`` was set."""
        options = self.body.get("stream_options")
        return isinstance(options, dict) and bool(options.get("include_usage"))


# --------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------


def _word_chunks(text: str, words: int) -> list[str]:
    """Split text into chunks of ``words`` words, each with its leading whitespace, as tokens
    come from the API; joined, they give back ``text`` exactly."""
    tokens = re.findall(r"\s*\S+", text)
    chunks = ["".join(tokens[i : i + words]) for i in range(0, len(tokens), words)]
    tail = text[sum(len(t) for t in tokens) :]
    if tail:
        if chunks:
            chunks[-1] += tail
        else:
            chunks = [tail]
    return chunks


def _count_words(messages: Iterable[Any]) -> int:
    count = 0
    for message in messages:
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if isinstance(content, str):
            count += len(content.split())
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    count += len(part["text"].split())
    return count


_OPENAI_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "invalid_request_error",
    408: "timeout",
    429: "requests",
}
_OPENAI_ERROR_CODES = {401: "invalid_api_key", 429: "rate_limit_exceeded"}

_SAFE = {"filtered": False, "severity": "safe"}
_PROMPT_FILTER_RESULTS = [
    {
        "prompt_index": 0,
        "content_filter_results": {
            "hate": _SAFE,
            "self_harm": _SAFE,
            "sexual": _SAFE,
            "violence": _SAFE,
        },
    }
]


@dataclass(frozen=True)
class _Piece:
    """One streamed delta and the milliseconds to wait before sending it."""

    delay_ms: float
    delta: dict[str, Any]


class FakeOpenAIServer:
    """An OpenAI-compatible chat-completions server on ``127.0.0.1`` and a free port.

    Use it as an async context manager (or call :meth:`start` and :meth:`close`). Each
    answered request takes the next scripted reply (or asks ``responder``); text streams in
    chunks of ``chunk_words`` words, ``ttft_ms`` after the request and ``token_interval_ms``
    apart; tool calls stream after the text, each as a first delta with its id, type, name and
    empty arguments, then argument fragments, and the reply ends with ``finish_reason``
    ``"tool_calls"`` (``"stop"`` without tool calls). A non-streaming request gets one
    ``chat.completion`` object after the time the stream would have taken.

    Request handling, in order: a wrong or missing key is answered 401, a malformed request 400
    (neither consumes a fault or a reply); then the request's fault applies (one injected for
    its index, else the next one-shot fault); then the reply is taken. A request that finds the
    script exhausted, or whose responder fails, is answered 500 with ``x-should-retry: false``
    (so the SDK does not retry it) and the problem is added to :attr:`errors`.

    Attributes:
        api_key: The key clients must send.
        requests: Every request received, in order of arrival.
        errors: Problems of the script or responder (exhausted script, responder raised).
    """

    def __init__(
        self,
        replies: Sequence[str | ScriptedReply] = (),
        *,
        responder: Responder | None = None,
        api_key: str = "test-key",
        ttft_ms: float = 0.0,
        token_interval_ms: float = 0.0,
        chunk_words: int = 1,
        model: str | None = None,
        azure_prompt_filter: bool = True,
        host: str = "127.0.0.1",
        io_timeout_s: float = 10.0,
        shutdown_timeout_s: float = 2.0,
    ) -> None:
        """Declare the script and timings; the server starts with :meth:`start`.

        Args:
            replies: Replies, one per answered request, in order (a string is a text reply).
            responder: Called with each answered request's JSON body instead of taking the
                next scripted reply; not together with ``replies``.
            api_key: The key clients must send.
            ttft_ms: Milliseconds from the request to the first token, unless a reply sets
                its own ``ttft_ms``.
            token_interval_ms: Milliseconds between streamed fragments.
            chunk_words: Words per streamed text fragment.
            model: The ``model`` reported in answers; None echoes the request's.
            azure_prompt_filter: On Azure surfaces, open each stream with a chunk holding no
                choices, only ``prompt_filter_results``, as Azure does.
            host: Interface to listen on.
            io_timeout_s: Bound, in seconds, on reading a request body and on each write.
            shutdown_timeout_s: Bound, in seconds, on waiting for requests in flight at close.

        Raises:
            ValueError: Listing every invalid argument.
        """
        problems = []
        if replies and responder is not None:
            problems.append("give replies or responder, not both")
        for name, value in (
            ("ttft_ms", ttft_ms),
            ("token_interval_ms", token_interval_ms),
            ("io_timeout_s", io_timeout_s),
            ("shutdown_timeout_s", shutdown_timeout_s),
        ):
            if not value >= 0:
                problems.append(f"{name} must be >= 0 (got {value!r})")
        if chunk_words < 1:
            problems.append(f"chunk_words must be >= 1 (got {chunk_words!r})")
        if not api_key:
            problems.append("api_key must not be empty")
        if problems:
            raise ValueError("FakeOpenAIServer: " + "; ".join(problems))

        self.api_key = api_key
        self.requests: list[RecordedRequest] = []
        self.errors: list[str] = []
        self._responder = responder
        self._replies: deque[ScriptedReply] = deque()
        self.add_replies(*replies)
        self._ttft_ms = ttft_ms
        self._token_interval_ms = token_interval_ms
        self._chunk_words = chunk_words
        self._model = model
        self._azure_prompt_filter = azure_prompt_filter
        self._host = host
        self._io_timeout_s = io_timeout_s
        self._shutdown_timeout_s = shutdown_timeout_s
        self._next_faults: deque[Fault] = deque()
        self._faults_at: dict[int, Fault] = {}
        self._responses = 0
        self._tool_calls = 0
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    # ---------------------------------------------------------------------------- script

    def add_replies(self, *replies: str | ScriptedReply) -> None:
        """Queue more replies behind those not yet given."""
        if replies and self._responder is not None:
            raise ValueError("FakeOpenAIServer: this server answers with a responder, not replies")
        self._replies.extend(ScriptedReply(text=r) if isinstance(r, str) else r for r in replies)

    @property
    def replies_left(self) -> int:
        """Scripted replies not yet given."""
        return len(self._replies)

    def inject(self, fault: Fault, *, at: int | None = None) -> None:
        """Inject a fault into one request.

        Args:
            fault: What goes wrong.
            at: Index of the request (among all requests received, from 0) that gets it;
                None gives it to the next request that passes the key and format checks.
                One-shot faults apply in the order injected.
        """
        if at is None:
            self._next_faults.append(fault)
        elif at < 0:
            raise ValueError(f"FakeOpenAIServer.inject: at must be >= 0 (got {at})")
        else:
            self._faults_at[at] = fault

    # ---------------------------------------------------------------------------- addresses

    @property
    def port(self) -> int:
        """The port listened on."""
        if self._port is None:
            raise RuntimeError("FakeOpenAIServer is not running")
        return self._port

    @property
    def url(self) -> str:
        """``http://host:port``, the server's root."""
        return f"http://{self._host}:{self.port}"

    @property
    def base_url(self) -> str:
        """For ``AsyncOpenAI(base_url=...)`` and pipecat's ``OpenAILLMService(base_url=...)``."""
        return f"{self.url}/v1"

    @property
    def azure_endpoint(self) -> str:
        """For ``AsyncAzureOpenAI(azure_endpoint=...)`` and ``AzureLLMService(endpoint=...)``."""
        return self.url

    @property
    def azure_v1_endpoint(self) -> str:
        """Azure's v1 surface: ``AsyncOpenAI(base_url=...)``, ``AzureLLMService(endpoint=...)``.

        ``AzureLLMService`` picks the v1 surface from an endpoint ending in ``/openai/v1``.
        """
        return f"{self.url}/openai/v1"

    # ---------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Listen on a free port; returns once connections are accepted."""
        if self._runner is not None:
            raise RuntimeError("FakeOpenAIServer is already running")
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._handle, name="openai")
        app.router.add_post(
            "/openai/deployments/{deployment}/chat/completions", self._handle, name="azure"
        )
        app.router.add_post("/openai/v1/chat/completions", self._handle, name="azure_v1")
        app.router.add_route("*", "/{tail:.*}", self._handle, name="unknown")
        runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=self._shutdown_timeout_s
        )
        self._closing = asyncio.Event()
        try:
            async with asyncio.timeout(self._io_timeout_s):
                await runner.setup()
                site = web.TCPSite(runner, self._host, 0)
                await site.start()
        except BaseException:
            await self._cleanup(runner)
            raise
        self._runner = runner
        self._port = int(runner.addresses[0][1])

    async def close(self) -> None:
        """Stop listening; streams in flight are cut. Safe to call twice."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self._closing.set()
        await self._cleanup(runner)

    async def _cleanup(self, runner: web.AppRunner) -> None:
        try:
            async with asyncio.timeout(self._shutdown_timeout_s + 1):
                await runner.cleanup()
        except TimeoutError:
            logger.warning(f"{self}: shutdown took over {self._shutdown_timeout_s + 1} s")

    async def __aenter__(self) -> FakeOpenAIServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        where = f"{self._host}:{self._port}" if self._runner is not None else "stopped"
        return f"FakeOpenAIServer({where})"

    # ---------------------------------------------------------------------------- requests

    async def _bounded(self, awaitable: Awaitable[_T]) -> _T:
        async with asyncio.timeout(self._io_timeout_s):
            return await awaitable

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        surface = _SURFACES.get(request.match_info.route.name or "")
        try:
            raw = await self._bounded(request.read())
        except TimeoutError:
            raw = None
        loop = asyncio.get_running_loop()
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
        present, valid = self._check_key(surface, request)
        index = len(self.requests)

        def record(status: int, fault: Fault | None = None) -> None:
            self.requests.append(
                RecordedRequest(
                    index=index,
                    received_at=loop.time(),
                    method=request.method,
                    path=request.path,
                    query=dict(request.query),
                    surface=surface,
                    deployment=request.match_info.get("deployment"),
                    headers={
                        k.lower(): v
                        for k, v in request.headers.items()
                        if k.lower() not in ("api-key", "authorization")
                    },
                    api_key_present=present,
                    api_key_valid=valid,
                    body=body if isinstance(body, dict) else {},
                    status=status,
                    fault=fault,
                )
            )

        if surface is None:
            record(404)
            return self._error(None, 404, "Resource not found")
        if raw is None:
            record(408)
            return self._error(surface, 408, "Timed out reading the request body")
        if not valid:
            record(401)
            return self._error(surface, 401, self._auth_message(surface, present))
        if problem := self._check_body(surface, request, body):
            record(400)
            return self._error(surface, 400, problem)

        fault = self._faults_at.pop(index, None)
        if fault is None and self._next_faults:
            fault = self._next_faults.popleft()
        if isinstance(fault, RateLimited):
            record(429, fault)
            seconds = fault.retry_after_s
            shown = str(int(seconds)) if seconds == int(seconds) else str(seconds)
            return self._error(
                surface,
                429,
                f"Requests to the ChatCompletions_Create Operation have exceeded the rate "
                f"limit. Please retry after {shown} seconds.",
                headers={"retry-after": shown},
            )
        if isinstance(fault, ServerError):
            record(fault.status, fault)
            return self._error(
                surface, fault.status, "The server had an error while processing your request."
            )

        reply = self._next_reply(index, body)
        if isinstance(reply, str):
            record(500, fault)
            self.errors.append(reply)
            logger.warning(f"{self}: {reply}")
            return self._error(surface, 500, reply, headers={"x-should-retry": "false"})
        record(200, fault)
        return await self._answer(request, surface, body, reply, fault)

    def _check_key(self, surface: Surface | None, request: web.Request) -> tuple[bool, bool]:
        authorization = request.headers.get("authorization", "")
        scheme, _, token = authorization.partition(" ")
        offered = [token.strip()] if scheme.lower() == "bearer" and token.strip() else []
        if surface in _AZURE_SURFACES and request.headers.get("api-key"):
            offered.append(request.headers["api-key"])
        return bool(offered), self.api_key in offered

    @staticmethod
    def _auth_message(surface: Surface, present: bool) -> str:
        if surface == "openai":
            return "Incorrect API key provided." if present else "You didn't provide an API key."
        return (
            "Access denied due to invalid subscription key or wrong API endpoint. Make sure to "
            "provide a valid key for an active subscription and use a correct regional API "
            "endpoint for your resource."
        )

    @staticmethod
    def _check_body(surface: Surface, request: web.Request, body: Any) -> str | None:
        if surface == "azure" and not request.query.get("api-version"):
            return "Missing required query parameter: api-version"
        if not isinstance(body, dict):
            return "The request body must be a JSON object"
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return "'messages' must be a non-empty array"
        if body.get("stream_options") is not None and not body.get("stream"):
            return "The 'stream_options' parameter is only allowed when 'stream' is enabled."
        return None

    def _next_reply(self, index: int, body: dict[str, Any]) -> ScriptedReply | str:
        """The reply to a request, or a string saying why there is none."""
        if self._responder is None:
            if not self._replies:
                return f"reply script exhausted at request {index}"
            return self._replies.popleft()
        try:
            reply = self._responder(copy.deepcopy(body))
        except Exception as e:
            return f"responder raised at request {index}: {type(e).__name__}: {e}"
        if isinstance(reply, str):
            return ScriptedReply(text=reply)
        if isinstance(reply, ScriptedReply):
            return reply
        return f"responder returned {type(reply).__name__} at request {index}, not a reply"

    @staticmethod
    def _error(
        surface: Surface | None,
        status: int,
        message: str,
        headers: Mapping[str, str] | None = None,
    ) -> web.Response:
        """An error answer, in Azure's shape on Azure surfaces, else in OpenAI's."""
        error: dict[str, Any]
        if surface in _AZURE_SURFACES:
            error = {"code": str(status), "message": message}
        else:
            error = {
                "message": message,
                "type": _OPENAI_ERROR_TYPES.get(status, "server_error"),
                "param": None,
                "code": _OPENAI_ERROR_CODES.get(status),
            }
        return web.json_response({"error": error}, status=status, headers=headers)

    # ---------------------------------------------------------------------------- answers

    def _pieces(self, reply: ScriptedReply, ttft_ms: float) -> list[_Piece]:
        """The reply's deltas in order, each with the wait before it."""
        deltas: list[dict[str, Any]] = []
        if reply.text:
            deltas.append({"role": "assistant", "content": ""})
            deltas.extend({"content": c} for c in _word_chunks(reply.text, self._chunk_words))
        for i, call in enumerate(reply.tool_calls):
            head: dict[str, Any] = {
                "tool_calls": [
                    {
                        "index": i,
                        "id": self._next_call_id(),
                        "type": "function",
                        "function": {"name": call.name, "arguments": ""},
                    }
                ]
            }
            deltas.append({"role": "assistant", "content": None, **head} if not deltas else head)
            deltas.extend(
                {"tool_calls": [{"index": i, "function": {"arguments": fragment}}]}
                for fragment in re.findall(r"\s*\S+", json.dumps(call.arguments))
            )
        if not deltas:
            deltas.append({"role": "assistant", "content": ""})
        pieces = []
        for i, delta in enumerate(deltas):
            if i == 0:
                delay = ttft_ms
            elif i == 1 and reply.text:
                delay = 0.0  # the first text fragment comes with the role delta
            else:
                delay = self._token_interval_ms
            pieces.append(_Piece(delay, delta))
        return pieces

    def _next_call_id(self) -> str:
        self._tool_calls += 1
        return f"call_fake_{self._tool_calls}"

    def _usage(self, body: dict[str, Any], completion_tokens: int) -> dict[str, int]:
        prompt_tokens = _count_words(body.get("messages") or [])
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }

    async def _pause(self, delay_ms: float) -> bool:
        """Wait ``delay_ms``; False if the server started closing meanwhile."""
        if self._closing.is_set():
            return False
        if delay_ms <= 0:
            return True
        try:
            async with asyncio.timeout(delay_ms / 1000):
                await self._closing.wait()
        except TimeoutError:
            return True
        return False

    async def _answer(
        self,
        request: web.Request,
        surface: Surface,
        body: dict[str, Any],
        reply: ScriptedReply,
        fault: Fault | None,
    ) -> web.StreamResponse:
        if isinstance(fault, SlowFirstToken):
            ttft_ms = fault.ttft_ms
        elif reply.ttft_ms is not None:
            ttft_ms = reply.ttft_ms
        else:
            ttft_ms = self._ttft_ms
        pieces = self._pieces(reply, ttft_ms)
        cut_after = fault.after_chunks if isinstance(fault, CutStream) else None
        self._responses += 1
        response_id = f"chatcmpl-fake-{self._responses}"
        model = self._model or body.get("model") or request.match_info.get("deployment") or "fake"
        azure = surface in _AZURE_SURFACES

        if not body.get("stream"):
            if cut_after is not None or not await self._pause(sum(p.delay_ms for p in pieces)):
                return self._cut(request)
            completion = self._completion(response_id, model, reply, pieces, body)
            if azure:
                completion["prompt_filter_results"] = _PROMPT_FILTER_RESULTS
            return web.json_response(completion)

        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        created = int(time.time())
        base: dict[str, Any] = {
            "id": response_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
        }
        if include_usage:
            base["usage"] = None

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            return {**base, "choices": [choice]}

        events: list[tuple[float, dict[str, Any]]] = []
        if azure and self._azure_prompt_filter:
            events.append(
                (
                    0.0,
                    {
                        "choices": [],
                        "created": 0,
                        "id": "",
                        "model": "",
                        "object": "",
                        "prompt_filter_results": _PROMPT_FILTER_RESULTS,
                    },
                )
            )
        events.extend((p.delay_ms, chunk(p.delta)) for p in pieces)
        events.append((0.0, chunk({}, "tool_calls" if reply.tool_calls else "stop")))
        if include_usage:
            usage = self._usage(body, completion_tokens=len(pieces))
            events.append((0.0, {**base, "choices": [], "usage": usage}))

        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
            }
        )
        try:
            await self._bounded(response.prepare(request))
            for sent, (delay_ms, event) in enumerate(events):
                if sent == cut_after or not await self._pause(delay_ms):
                    return self._cut(request, response)
                await self._bounded(response.write(f"data: {json.dumps(event)}\n\n".encode()))
            if cut_after is not None:
                return self._cut(request, response)
            await self._bounded(response.write(b"data: [DONE]\n\n"))
            await self._bounded(response.write_eof())
        except (ConnectionError, TimeoutError):
            return self._cut(request, response)
        return response

    def _completion(
        self,
        response_id: str,
        model: str,
        reply: ScriptedReply,
        pieces: list[_Piece],
        body: dict[str, Any],
    ) -> dict[str, Any]:
        message: dict[str, Any] = {
            "role": "assistant",
            "content": reply.text or None,
            "refusal": None,
        }
        if reply.tool_calls:
            ids = [
                call["id"]
                for piece in pieces
                for call in piece.delta.get("tool_calls", ())
                if "id" in call
            ]
            message["tool_calls"] = [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": json.dumps(call.arguments)},
                }
                for call_id, call in zip(ids, reply.tool_calls, strict=True)
            ]
        return {
            "id": response_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": "tool_calls" if reply.tool_calls else "stop",
                }
            ],
            "usage": self._usage(body, completion_tokens=len(pieces)),
        }

    @staticmethod
    def _cut(
        request: web.Request, response: web.StreamResponse | None = None
    ) -> web.StreamResponse:
        """Close the connection without finishing the answer."""
        if request.transport is not None:
            request.transport.close()
        return response if response is not None else web.StreamResponse()
