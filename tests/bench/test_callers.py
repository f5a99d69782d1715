from __future__ import annotations

import math

import pytest

from voicebot.bench.callers import LEAD_IN_MS, CallPlan, pacing_of, plan_turns, wav_secs
from voicebot.testing import sample


def frames(start: float, count: int, every: float = 20.0) -> list[tuple[float, float]]:
    """``count`` 20 ms chunks arriving every ``every`` ms from ``start``."""
    return [(start + i * every, 20.0) for i in range(count)]


def test_an_answer_paced_in_real_time_has_no_late_frames() -> None:
    pacing = pacing_of(frames(1000, 50), [1000.0], [math.inf], [])

    assert (pacing.answers, pacing.frames, pacing.late_frames, pacing.underruns) == (1, 50, 0, 0)
    assert pacing.max_gap_ms == 20.0


def test_counts_each_gap_over_40_ms_and_each_underrun() -> None:
    # 10 frames, a 60 ms hole, 10 frames, a 45 ms hole, 10 frames.
    chunks = frames(0, 10) + frames(180 + 60, 10) + frames(240 + 180 + 45, 10)

    pacing = pacing_of(chunks, [0.0], [math.inf], [])

    assert pacing.late_frames == 2
    assert pacing.underruns == 2
    assert pacing.max_gap_ms == pytest.approx(60.0)


def test_audio_sent_ahead_is_not_late_and_fills_later_holes() -> None:
    # 20 frames sent at twice real time (400 ms of audio by t=200), then one 50 ms gap: late by
    # the gap rule, but the caller still had 190 ms of audio queued, so no underrun.
    chunks = frames(0, 20, every=10) + frames(240, 5)

    pacing = pacing_of(chunks, [0.0], [math.inf], [])

    assert (pacing.late_frames, pacing.underruns) == (1, 0)


def test_answers_end_at_the_next_turn_or_a_stop_audio() -> None:
    first, second = frames(1000, 10), frames(5000, 10)
    before_any_answer = [(10.0, 20.0)]

    pacing = pacing_of(before_any_answer + first + second, [1000.0, 5000.0], [4000.0, math.inf], [])

    assert (pacing.answers, pacing.frames, pacing.late_frames) == (2, 20, 0)

    cut = pacing_of(first + second, [1000.0, None], [4000.0, math.inf], [1100.0])
    assert (cut.answers, cut.frames) == (1, 5)


def test_turns_fill_the_duration_and_there_is_always_one() -> None:
    samples = [sample("help_bill"), sample("balance")]
    bill, balance = (wav_secs(s) for s in samples)

    turns = plan_turns(samples, duration_secs=20, pause_ms=3000)

    used = LEAD_IN_MS / 1000
    expected = 0
    while used + [bill, balance][expected % 2] + 3 <= 20:
        used += [bill, balance][expected % 2] + 3
        expected += 1
    assert len(turns) == expected
    assert [path for path, _ in turns[:2]] == [str(s) for s in samples]
    assert plan_turns(samples, duration_secs=1, pause_ms=3000) == ((str(samples[0]), 3000),)


def test_a_plan_knows_how_long_its_call_lasts() -> None:
    turns = ((str(sample("balance")), 2000),)

    plan = CallPlan(0, "ws://127.0.0.1:1/", "c0", 0.0, turns, lead_in_ms=500)

    assert plan.length_secs == pytest.approx(0.5 + wav_secs(sample("balance")) + 2.0)
