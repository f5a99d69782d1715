"""A call's events from its transcript record and telemetry observer (``CallEvents``), frame by
frame: exactly which events each frame the record and the observer already see publishes."""

from __future__ import annotations

from typing import Any

from pipecat.frames.frames import (
    ErrorFrame,
    InputAudioRawFrame,
    InterimTranscriptionFrame,
    TranscriptionFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
)
from pipecat.observers.base_observer import FramePushed
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.utils.text.base_text_aggregator import TextType

from voicebot.agents.decisions import AgentDecisionFrame, DecisionRecord
from voicebot.events import CallEvents, EventBus
from voicebot.processors.transcript import CallTranscript, TranscriptRecorder
from voicebot.telemetry.observer import CallObserver


def published(bus: EventBus) -> list[dict[str, Any]]:
    """What the bus queued, without ``at`` and ``worker``."""
    assert bus._queue is not None
    events = []
    while not bus._queue.empty():
        data = bus._queue.get_nowait().model_dump()
        events.append({k: v for k, v in data.items() if k not in ("at", "worker", "call_id")})
    return events


def decision(kind: str, agent: str, **fields: Any) -> AgentDecisionFrame:
    return AgentDecisionFrame(call_id="c1", record=DecisionRecord(kind, agent, 1, 0.0, **fields))  # type: ignore[arg-type]


def text(words: str) -> TTSTextFrame:
    return TTSTextFrame(words, TextType.SENTENCE, context_id="r1")


async def test_transcripts_decisions_and_the_call_become_events() -> None:
    bus = EventBus(worker="w1")
    record = CallTranscript("c1")
    events = CallEvents(bus, "c1", source="browser", pipeline="bank")
    events.attach(record)
    recorder = TranscriptRecorder(record)
    events.started()
    for frame in (
        decision("enter", "auth", reason="initial"),
        TTSStartedFrame(context_id="r1"),
        text("Welcome."),
        text("Your account number?"),
        TTSStoppedFrame(context_id="r1"),
        InputAudioRawFrame(audio=b"\x00\x00", sample_rate=16000, num_channels=1),
        InterimTranscriptionFrame("My account", "caller", "t"),
        TranscriptionFrame("My account is 12345678.", "caller", "t"),
        decision("tool", "auth", tool="verify_identity", args={"pin": "****"}),
        decision("handoff", "auth", target="billing", reason="verified"),
        decision("enter", "billing", reason="handoff"),
    ):
        recorder.record(frame)
    events.ended("completed")

    assert published(bus) == [
        {"type": "call_started", "source": "browser", "pipeline": "bank"},
        {"type": "transcript", "role": "bot", "text": "Welcome.", "final": False,
         "agent": "auth", "utterance": 1},
        {"type": "transcript", "role": "bot", "text": "Welcome. Your account number?",
         "final": False, "agent": "auth", "utterance": 1},
        {"type": "transcript", "role": "bot", "text": "Welcome. Your account number?",
         "final": True, "agent": "auth", "utterance": 1},
        {"type": "transcript", "role": "user", "text": "My account", "final": False,
         "agent": "auth", "utterance": 2},
        {"type": "transcript", "role": "user", "text": "My account is 12345678.", "final": True,
         "agent": "auth", "utterance": 2},
        {"type": "tool_call", "agent": "auth", "tool": "verify_identity", "args": {"pin": "****"},
         "turn": 1},
        {"type": "handoff", "from_agent": "auth", "to_agent": "billing", "reason": "verified",
         "turn": 1},
        {"type": "call_ended", "outcome": "completed", "error": None},
    ]  # fmt: skip
    assert [u.text for u in record.utterances] == [
        "Welcome. Your account number?",
        "My account is 12345678.",
    ]


async def test_a_bot_response_cut_short_is_final_when_the_caller_speaks() -> None:
    bus = EventBus(worker="w1")
    record = CallTranscript("c1")
    CallEvents(bus, "c1").attach(record)
    recorder = TranscriptRecorder(record)
    for frame in (TTSStartedFrame(context_id="r1"), text("Your balance"), TranscriptionFrame("Stop", "u", "t")):
        recorder.record(frame)
    assert [(e["role"], e["text"], e["final"]) for e in published(bus)] == [
        ("bot", "Your balance", False),
        ("bot", "Your balance", True),
        ("user", "Stop", True),
    ]


async def test_error_frames_seen_by_the_observer_become_error_events() -> None:
    bus = EventBus(worker="w1")
    observer = CallObserver("c1")
    events = CallEvents(bus, "c1")
    events.attach(CallTranscript("c1"), observer)
    processor = FrameProcessor()
    frame = ErrorFrame("speech service unreachable")
    await observer.on_push_frame(
        FramePushed(processor, processor, frame, FrameDirection.UPSTREAM, 0)
    )
    events.ended("error", "LLM failed")  # the call's own error, which no frame reported
    assert published(bus) == [
        {"type": "error", "source": "pipeline", "message": "speech service unreachable",
         "fatal": False},
        {"type": "error", "source": "pipeline", "message": "LLM failed", "fatal": True},
        {"type": "call_ended", "outcome": "error", "error": "LLM failed"},
    ]  # fmt: skip


async def test_an_llm_failure_is_one_error_event_and_a_refused_handoff_is_another() -> None:
    bus = EventBus(worker="w1")
    events = CallEvents(bus, "c1")
    # The router notes an LLM failure as a decision; its ErrorFrame is what gets published
    # (test above), so the decision adds no second event.
    events.on_decision(DecisionRecord("error", "auth", 1, 0.0, engine="llm", reason="429"))
    events.on_decision(DecisionRecord("error", "auth", 1, 0.0, reason="cannot hand over"))
    assert published(bus) == [
        {"type": "error", "source": "agents", "message": "cannot hand over", "fatal": False}
    ]
