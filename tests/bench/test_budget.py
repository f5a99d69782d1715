from __future__ import annotations

from pathlib import Path

import pytest

from voicebot.bench.budget import DeclaredLatency, measured_vad_stops
from voicebot.build.loader import load_pipeline
from voicebot.services.silero import SileroParams
from voicebot.testing.wav import sample, write_wav

REPO = Path(__file__).resolve().parents[2]
BENCH_YAML = REPO / "benchmarks" / "pipelines" / "bench.yaml"


def test_reads_the_declared_waits_of_the_bench_pipeline() -> None:
    budget = DeclaredLatency.from_spec(load_pipeline(BENCH_YAML))

    assert budget == DeclaredLatency(
        vad_stop_ms=200, speech_timeout_ms=200, stt_final_ms=150, llm_ttft_ms=300,
        tts_first_byte_ms=150,
    )  # fmt: skip


def test_speech_timeout_and_stt_run_side_by_side_for_voicebot_only() -> None:
    budget = DeclaredLatency(
        vad_stop_ms=200, speech_timeout_ms=200, stt_final_ms=150, llm_ttft_ms=300,
        tts_first_byte_ms=150,
    )  # fmt: skip

    assert budget.floor_ms("voicebot") == 200 + max(200, 150) + 300 + 150
    assert budget.floor_ms("pipecat") == 200 + 150 + 300 + 150
    assert budget.overhead_ms("voicebot", 870.0) == pytest.approx(20.0)
    assert budget.overhead_ms("pipecat", 870.0) == pytest.approx(70.0)
    assert budget.formula("voicebot").endswith("= v2v − 850 ms")


def test_a_slower_stt_sets_the_turn_end() -> None:
    budget = DeclaredLatency(200, 200, 400, 300, 150)

    assert budget.turn_end_ms("voicebot") == 400
    assert budget.floor_ms("voicebot") == budget.floor_ms("pipecat") == 1050


def test_refuses_a_pipeline_without_fakes_naming_every_step() -> None:
    with pytest.raises(ValueError) as err:
        DeclaredLatency.from_spec(load_pipeline(REPO / "pipelines" / "echo.yaml"))

    message = str(err.value)
    assert "echo.yaml: not a bench pipeline" in message
    for step in ("vad", "stt", "llm", "tts"):
        assert f"{step}: needs provider" in message


async def test_each_turn_has_its_measured_vad_stop() -> None:
    spec = load_pipeline(BENCH_YAML)
    vad = spec.step("vad").params
    assert isinstance(vad, SileroParams)
    names = ("help_bill", "balance", "hello")
    turns = [(str(sample(name)), 3000) for name in names] * 2

    stops = await measured_vad_stops(turns, 1000, vad)

    assert all(stop is not None for stop in stops), stops
    # stop_secs (200 ms) at least; Silero's tail and its 32 ms windows add up to ~100 ms
    assert all(200 <= stop <= 320 for stop in stops if stop is not None), stops
    assert await measured_vad_stops(turns, 1000, vad) == stops  # the same every run

    budget = DeclaredLatency.from_spec(spec).with_vad_stops(stops)
    for turn, stop in enumerate(stops):
        assert stop is not None
        assert budget.overhead_ms("voicebot", 900.0, turn) == pytest.approx(900 - stop - 650)
    assert budget.overhead_ms("voicebot", 900.0) == pytest.approx(50.0)  # stop_secs
    assert budget.overhead_ms("voicebot", 900.0, turn=99) == pytest.approx(50.0)
    assert "measured per turn" in budget.formula("voicebot")


async def test_a_turn_the_vad_never_hears_has_no_stop(tmp_path: Path) -> None:
    quiet = tmp_path / "quiet.wav"
    write_wav(quiet, bytes(16000), 16000)  # half a second of digital silence
    vad = SileroParams(stop_secs=0.2)
    assert await measured_vad_stops([(str(quiet), 1000)], 0, vad) == [None]
