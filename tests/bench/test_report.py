from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from voicebot.bench.budget import DeclaredLatency
from voicebot.bench.callers import CallResult, Pacing
from voicebot.bench.report import percentiles, ratios, summarize, table

BUDGET = DeclaredLatency(200, 200, 150, 300, 150)


def test_percentiles_are_turns_that_happened() -> None:
    values = [float(v) for v in range(1, 101)]

    assert percentiles(values) == {"p50": 50.0, "p95": 95.0, "p99": 99.0, "max": 100.0,
                                   "mean": 50.5}  # fmt: skip


def test_unanswered_turns_are_infinitely_late() -> None:
    ninety_answered: list[float | None] = [900.0] * 90 + [None] * 10

    result = percentiles(ninety_answered)

    assert result == {"p50": 900.0, "p95": None, "p99": None, "max": None, "mean": None}
    assert percentiles([]) == {"p50": None, "p95": None, "p99": None, "max": None, "mean": None}


def summary(side: str, cpu: float, latencies: list[float | None]) -> dict[str, Any]:
    results = [
        CallResult(0, "a", 1.0, 41.0, latencies_ms=latencies, closed_by="caller",
                   pacing=Pacing(answers=2, frames=100, late_frames=3, underruns=1)),
        CallResult(1, "b", error="TimeoutError: timed out during opening handshake"),
    ]  # fmt: skip
    return summarize(
        side,  # type: ignore[arg-type]
        2,
        results,
        BUDGET,
        cpu_percent=cpu,
        machine_percent=150.0,
        rss_idle=170_000_000,
        rss_loaded=174_000_000,
        window_secs=30.0,
    )


def test_a_summary_counts_failures_and_subtracts_the_declared_waits() -> None:
    result = summary("voicebot", 20.0, [870.0, None])

    assert (result["calls_ok"], result["calls_failed"]) == (1, 1)
    assert result["errors"] == ["TimeoutError: timed out during opening handshake"]
    assert (result["turns"], result["turns_unanswered"]) == (2, 1)
    assert result["voice_to_voice_ms"]["p50"] == 870.0
    assert result["overhead_ms"]["p50"] == pytest.approx(20.0)
    assert result["overhead_ms"]["p95"] is None
    assert (result["late_frames"], result["underruns"], result["bot_frames"]) == (3, 1, 100)
    assert result["rss_mb_per_call"] == 2.0
    assert result["cpu_percent_per_call"] == 10.0


def test_ratios_are_pipecat_over_voicebot() -> None:
    voicebot = summary("voicebot", 20.0, [870.0, 880.0])
    pipecat = summary("pipecat", 50.0, [1200.0, 1300.0])

    r = ratios(voicebot, pipecat)

    assert r["cpu_percent"] == 2.5
    assert r["overhead_ms_p50"] == pytest.approx(400 / 20, rel=0.01)
    lines = table([{"calls": 2, "voicebot": voicebot, "pipecat": pipecat, "ratios": r}])
    assert "cpu 2.5x" in lines


def test_the_plot_is_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from voicebot.bench.plot import write_plot

    voicebot = summary("voicebot", 20.0, [870.0, None])
    report = {
        "config": {"floor_ms": {"voicebot": 850.0, "pipecat": 800.0}},
        "machine": {"cpus": 2},
        "steps": [{"calls": 2, "voicebot": voicebot, "pipecat": None}],
    }

    write_plot(report, tmp_path / "bench.png")

    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
