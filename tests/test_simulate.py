"""``voicebot call``: over real sockets to an in-process or running server, and on the harness."""

from __future__ import annotations

import asyncio
import json
import sys
import wave
from collections.abc import Callable
from pathlib import Path

import pytest

from voicebot.acs.tokens import verify
from voicebot.agents.decisions import DecisionRecord
from voicebot.cli import build_parser
from voicebot.processors.transcript import CallTranscript
from voicebot.simulate import (
    ANSWER_TIMEOUT_MS,
    MAX_LISTEN_MS,
    QUIET_MS,
    LocalServer,
    _keep_listening,
    _texts_by_turn,
    call_over_socket,
    local_settings,
    remote_media_url,
    simulate,
)
from voicebot.testing import sample

REPO = Path(__file__).resolve().parents[1]

QUICK_PIPELINE = """\
name: quick-phone
transport: acs
audio: {in_rate: 16000, out_rate: 16000}
call: {idle_timeout_secs: 30}
processors:
  - vad: {provider: silero, stop_secs: 0.2}
  - stt: {provider: fake, final_delay_ms: 100, transcripts: ["What is my balance?"]}
  - llm:
      provider: fake
      ttft_ms: 100
      greeting: Hi.
      replies: ["Your balance is 42 dollars."]
  - tts: {provider: fake, first_byte_ms: 50, ms_per_char: 20}
"""
"""A short call: a 60 ms greeting, one answer of 540 ms (27 characters at 20 ms each)."""
ANSWER_MS = 540.0


@pytest.fixture
def quick_pipeline(pipeline_file: Callable[[str, str], Path]) -> Path:
    return pipeline_file(QUICK_PIPELINE, "quick.yaml")


# --- when the caller speaks again ---------------------------------------------------------------


def test_the_caller_listens_at_least_the_pause() -> None:
    assert _keep_listening(900, 0, 0, min_ms=1000, timeout_ms=0, bot_audio=[])
    assert not _keep_listening(1000, 0, 0, min_ms=1000, timeout_ms=0, bot_audio=[])


def test_the_caller_waits_for_an_answer_to_begin_then_to_end() -> None:
    since = 1000.0
    # No answer yet: wait until the answer timeout.
    assert _keep_listening(since + ANSWER_TIMEOUT_MS - 1, since, since, 0, ANSWER_TIMEOUT_MS, [])
    assert not _keep_listening(since + ANSWER_TIMEOUT_MS, since, since, 0, ANSWER_TIMEOUT_MS, [])
    # Audio from before ``since`` is not an answer.
    assert not _keep_listening(7000, since, since, 0, 500, [(0.0, 900.0)])
    # An answer: wait until it has been quiet for QUIET_MS.
    answer = [(1500.0, 1520.0), (1520.0, 3000.0)]
    assert _keep_listening(3000 + QUIET_MS - 1, since, since, 0, 500, answer)
    assert not _keep_listening(3000 + QUIET_MS, since, since, 0, 500, answer)


def test_the_caller_never_listens_longer_than_the_cap() -> None:
    endless = [(0.0, 10 * MAX_LISTEN_MS)]
    assert not _keep_listening(MAX_LISTEN_MS, 0, 0, 0, 500, endless)


def test_texts_are_split_by_turn_start() -> None:
    record = CallTranscript("c")
    record.decided(DecisionRecord("enter", "auth", turn=0, at=0.0, reason="initial"))
    record.bot_said("greet", "Hello.", at=1.0)
    record.user_said("My bill.", at=12.0)
    record.bot_said("a1", "Sure.", at=13.0)
    record.bot_said("a1", "One moment.")
    record.decided(DecisionRecord("handoff", "auth", turn=1, at=13.5, target="billing"))
    record.decided(DecisionRecord("enter", "billing", turn=1, at=13.6, reason="announced"))
    record.bot_said("a2", "Billing here.", at=14.0)
    record.user_said("Thanks.", at=25.0)
    greeting, turns = _texts_by_turn(record, [10.0, 20.0, 30.0])
    assert greeting == "Hello."
    assert turns == [
        ("My bill.", "billing", "Sure. One moment. Billing here."),
        ("Thanks.", None, None),
        (None, None, None),
    ]
    assert [u.agent for u in record.utterances if u.role == "bot"] == ["auth", "auth", "billing"]
    assert record.handoffs == [
        {
            "from": "auth",
            "to": "billing",
            "reason": "",
            "mode": "announced",
            "turn": 1,
            "latency_ms": None,
        }
    ]


# --- remote servers ------------------------------------------------------------------------------


def test_a_signed_url_is_used_as_is() -> None:
    url = "ws://bot.example/api/v1/media/stream?call_id=abc&token=1.sig"
    assert remote_media_url(url, "ignored") == (url, "abc")


def test_a_base_url_is_signed_with_the_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOICEBOT_SIGNING_SECRET", "s3cret")
    url, call_id = remote_media_url("ws://127.0.0.1:9", "sim-1")
    assert call_id == "sim-1"
    assert url.startswith("ws://127.0.0.1:9/api/v1/media/stream?call_id=sim-1&token=")
    assert verify(b"s3cret", "sim-1", url.rpartition("token=")[2]) is None


def test_a_base_url_without_a_secret_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VOICEBOT_SIGNING_SECRET", raising=False)
    with pytest.raises(ValueError, match="VOICEBOT_SIGNING_SECRET"):
        remote_media_url("ws://127.0.0.1:9", "sim-1")


# --- whole calls ---------------------------------------------------------------------------------


async def test_fast_mode_runs_the_shipped_call_on_a_virtual_clock() -> None:
    report = await simulate(
        REPO / "pipelines" / "scripted_phone.yaml",
        [sample("help_bill"), sample("balance")],
        pause_secs=2.5,
        fast=True,
    )
    assert report.greeting == "Hello, thanks for calling. How can I help you today?"
    assert [(t.user_text, t.agent, t.bot_text) for t in report.turns] == [
        (
            "I need help with my bill.",
            None,
            "Sure, I can help with your bill. What would you like to know?",
        ),
        ("What is my balance?", None, "Your balance is 42 dollars and 17 cents."),
    ]
    assert [t.bot_audio_ms for t in report.turns] == [3000.0, 2000.0]  # 50 ms per character
    assert all(t.latency_ms is not None and 300 < t.latency_ms < 2000 for t in report.turns)
    assert report.outcome == "completed" and report.texts_available


@pytest.mark.slow
async def test_fast_mode_reports_agents_and_handoffs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AZURE_OPENAI_ENDPOINT", raising=False)  # the agents' offline policy
    report = await simulate(
        REPO / "pipelines" / "bank.yaml", [sample("balance")] * 4, pause_secs=1.0, fast=True
    )
    assert [t.agent for t in report.turns] == ["auth", "auth", "billing", "billing"]
    assert [(h["from"], h["to"], h["turn"]) for h in report.handoffs] == [("auth", "billing", 3)]
    assert all(t.user_text and t.bot_text for t in report.turns)


@pytest.mark.slow
def test_call_json_over_a_socket(
    quick_pipeline: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bot.wav"
    args = build_parser().parse_args(
        ["call", "--json", "--pipeline", str(quick_pipeline), "--audio", str(sample("balance"))]
        + ["--pause", "0.3", "--out", str(out)]
    )
    assert args.func(args) == 0
    report = json.loads(capsys.readouterr().out)

    assert report["call_id"].startswith("sim-")
    [turn] = report["turns"]
    assert turn["user_text"] == "What is my balance?"
    assert turn["bot_text"] == "Your balance is 42 dollars."
    assert turn["agent"] is None
    assert 300 < turn["latency_ms"] < 3000
    assert turn["bot_audio_ms"] == ANSWER_MS
    assert report["greeting"] == "Hi."
    assert report["handoffs"] == []
    assert report["texts_available"] is True
    assert report["outcome"] == "cancelled"  # the caller hung up
    with wave.open(str(out)) as wav:
        heard_ms = wav.getnframes() / wav.getframerate() * 1000
    assert heard_ms > 1400 + ANSWER_MS  # the caller's turn, then the answer


@pytest.mark.slow
async def test_a_running_server_gives_timings_but_no_texts(quick_pipeline: Path) -> None:
    async with LocalServer(local_settings(quick_pipeline)) as server:
        report = await call_over_socket(
            server.media_url("remote-1"), [sample("balance")], call_id="remote-1", pause_secs=0.3
        )
    assert report.texts_available is False
    assert report.greeting is None and report.outcome is None
    [turn] = report.turns
    assert (turn.user_text, turn.agent, turn.bot_text) == (None, None, None)
    assert turn.latency_ms is not None and 300 < turn.latency_ms < 3000
    assert turn.bot_audio_ms == ANSWER_MS
    assert report.error is None


async def test_a_refused_call_is_reported_as_an_error(quick_pipeline: Path) -> None:
    async with LocalServer(local_settings(quick_pipeline)) as server:
        forged = server.media_url("other").replace("call_id=other", "call_id=mine")
        report = await call_over_socket(forged, [sample("balance")], call_id="mine", pause_secs=0.3)
    assert report.error == "the server closed the call: 1008 invalid token signature"
    assert report.turns == []


@pytest.mark.slow
async def test_the_real_cli_in_a_subprocess(quick_pipeline: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "voicebot.cli",
        "call",
        "--json",
        "--pipeline",
        str(quick_pipeline),
        "--audio",
        str(sample("balance")),
        "--pause",
        "0.3",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, stderr.decode()[-2000:]
    report = json.loads(stdout)
    [turn] = report["turns"]
    assert (turn["user_text"], turn["bot_text"]) == (
        "What is my balance?",
        "Your balance is 42 dollars.",
    )
    assert 300 < turn["latency_ms"] < 3000
