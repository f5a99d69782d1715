"""The azure_openai and openai LLM providers, through the agents router, against the fake server.

The real ``openai`` SDK (inside pipecat's services) talks HTTP to
:class:`~voicebot.testing.openai_server.FakeOpenAIServer` on the same event loop, so requests,
streaming, tool calls, retries and timeouts are the SDK's own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pipecat.frames.frames import TTSTextFrame
from pipecat.processors.aggregators.llm_response_universal import LLMUserAggregator

from voicebot.agents.router import AgentRouter
from voicebot.build.loader import PipelineSpec, load_pipeline
from voicebot.build.registry import DEFAULT
from voicebot.services.openai import (
    SharedClientAzureLLMService,
    SharedClientOpenAILLMService,
    _entra_token_provider,
)
from voicebot.services.resources import SharedResources
from voicebot.testing import CallHarness, ScriptedReply, ScriptedToolCall
from voicebot.testing.openai_server import (
    FakeOpenAIServer,
    RateLimited,
    ServerError,
    SlowFirstToken,
)

REPO = Path(__file__).resolve().parents[2]
BANK = REPO / "pipelines" / "bank.yaml"
CALLER = [
    "I need help with my bill.",
    "My account number is 12345678.",
    "My PIN is 1234.",
    "What is my balance?",
]
SCRIPT: list[str | ScriptedReply] = [
    "Sure, I can help with your bill. What is your account number?",
    "Thanks. And your four-digit PIN?",
    ScriptedReply(
        tool_calls=[
            ScriptedToolCall(
                name="verify_identity",
                arguments={"account_number": "12345678", "pin": "1234", "goal": "billing"},
            )
        ]
    ),
    ScriptedReply(tool_calls=[ScriptedToolCall(name="get_balance")]),
    "Your balance is $1,234.56.",
]
APOLOGY = "Sorry, I'm having trouble right now. Could you say that again?"


def bank(llm: dict[str, Any]) -> PipelineSpec:
    return load_pipeline(BANK, env={}).with_provider("agents", DEFAULT, {"llm": llm})


def openai_settings(server: FakeOpenAIServer, **extra: Any) -> dict[str, Any]:
    return {
        "provider": "openai",
        "base_url": server.base_url,
        "api_key": server.api_key,
        "model": "llama3.1",
        **extra,
    }


def azure_settings(server: FakeOpenAIServer, **extra: Any) -> dict[str, Any]:
    return {
        "provider": "azure_openai",
        "endpoint": server.azure_endpoint,
        "api_key": server.api_key,
        **extra,
    }


async def converse(call: CallHarness, lines: list[str]) -> None:
    await call.wait(4)
    for line in lines:
        await call.say(line)
        await call.wait(4)


def heard(call: CallHarness) -> str:
    return " ".join(f.text for f in call.of_type(TTSTextFrame))


@pytest.mark.parametrize("settings", [openai_settings, azure_settings], ids=["openai", "azure"])
async def test_the_bank_conversation_through_the_sdk(settings: Any) -> None:
    async with (
        FakeOpenAIServer(SCRIPT, ttft_ms=200) as server,
        CallHarness(bank(settings(server))) as call,
    ):
        await converse(call, CALLER)
        router = call.processor(AgentRouter)

    assert server.errors == [] and server.replies_left == 0
    assert router.decisions.agent_per_turn == ["auth", "auth", "billing", "billing"]
    assert [(h["from"], h["to"]) for h in router.decisions.handoffs] == [("auth", "billing")]
    assert [r.tool for r in router.decisions.of_kind("tool")] == ["verify_identity", "get_balance"]
    assert {r.engine for r in router.decisions.of_kind("turn", "tool")} == {"llm"}
    said = heard(call)
    assert "You're through to billing, Alex." in said
    assert said.endswith("Your balance is $1,234.56.")

    requests = server.requests
    assert all(r.api_key_valid and r.stream for r in requests)
    first, last = requests[0], requests[-1]
    # auth's prompt and tools, then billing's, with each agent's model settings
    assert first.messages[0]["role"] == "system"
    assert "verify who the caller is" in first.messages[0]["content"]
    assert "ASYNC TOOLS" not in first.messages[0]["content"]  # the LLM waits for tool results
    assert [t["function"]["name"] for t in first.tools] == [
        "verify_identity",
        "transfer_to_billing",
        "transfer_to_support",
        "transfer_to_human",
        "end_call",
    ]
    verify = first.tools[0]["function"]
    assert verify["parameters"]["required"] == ["account_number"]
    assert verify["parameters"]["properties"]["goal"]["enum"] == ["billing", "support"]
    assert "You are the billing agent." in last.messages[0]["content"]
    assert (first.temperature, last.temperature) == (0.2, 0.3)
    # the tool result went back to the LLM in the next request
    assert last.messages[-1]["role"] == "tool"
    assert "1234.56" in last.messages[-1]["content"]
    if settings is azure_settings:
        assert {r.deployment for r in requests} == {"gpt-4o-mini"}
        assert {r.api_version for r in requests} == {"2024-10-21"}
        assert {r.surface for r in requests} == {"azure"}
    else:
        assert {r.model for r in requests} == {"gpt-4o-mini"}  # the agents' deployment
        assert {r.surface for r in requests} == {"openai"}


async def test_rate_limited_requests_are_retried_after_the_servers_delay() -> None:
    async with FakeOpenAIServer(["Hello, how can I help?"]) as server:
        server.inject(RateLimited(retry_after_s=1.0))
        async with CallHarness(bank(openai_settings(server))) as call:
            await converse(call, ["hi"])
    assert [r.status for r in server.requests] == [429, 200]
    gap = server.requests[1].received_at - server.requests[0].received_at
    assert gap >= 1.0
    assert heard(call).endswith("Hello, how can I help?")
    assert APOLOGY not in heard(call)


async def test_a_failing_llm_gets_an_apology_not_silence() -> None:
    async with FakeOpenAIServer(["never reached"]) as server:
        for _ in range(2):
            server.inject(ServerError(status=503))
        async with CallHarness(bank(openai_settings(server, max_retries=1))) as call:
            await converse(call, ["hi"])
            router = call.processor(AgentRouter)
    assert [r.status for r in server.requests] == [503, 503]
    assert heard(call).endswith(APOLOGY)
    (error,) = router.decisions.of_kind("error")
    assert error.engine == "llm" and "503" in error.reason


async def test_a_slow_llm_times_out_into_an_apology() -> None:
    async with FakeOpenAIServer(["too late"]) as server:
        server.inject(SlowFirstToken(ttft_ms=5000))
        settings = openai_settings(server, timeout_secs=1.0, max_retries=0)
        async with CallHarness(bank(settings)) as call:
            await converse(call, ["hi"])
            await call.wait(5)  # the server finishes its slow answer to nobody
    assert heard(call).endswith(APOLOGY)
    assert "too late" not in heard(call)


async def test_calls_share_one_client_per_endpoint() -> None:
    resources = SharedResources()
    clients = []
    async with FakeOpenAIServer(["One.", "Two."]) as server:
        try:
            for call_id in ("a", "b"):
                spec = bank(openai_settings(server))
                # The shared client keeps its connection open after a call: that is the point.
                harness = CallHarness(spec, resources=resources, call_id=call_id, check_tasks=False)
                async with harness as call:
                    await converse(call, ["hi"])
                    clients.append(call.processor(SharedClientOpenAILLMService)._client)
            created = resources.keys()
            assert [k.split(":")[0] for k in created].count("openai-client") == 1
        finally:
            await resources.aclose()
    assert clients[0] is clients[1]
    assert [r.status for r in server.requests] == [200, 200]


async def test_the_plain_llm_processor_runs_on_azure(pipeline_file: Any) -> None:
    async with FakeOpenAIServer(["Your balance is 42 dollars."], ttft_ms=100) as server:
        path = pipeline_file(
            "name: plain\ntransport: acs\nprocessors:\n"
            "  - stt: {provider: fake}\n"
            "  - llm:\n"
            "      provider: azure_openai\n"
            f"      endpoint: {server.azure_endpoint}\n"
            f"      api_key: {server.api_key}\n"
            "      deployment: my-gpt\n"
            "      system_prompt: You are a bank assistant.\n"
            "  - tts: {provider: fake}\n"
        )
        async with CallHarness(path) as call:
            await call.say("What is my balance?")
            await call.wait(3)
            service = call.processor(SharedClientAzureLLMService)
            context = call.processor(LLMUserAggregator).context
    assert call.replies == ["Your balance is 42 dollars."]
    (request,) = server.requests
    assert request.deployment == "my-gpt" and request.api_key_valid
    # the prompt is the service's system instruction (pipecat 1.9+), not a context message
    assert request.messages[0] == {"role": "system", "content": "You are a bank assistant."}
    assert service.settings.system_instruction == "You are a bank assistant."
    assert [m["role"] for m in context.get_messages() if isinstance(m, dict)] == [
        "user",
        "assistant",
    ]


def test_no_key_without_azure_identity_says_what_to_do() -> None:
    try:
        import azure.identity  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="set api_key, or `pip install azure-identity`"):
            _entra_token_provider()
    else:
        assert callable(_entra_token_provider())


async def test_an_empty_endpoint_means_the_offline_policy() -> None:
    spec = load_pipeline(BANK, env={"AZURE_OPENAI_ENDPOINT": "", "AZURE_OPENAI_API_KEY": "k"})
    async with CallHarness(spec) as call:
        await converse(call, CALLER[:1])
        router = call.processor(AgentRouter)
    assert router.session.has_llm is False
    assert [r.engine for r in router.decisions.of_kind("turn")] == ["policy"]
