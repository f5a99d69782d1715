"""A simulated call's trace: one trace, a span per turn, STT/LLM/TTS/tool children, decisions.

Calls run through CallHarness on the virtual clock with scripted services and the caller's speech
reported as a VAD would (``speak``), so every declared latency shows up exactly in the spans'
time-to-first-byte attributes. The bank call runs its real VAD.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from telemetry_support import STOP_SECS, by_name, children, observe, speak

from voicebot.build.loader import load_pipeline
from voicebot.telemetry import Telemetry, Tracing, hash_caller
from voicebot.testing import CallHarness, FakeLLMParams, FakeSTTParams, FakeTTSParams, sample

REPO = Path(__file__).resolve().parents[2]
BANK = REPO / "pipelines" / "bank.yaml"
CALLER = "+14255550123"
STT_MS, LLM_MS, TTS_MS = 120.0, 250.0, 90.0


def demo_call(pipeline: Path, **kwargs: object) -> CallHarness:
    return CallHarness(
        pipeline,
        stt=FakeSTTParams(transcripts=["What is my balance?", "Thanks."], final_delay_ms=STT_MS),
        llm=FakeLLMParams(replies=["It is 42 dollars.", "Bye."], ttft_ms=LLM_MS),
        tts=FakeTTSParams(first_byte_ms=TTS_MS),
        **kwargs,  # type: ignore[arg-type]
    )


async def two_turns(call: CallHarness) -> None:
    for _ in range(2):
        await speak(call)
        await call.wait(3)


async def test_a_call_is_one_trace_with_a_span_per_turn_and_exact_service_latencies(
    telemetry: Telemetry, exporter: InMemorySpanExporter, scripted: Path
) -> None:
    harness = demo_call(scripted, call_id="call-1")
    observer = observe(harness, telemetry, correlation_id="corr-1", caller=CALLER, pipeline="demo")
    async with harness as call:
        await two_turns(call)
    observer.finish(call.call.outcome)

    spans = exporter.get_finished_spans()
    assert len({s.context.trace_id for s in spans}) == 1
    (root,) = by_name(spans, "call")
    assert root.parent is None
    assert root.attributes is not None
    assert root.attributes["voicebot.call.id"] == "call-1"
    assert root.attributes["voicebot.call.correlation_id"] == "corr-1"
    assert root.attributes["voicebot.call.caller_hash"] == telemetry.caller_hash(CALLER)
    assert root.attributes["voicebot.call.outcome"] == "cancelled"
    assert root.attributes["voicebot.call.turns"] == 2
    # the caller's number is nowhere in the trace, in any form
    dump = json.dumps([dict(s.attributes or {}) for s in spans])
    assert CALLER not in dump and CALLER[1:] not in dump

    turns = by_name(spans, "turn")
    assert [t.attributes["voicebot.turn"] for t in turns] == [1, 2]  # type: ignore[index]
    assert children(spans, root) == turns
    for turn in turns:
        kids = children(spans, turn)
        assert sorted(s.name for s in kids) == ["llm", "stt", "tts"]
        ttfb = {s.name: s.attributes["voicebot.ttfb_ms"] for s in kids}  # type: ignore[index]
        assert ttfb == {"stt": STT_MS, "llm": LLM_MS, "tts": TTS_MS}
        # the turn runs from the end of the caller's speech to the first bot audio
        attrs = turn.attributes
        assert attrs is not None
        assert turn.end_time - turn.start_time == pytest.approx(  # type: ignore[operator]
            attrs["voicebot.latency.voice_to_voice_ms"] * 1e6, abs=1
        )
        # the STT span starts at the VAD's stop: stop_secs after the end of speech
        (stt,) = by_name(kids, "stt")
        assert stt.start_time - turn.start_time == STOP_SECS * 1e9  # type: ignore[operator]
    # content is off by default: nothing anyone said is on a span
    assert "balance" not in dump and "42 dollars" not in dump


async def test_turn_spans_split_the_latency_into_stages_that_add_up(
    telemetry: Telemetry, exporter: InMemorySpanExporter, scripted: Path
) -> None:
    harness = demo_call(scripted)
    observer = observe(harness, telemetry)
    async with harness as call:
        await two_turns(call)
    observer.finish()

    for turn, latency in zip(
        by_name(exporter.get_finished_spans(), "turn"), observer.turns, strict=True
    ):
        attrs = turn.attributes
        assert attrs is not None
        stages = {k: attrs[f"voicebot.latency.{k}_ms"] for k in latency.stages_ms}
        assert stages == latency.stages_ms
        assert (stages["vad"], stages["stt"], stages["llm"], stages["tts"]) == (
            200.0,
            STT_MS,
            LLM_MS,
            TTS_MS,
        )
        assert sum(stages.values()) == pytest.approx(
            attrs["voicebot.latency.voice_to_voice_ms"], abs=1e-9
        )


async def test_content_is_recorded_only_when_enabled(
    exporter: InMemorySpanExporter, scripted: Path
) -> None:
    telemetry = Telemetry(tracing=Tracing.to(exporter), record_content=True)
    harness = demo_call(scripted)
    observer = observe(harness, telemetry)
    async with harness as call:
        await speak(call)
        await call.wait(3)
    observer.finish()

    spans = exporter.get_finished_spans()
    (stt,) = by_name(spans, "stt")
    (llm,) = by_name(spans, "llm")
    (tts,) = by_name(spans, "tts")
    assert stt.attributes["voicebot.transcript"] == "What is my balance?"  # type: ignore[index]
    prompt = json.loads(llm.attributes["gen_ai.input.messages"])  # type: ignore[index, arg-type]
    assert prompt[-1] == {"role": "user", "content": "What is my balance?"}
    assert llm.attributes["gen_ai.output.messages"] == "It is 42 dollars."  # type: ignore[index]
    assert tts.attributes["voicebot.tts.text"] == "It is 42 dollars."  # type: ignore[index]


async def test_agent_decisions_are_span_events_and_tools_are_spans(
    telemetry: Telemetry, exporter: InMemorySpanExporter
) -> None:
    harness = CallHarness(load_pipeline(BANK, env={}))
    observer = observe(harness, telemetry)
    async with harness as call:
        await call.wait(4)  # the greeting
        # the bank's scripted STT hears: bill, account number, PIN, balance
        for audio in ("help_bill", "balance", "hello", "balance"):
            await call.speak(sample(audio))
            await call.wait(4)
    observer.finish()

    spans = exporter.get_finished_spans()
    (root,) = by_name(spans, "call")

    def decisions(span: object) -> list[tuple[str, str]]:
        return [
            (
                str(e.attributes["voicebot.decision.kind"]),
                str(e.attributes["voicebot.decision.agent"]),
            )
            for e in span.events  # type: ignore[attr-defined]
            if e.name == "agent.decision"
        ]

    # before the caller first spoke: the entry agent, on the call span; the greeting's TTS too
    assert decisions(root) == [("enter", "auth")]
    assert [s.name for s in children(spans, root) if s.name != "turn"] == ["tts"]
    turns = by_name(spans, "turn")
    assert [decisions(t) for t in turns] == [
        [("turn", "auth"), ("rule", "auth")],
        [("turn", "auth"), ("rule", "auth")],
        [
            ("turn", "auth"),
            ("rule", "auth"),
            ("tool", "auth"),
            ("handoff", "auth"),
            ("enter", "billing"),
        ],
        [("turn", "billing"), ("rule", "billing"), ("tool", "billing")],
    ]
    tools = [
        (
            str(s.attributes["gen_ai.tool.name"]),
            turns.index(next(t for t in turns if s in children(spans, t))),
        )  # type: ignore[index]
        for s in by_name(spans, "tool")
    ]
    assert tools == [("verify_identity", 2), ("get_balance", 3)]
    # decision arguments (an account number, a PIN) stay off spans without content recording
    assert not any(
        "voicebot.decision.args" in e.attributes
        for s in spans
        for e in s.events  # type: ignore[operator]
    )
    assert all(t.voice_to_voice_ms > 0 for t in observer.turns) and len(observer.turns) == 4


async def test_tracing_off_writes_no_spans_and_starts_no_threads(
    exporter: InMemorySpanExporter, scripted: Path
) -> None:
    telemetry = Telemetry.from_env({})
    assert not telemetry.tracing.enabled and telemetry.tracing.provider is None
    threads = {t.name for t in threading.enumerate()}
    harness = demo_call(scripted)
    observer = observe(harness, telemetry)
    async with harness as call:
        await speak(call)
        await call.wait(3)
    observer.finish()
    await telemetry.aclose()

    # VAD stop_secs; the user turn's 200 ms speech timeout (the STT's 120 ms runs meanwhile);
    # the LLM's first token; three more tokens 10 ms apart to end the sentence; the TTS
    assert [t.voice_to_voice_ms for t in observer.turns] == [
        pytest.approx(200 + 200 + LLM_MS + 3 * 10 + TTS_MS, abs=1e-6)
    ]
    new = {t.name for t in threading.enumerate()} - threads
    assert not [name for name in new if "Otel" in name or "otel" in name]
    assert exporter.get_finished_spans() == ()


def test_caller_hash_is_keyed_and_stable() -> None:
    one = Telemetry(caller_hash_key=b"k1")
    assert one.caller_hash(CALLER) == hash_caller(CALLER, b"k1") == one.caller_hash(f" {CALLER} ")
    assert Telemetry(caller_hash_key=b"k2").caller_hash(CALLER) != one.caller_hash(CALLER)
    assert CALLER not in one.caller_hash(CALLER)
