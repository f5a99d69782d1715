from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import openai
import pytest
from openai import AsyncAzureOpenAI, AsyncOpenAI
from openai.types.chat import ChatCompletionChunk
from pipecat.adapters.llm.schemas.function_schema import FunctionSchema
from pipecat.adapters.llm.schemas.tools_schema import ToolsSchema
from pipecat.frames.frames import (
    ErrorFrame,
    Frame,
    LLMContextFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import LLMContextAggregatorPair
from pipecat.services.azure.llm import AzureLLMService
from pipecat.services.llm_service import FunctionCallParams
from pipecat.services.openai.llm import OpenAILLMService
from pipecat.tests.utils import SleepFrame, run_test

from voicebot.testing.fakes import ScriptedReply, ScriptedToolCall
from voicebot.testing.openai_server import (
    CutStream,
    FakeOpenAIServer,
    RateLimited,
    ServerError,
    SlowFirstToken,
)
from voicebot.testing.recorder import FrameRecorder
from voicebot.testing.tasks import no_leaked_tasks

API_VERSION = "2024-10-21"
MESSAGES: list[Any] = [
    {"role": "system", "content": "You are a bank assistant."},
    {"role": "user", "content": "What is my balance?"},
]
VERIFY = ScriptedToolCall(name="verify_identity", arguments={"account": "12 34", "pin": [1, 2]})


def _now() -> float:
    return asyncio.get_running_loop().time()


def openai_client(server: FakeOpenAIServer, **kwargs: Any) -> AsyncOpenAI:
    kwargs.setdefault("max_retries", 0)
    kwargs.setdefault("api_key", server.api_key)
    return AsyncOpenAI(base_url=server.base_url, timeout=10, **kwargs)


def azure_client(server: FakeOpenAIServer, **kwargs: Any) -> AsyncAzureOpenAI:
    kwargs.setdefault("max_retries", 0)
    kwargs.setdefault("api_key", server.api_key)
    return AsyncAzureOpenAI(
        azure_endpoint=server.azure_endpoint, api_version=API_VERSION, timeout=10, **kwargs
    )


async def collect(
    client: AsyncOpenAI, model: str = "gpt-4o-mini", **kwargs: Any
) -> list[tuple[float, ChatCompletionChunk]]:
    """Stream one completion; every chunk with its arrival time (loop time, s)."""
    kwargs.setdefault("messages", MESSAGES)
    stream = await client.chat.completions.create(model=model, stream=True, **kwargs)
    async with stream:
        return [(_now(), chunk) async for chunk in stream]


def text_of(chunks: list[tuple[float, ChatCompletionChunk]]) -> str:
    return "".join(c.choices[0].delta.content or "" for _, c in chunks if c.choices)


def tool_calls_of(chunks: list[tuple[float, ChatCompletionChunk]]) -> list[dict[str, Any]]:
    """Tool calls reassembled from their deltas by index, as a client must."""
    calls: dict[int, dict[str, Any]] = {}
    for _, chunk in chunks:
        if not chunk.choices:
            continue
        for delta in chunk.choices[0].delta.tool_calls or []:
            call = calls.setdefault(delta.index, {"id": None, "name": "", "arguments": ""})
            if delta.id:
                call["id"] = delta.id
            if delta.function and delta.function.name:
                call["name"] += delta.function.name
            if delta.function and delta.function.arguments:
                call["arguments"] += delta.function.arguments
    return [calls[i] for i in sorted(calls)]


def finish_reasons(chunks: list[tuple[float, ChatCompletionChunk]]) -> list[str]:
    return [
        c.choices[0].finish_reason for _, c in chunks if c.choices and c.choices[0].finish_reason
    ]


@pytest.fixture
async def server() -> AsyncIterator[FakeOpenAIServer]:
    async with FakeOpenAIServer(token_interval_ms=2) as server:
        yield server


# ------------------------------------------------------------------------------ streaming text


async def test_openai_client_streams_the_scripted_text_after_time_to_first_token(
    server: FakeOpenAIServer,
) -> None:
    server.add_replies(ScriptedReply(text="Your balance is 42 dollars.", ttft_ms=150))
    async with openai_client(server) as client:
        sent = _now()
        chunks = await collect(client, temperature=0.2, max_tokens=50)

    assert text_of(chunks) == "Your balance is 42 dollars."
    contents = [(t, c.choices[0].delta) for t, c in chunks if c.choices[0].delta.content]
    assert [d.content for _, d in contents] == ["Your", " balance", " is", " 42", " dollars."]
    assert contents[0][0] - sent >= 0.15
    first = chunks[0][1]
    assert (first.choices[0].delta.role, first.choices[0].delta.content) == ("assistant", "")
    assert first.object == "chat.completion.chunk"
    assert first.model == "gpt-4o-mini"
    assert finish_reasons(chunks) == ["stop"]
    assert chunks[-1][1].choices[0].finish_reason == "stop"

    (request,) = server.requests
    assert (request.path, request.surface, request.status) == (
        "/v1/chat/completions",
        "openai",
        200,
    )
    assert request.api_key_present and request.api_key_valid
    assert "authorization" not in request.headers and "api-key" not in request.headers
    assert request.headers["content-type"] == "application/json"
    assert request.messages == MESSAGES
    assert (request.model, request.temperature, request.max_tokens) == ("gpt-4o-mini", 0.2, 50)
    assert request.stream and not request.include_usage
    assert request.tools == []


async def test_azure_client_streams_after_a_prompt_filter_chunk(server: FakeOpenAIServer) -> None:
    server.add_replies("Hello from Azure.")
    async with azure_client(server) as client:
        chunks = await collect(client, model="my-deployment")

    first = chunks[0][1]
    assert first.choices == []
    assert first.model_extra is not None
    assert first.model_extra["prompt_filter_results"][0]["prompt_index"] == 0
    assert text_of(chunks) == "Hello from Azure."

    (request,) = server.requests
    assert request.path == "/openai/deployments/my-deployment/chat/completions"
    assert (request.surface, request.deployment, request.api_version) == (
        "azure",
        "my-deployment",
        API_VERSION,
    )
    assert request.query == {"api-version": API_VERSION}
    assert request.api_key_present and request.api_key_valid
    assert "api-key" not in request.headers
    assert request.model == "my-deployment"


async def test_azure_prompt_filter_chunk_can_be_left_out() -> None:
    async with (
        FakeOpenAIServer(["Hi."], azure_prompt_filter=False) as server,
        azure_client(server) as client,
    ):
        chunks = await collect(client, model="d")
    assert all(c.choices for _, c in chunks)


async def test_text_chunks_of_several_words_keep_every_character() -> None:
    text = "  Leading space,  double  spaces\nand a newline. "
    async with FakeOpenAIServer([text], chunk_words=3) as server, openai_client(server) as client:
        chunks = await collect(client)
    assert text_of(chunks) == text
    contents = [c.choices[0].delta.content for _, c in chunks if c.choices[0].delta.content]
    assert contents == ["  Leading space,  double", "  spaces\nand a", " newline. "]


async def test_tokens_come_token_interval_apart() -> None:
    async with (
        FakeOpenAIServer(["one two three four"], ttft_ms=50, token_interval_ms=60) as server,
        openai_client(server) as client,
    ):
        sent = _now()
        chunks = await collect(client)
    times = [t - sent for t, c in chunks if c.choices[0].delta.content]
    assert len(times) == 4
    assert times[0] >= 0.05
    assert 0.17 <= times[-1] - times[0] < 1.0
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert all(gap >= 0.03 for gap in gaps), gaps


# ------------------------------------------------------------------------------ tool calls


async def test_tool_call_streams_name_then_argument_fragments(server: FakeOpenAIServer) -> None:
    server.add_replies(ScriptedReply(tool_calls=[VERIFY]))
    async with openai_client(server) as client:
        chunks = await collect(client)

    (call,) = tool_calls_of(chunks)
    assert call["name"] == "verify_identity"
    assert call["id"].startswith("call_")
    assert json.loads(call["arguments"]) == {"account": "12 34", "pin": [1, 2]}
    deltas = [c.choices[0].delta for _, c in chunks]
    head = deltas[0].tool_calls
    assert head is not None and head[0].function is not None
    assert (head[0].index, head[0].type, head[0].function.arguments) == (0, "function", "")
    assert deltas[0].role == "assistant"
    fragments = [d.tool_calls[0] for d in deltas[1:] if d.tool_calls]
    assert len(fragments) > 1
    assert all(f.id is None and f.function and f.function.name is None for f in fragments)
    assert text_of(chunks) == ""
    assert finish_reasons(chunks) == ["tool_calls"]


async def test_two_tool_calls_in_one_reply_after_text(server: FakeOpenAIServer) -> None:
    lookup = ScriptedToolCall(name="lookup_balance", arguments={})
    server.add_replies(ScriptedReply(text="Let me check.", tool_calls=[VERIFY, lookup]))
    async with azure_client(server) as client:
        chunks = await collect(client, model="d")

    assert text_of(chunks) == "Let me check."
    calls = tool_calls_of(chunks)
    assert [c["name"] for c in calls] == ["verify_identity", "lookup_balance"]
    assert [json.loads(c["arguments"]) for c in calls] == [VERIFY.arguments, {}]
    assert len({c["id"] for c in calls}) == 2
    indexes = [d.index for _, c in chunks if c.choices for d in c.choices[0].delta.tool_calls or []]
    assert indexes == sorted(indexes) and set(indexes) == {0, 1}
    assert finish_reasons(chunks) == ["tool_calls"]


async def test_follow_up_request_carries_the_tool_call_and_its_result() -> None:
    def respond(body: dict[str, Any]) -> ScriptedReply | str:
        last = body["messages"][-1]
        if last["role"] == "tool":
            return f"Your balance is {json.loads(last['content'])['balance']} dollars."
        return ScriptedReply(tool_calls=[VERIFY])

    async with FakeOpenAIServer(responder=respond) as server, openai_client(server) as client:
        chunks = await collect(client)
        (call,) = tool_calls_of(chunks)
        assistant = {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call["id"],
                    "type": "function",
                    "function": {"name": call["name"], "arguments": call["arguments"]},
                }
            ],
        }
        tool = {"role": "tool", "tool_call_id": call["id"], "content": '{"balance": 42}'}
        follow_up = await collect(client, messages=[*MESSAGES, assistant, tool])

    assert text_of(follow_up) == "Your balance is 42 dollars."
    first, second = server.requests
    assert first.messages == MESSAGES
    assert second.messages == [*MESSAGES, assistant, tool]


async def test_non_streaming_answer_is_one_chat_completion(server: FakeOpenAIServer) -> None:
    server.add_replies("Plain answer.", ScriptedReply(text="Checking.", tool_calls=[VERIFY]))
    async with azure_client(server) as client:
        text = await client.chat.completions.create(model="d", messages=MESSAGES)
        tools = await client.chat.completions.create(model="d", messages=MESSAGES)

    assert text.object == "chat.completion"
    assert text.choices[0].message.content == "Plain answer."
    assert text.choices[0].finish_reason == "stop"
    assert text.usage is not None and text.usage.total_tokens > 0
    assert text.model_extra is not None and "prompt_filter_results" in text.model_extra
    message = tools.choices[0].message
    assert message.content == "Checking."
    assert tools.choices[0].finish_reason == "tool_calls"
    assert message.tool_calls is not None
    (call,) = message.tool_calls
    assert call.type == "function"
    assert call.function.name == "verify_identity"
    assert json.loads(call.function.arguments) == VERIFY.arguments
    assert [r.stream for r in server.requests] == [False, False]


# ------------------------------------------------------------------------------ usage


async def test_include_usage_adds_a_final_usage_chunk_without_choices(
    server: FakeOpenAIServer,
) -> None:
    server.add_replies("Four words of text.")
    async with azure_client(server) as client:
        chunks = await collect(client, model="d", stream_options={"include_usage": True})

    last = chunks[-1][1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.prompt_tokens == 9  # words of the two messages
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    assert all(c.usage is None for _, c in chunks[:-1])
    assert text_of(chunks) == "Four words of text."
    assert finish_reasons(chunks) == ["stop"]
    assert server.requests[0].include_usage


async def test_stream_options_without_stream_is_rejected(server: FakeOpenAIServer) -> None:
    server.add_replies("Unused.")
    async with openai_client(server) as client:
        with pytest.raises(openai.BadRequestError, match="stream_options"):
            await client.chat.completions.create(
                model="m", messages=MESSAGES, stream_options={"include_usage": True}
            )
    assert server.replies_left == 1


# ------------------------------------------------------------------------------ faults


async def test_rate_limit_is_retried_after_retry_after(server: FakeOpenAIServer) -> None:
    server.add_replies("After the wait.")
    server.inject(RateLimited(retry_after_s=0.5))
    async with azure_client(server, max_retries=1) as client:
        chunks = await collect(client, model="d")

    assert text_of(chunks) == "After the wait."
    limited, retried = server.requests
    assert (limited.status, retried.status) == (429, 200)
    assert limited.fault == RateLimited(retry_after_s=0.5) and retried.fault is None
    assert 0.45 <= retried.received_at - limited.received_at < 1.5
    assert (
        limited.headers["x-stainless-retry-count"],
        retried.headers["x-stainless-retry-count"],
    ) == (
        "0",
        "1",
    )


async def test_rate_limit_error_reaches_the_client_with_azure_body_and_header(
    server: FakeOpenAIServer,
) -> None:
    server.add_replies("Not given.")
    server.inject(RateLimited(retry_after_s=2))
    async with azure_client(server) as client:
        with pytest.raises(openai.RateLimitError) as raised:
            await collect(client, model="d")

    assert raised.value.status_code == 429
    assert raised.value.response.headers["retry-after"] == "2"
    assert isinstance(raised.value.body, dict)
    assert raised.value.body["code"] == "429"
    assert "retry after 2 seconds" in raised.value.body["message"]
    assert server.replies_left == 1


async def test_server_error_raises_without_retries_and_is_retried_with_them(
    server: FakeOpenAIServer,
) -> None:
    server.add_replies("Second time lucky.")
    server.inject(ServerError(status=503), at=0)
    server.inject(ServerError(), at=1)
    async with openai_client(server) as client:
        with pytest.raises(openai.InternalServerError) as raised:
            await collect(client)
    assert raised.value.status_code == 503
    async with openai_client(server, max_retries=1) as client:
        chunks = await collect(client)

    assert text_of(chunks) == "Second time lucky."
    assert [r.status for r in server.requests] == [503, 500, 200]


async def test_cut_stream_raises_in_the_client_after_the_chunks_sent(
    server: FakeOpenAIServer,
) -> None:
    server.add_replies("one two three four five", "Whole answer.")
    server.inject(CutStream(after_chunks=3))
    received: list[ChatCompletionChunk] = []
    async with openai_client(server) as client:
        stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
        with pytest.raises(openai.APIConnectionError):
            async for chunk in stream:
                received.append(chunk)
        chunks = await collect(client)

    assert [c.choices[0].delta.content for c in received] == ["", "one", " two"]
    assert text_of(chunks) == "Whole answer."
    assert [(r.status, r.fault) for r in server.requests] == [
        (200, CutStream(after_chunks=3)),
        (200, None),
    ]


async def test_cut_non_streaming_answer_raises_in_the_client(server: FakeOpenAIServer) -> None:
    server.add_replies("Lost.")
    server.inject(CutStream(after_chunks=0))
    async with openai_client(server) as client:
        with pytest.raises(openai.APIConnectionError):
            await client.chat.completions.create(model="m", messages=MESSAGES)
    assert server.replies_left == 0


async def test_slow_first_token_delays_only_its_request(server: FakeOpenAIServer) -> None:
    server.add_replies("Fast.", "Slow.")
    server.inject(SlowFirstToken(ttft_ms=300), at=1)
    async with openai_client(server) as client:
        sent = _now()
        fast = await collect(client)
        fast_at = fast[1][0] - sent
        sent = _now()
        slow = await collect(client)
        slow_at = slow[1][0] - sent

    assert (text_of(fast), text_of(slow)) == ("Fast.", "Slow.")
    assert fast_at < 0.2
    assert slow_at >= 0.3


async def test_wrong_key_is_answered_401_and_consumes_nothing(server: FakeOpenAIServer) -> None:
    server.add_replies("For the right key.")
    server.inject(ServerError())
    async with openai_client(server, api_key="wrong") as client:
        with pytest.raises(openai.AuthenticationError) as raised:
            await collect(client)
    assert isinstance(raised.value.body, dict) and raised.value.body["code"] == "invalid_api_key"
    async with azure_client(server, api_key="wrong") as client:
        with pytest.raises(openai.AuthenticationError) as azure_raised:
            await collect(client, model="d")
    assert isinstance(azure_raised.value.body, dict) and azure_raised.value.body["code"] == "401"

    assert [(r.status, r.api_key_present, r.api_key_valid) for r in server.requests] == [
        (401, True, False),
        (401, True, False),
    ]
    assert server.replies_left == 1
    async with openai_client(server) as client:  # the one-shot fault is still pending
        with pytest.raises(openai.InternalServerError):
            await collect(client)
        assert text_of(await collect(client)) == "For the right key."


async def test_azure_accepts_a_bearer_token_as_from_entra_id(server: FakeOpenAIServer) -> None:
    server.add_replies("Token accepted.")
    async with AsyncAzureOpenAI(
        azure_endpoint=server.azure_endpoint,
        api_version=API_VERSION,
        azure_ad_token_provider=lambda: server.api_key,
        max_retries=0,
    ) as client:
        chunks = await collect(client, model="d")
    assert text_of(chunks) == "Token accepted."
    assert server.requests[0].api_key_valid


async def test_azure_key_on_the_openai_route_is_not_accepted(server: FakeOpenAIServer) -> None:
    async with AsyncOpenAI(
        base_url=server.base_url,
        api_key="unused",
        default_headers={"api-key": server.api_key, "Authorization": ""},
        max_retries=0,
    ) as client:
        with pytest.raises(openai.AuthenticationError):
            await collect(client)
    (request,) = server.requests
    assert (request.api_key_present, request.api_key_valid) == (False, False)


async def test_exhausted_script_answers_500_that_the_sdk_does_not_retry(
    server: FakeOpenAIServer,
) -> None:
    async with openai_client(server, max_retries=2) as client:
        with pytest.raises(openai.InternalServerError, match="script exhausted"):
            await collect(client)
    assert len(server.requests) == 1
    assert server.errors == ["reply script exhausted at request 0"]


async def test_responder_failure_is_reported() -> None:
    def respond(body: dict[str, Any]) -> str:
        raise KeyError("nope")

    async with FakeOpenAIServer(responder=respond) as server, openai_client(server) as client:
        with pytest.raises(openai.InternalServerError):
            await collect(client)
    assert server.errors == ["responder raised at request 0: KeyError: 'nope'"]


async def test_unknown_route_is_recorded_and_answered_404(server: FakeOpenAIServer) -> None:
    async with AsyncOpenAI(base_url=server.url, api_key=server.api_key, max_retries=0) as client:
        with pytest.raises(openai.NotFoundError):
            await collect(client)
    (request,) = server.requests
    assert (request.path, request.surface, request.status) == ("/chat/completions", None, 404)


# ------------------------------------------------------------------------------ lifecycle


def test_invalid_arguments_are_all_listed() -> None:
    with pytest.raises(ValueError) as raised:
        FakeOpenAIServer(["a"], responder=lambda body: "b", ttft_ms=-1, chunk_words=0)
    message = str(raised.value)
    for part in ("not both", "ttft_ms must be >= 0 (got -1)", "chunk_words must be >= 1 (got 0)"):
        assert part in message


async def test_close_cuts_a_stream_in_flight_promptly_and_leaves_no_tasks() -> None:
    async with no_leaked_tasks():
        server = FakeOpenAIServer(["Never finished."], ttft_ms=30_000)
        await server.start()
        async with openai_client(server) as client:
            stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
            started = _now()
            await server.close()
            assert _now() - started < 1.0
            with pytest.raises(openai.APIConnectionError):
                async for _ in stream:
                    pass
            with pytest.raises(openai.APIConnectionError):
                await collect(client)
        await server.close()


# ------------------------------------------------------------------------------ pipecat


def _context(**kwargs: Any) -> LLMContext:
    return LLMContext(messages=[{"role": "user", "content": "What is my balance?"}], **kwargs)


async def run_llm(
    llm: OpenAILLMService, context: LLMContext, *, after: Sequence[Any] = (), sleep_s: float = 0
) -> tuple[FrameRecorder, list[Frame]]:
    """Send one context through ``llm``; what came out of it downstream, and what went up."""
    recorder = FrameRecorder()
    frames: list[Frame] = [LLMContextFrame(context=context)]
    if sleep_s:
        frames.append(SleepFrame(sleep_s))
    try:
        _, up = await run_test(Pipeline([llm, recorder, *after]), frames_to_send=frames)
    finally:
        # pipecat never closes the service's AsyncOpenAI client; its pooled sockets would
        # otherwise stay open until garbage collection.
        await llm._client.close()
    return recorder, list(up)


def texts(recorder: FrameRecorder) -> list[str]:
    return [f.text for f in recorder.of_type(LLMTextFrame)]


async def test_pipecat_openai_llm_service_streams_the_scripted_text() -> None:
    async with FakeOpenAIServer(["Your balance is 42 dollars."], ttft_ms=50) as server:
        llm = OpenAILLMService(
            api_key=server.api_key,
            base_url=server.base_url,
            settings=OpenAILLMService.Settings(model="gpt-4o-mini", temperature=0.3, max_tokens=80),
        )
        recorder, _ = await run_llm(llm, _context())

    assert texts(recorder) == ["Your", " balance", " is", " 42", " dollars."]
    kinds = [
        type(r.frame)
        for r in recorder.records
        if isinstance(r.frame, LLMFullResponseStartFrame | LLMTextFrame | LLMFullResponseEndFrame)
    ]
    assert kinds == [LLMFullResponseStartFrame, *[LLMTextFrame] * 5, LLMFullResponseEndFrame]
    (request,) = server.requests
    assert request.path == "/v1/chat/completions"
    assert (request.model, request.temperature, request.max_tokens) == ("gpt-4o-mini", 0.3, 80)
    assert request.stream and request.include_usage
    assert request.messages == [{"role": "user", "content": "What is my balance?"}]
    assert request.headers["user-agent"].startswith("AsyncOpenAI/Python")


async def test_pipecat_openai_llm_service_sends_unset_settings_as_absent() -> None:
    async with FakeOpenAIServer(["Hi."]) as server:
        llm = OpenAILLMService(api_key=server.api_key, base_url=server.base_url)
        await run_llm(llm, _context())
    body = server.requests[0].body
    assert set(body) == {"model", "messages", "stream", "stream_options"}
    assert body["model"] == "gpt-4.1"


async def test_pipecat_llm_error_becomes_an_error_frame_after_the_sdk_retries() -> None:
    async with FakeOpenAIServer(["Unused."]) as server:
        for index in range(3):
            server.inject(ServerError(), at=index)
        llm = OpenAILLMService(api_key=server.api_key, base_url=server.base_url)
        recorder, up = await run_llm(llm, _context())

    # OpenAILLMService leaves the SDK's default of two retries in place.
    assert [r.status for r in server.requests] == [500, 500, 500]
    assert texts(recorder) == []
    (error,) = [f for f in up if isinstance(f, ErrorFrame)]
    assert "500" in error.error
    assert server.replies_left == 1


async def test_pipecat_openai_llm_service_tool_call_round_trip() -> None:
    def respond(body: dict[str, Any]) -> ScriptedReply | str:
        last = body["messages"][-1]
        if last["role"] == "tool":
            return f"Verified: {last['content']}."
        return ScriptedReply(text="One moment.", tool_calls=[VERIFY])

    tools = ToolsSchema(
        standard_tools=[
            FunctionSchema(
                name="verify_identity",
                description="Check the caller's account and PIN.",
                properties={"account": {"type": "string"}, "pin": {"type": "array"}},
                required=["account"],
            )
        ]
    )
    context = _context(tools=tools)
    _, assistant = LLMContextAggregatorPair(context)
    seen: list[dict[str, Any]] = []

    async def verify_identity(params: FunctionCallParams) -> None:
        seen.append(dict(params.arguments))
        await params.result_callback({"ok": True})

    async with FakeOpenAIServer(responder=respond) as server:
        llm = OpenAILLMService(api_key=server.api_key, base_url=server.base_url)
        llm.register_function("verify_identity", verify_identity)
        recorder, _ = await run_llm(llm, context, after=[assistant], sleep_s=0.5)

    assert seen == [VERIFY.arguments]
    assert "".join(texts(recorder)) == 'One moment.Verified: {"ok": true}.'
    first, second = server.requests
    assert [t["function"]["name"] for t in first.tools] == ["verify_identity"]
    *_, call, result = second.messages
    assert call["role"] == "assistant"
    (tool_call,) = call["tool_calls"]
    assert tool_call["id"].startswith("call_fake_")
    assert tool_call["function"]["name"] == "verify_identity"
    assert json.loads(tool_call["function"]["arguments"]) == VERIFY.arguments
    assert result == {"role": "tool", "tool_call_id": tool_call["id"], "content": '{"ok": true}'}


async def test_pipecat_azure_llm_service_on_the_dated_surface() -> None:
    async with FakeOpenAIServer(["Hello from Azure."]) as server:
        llm = AzureLLMService(
            endpoint=server.azure_endpoint,
            api_key=server.api_key,
            settings=AzureLLMService.Settings(model="my-deployment"),
        )
        recorder, _ = await run_llm(llm, _context())

    assert "".join(texts(recorder)) == "Hello from Azure."
    (request,) = server.requests
    assert request.path == "/openai/deployments/my-deployment/chat/completions"
    assert request.api_version == "2025-04-01-preview"
    assert request.api_key_valid and request.include_usage


async def test_pipecat_azure_llm_service_on_the_v1_surface() -> None:
    async with FakeOpenAIServer(["Hello from v1."]) as server:
        llm = AzureLLMService(
            endpoint=server.azure_v1_endpoint,
            api_key=server.api_key,
            settings=AzureLLMService.Settings(model="my-deployment"),
        )
        recorder, _ = await run_llm(llm, _context())

    assert "".join(texts(recorder)) == "Hello from v1."
    (request,) = server.requests
    assert (request.path, request.surface) == ("/openai/v1/chat/completions", "azure_v1")
    assert request.model == "my-deployment"
    assert request.api_key_valid and request.api_version is None
