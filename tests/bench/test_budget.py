from __future__ import annotations

from pathlib import Path

import pytest

from voicebot.bench.budget import DeclaredLatency
from voicebot.build.loader import load_pipeline

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
