from __future__ import annotations

import math

import numpy as np
import pytest

from voicebot.bench.callers import (
    LEAD_IN_MS,
    BotChunk,
    CallPlan,
    answer_starts,
    pacing_of,
    plan_turns,
    voiced,
    wav_secs,
)
from voicebot.testing import sample


def frames(start: float, count: int, every: float = 20.0) -> list[BotChunk]:
    """``count`` voiced 20 ms chunks arriving every ``every`` ms from ``start``."""
    return [(start + i * every, 20.0, True) for i in range(count)]


def test_voiced_is_the_simulators_rms_threshold() -> None:
    tone = (np.sin(np.arange(320) / 5) * 0.2 * 32767).astype("<i2").tobytes()
    hum = (np.sin(np.arange(320) / 5) * 100).astype("<i2").tobytes()  # about -53 dBFS

    assert voiced(tone)
    assert not voiced(hum)
    assert not voiced(bytes(640))


def test_an_answer_paced_in_real_time_has_no_late_frames() -> None:
    pacing = pacing_of(frames(1000, 50), [1000.0], [])

    assert (pacing.answers, pacing.frames, pacing.late_frames, pacing.underruns) == (1, 50, 0, 0)
    assert pacing.max_gap_ms == 20.0


def test_counts_each_gap_over_40_ms_and_each_underrun() -> None:
    # 10 frames, a 60 ms hole, 10 frames, a 45 ms hole, 10 frames.
    chunks = frames(0, 10) + frames(180 + 60, 10) + frames(240 + 180 + 45, 10)

    pacing = pacing_of(chunks, [0.0], [])

    assert pacing.late_frames == 2
    assert pacing.underruns == 2
    assert pacing.max_gap_ms == pytest.approx(60.0)


def test_audio_sent_ahead_is_not_late_and_fills_later_holes() -> None:
    # 20 frames sent at twice real time (400 ms of audio by t=200), then one 50 ms gap: late by
    # the gap rule, but the caller still had 190 ms of audio queued, so no underrun.
    chunks = frames(0, 20, every=10) + frames(240, 5)

    pacing = pacing_of(chunks, [0.0], [])

    assert (pacing.late_frames, pacing.underruns) == (1, 0)


def test_an_answer_ends_where_the_next_starts_or_at_a_stop_audio() -> None:
    first, second = frames(1000, 10), frames(5000, 10)

    pacing = pacing_of(first + second, [1000.0, 5000.0], [])
    assert (pacing.answers, pacing.frames, pacing.late_frames) == (2, 20, 0)

    cut = pacing_of(first + second, [1000.0, None], [1100.0])
    assert (cut.answers, cut.frames) == (1, 5)


def test_each_turn_gets_the_first_answer_that_could_be_its_own() -> None:
    # Speech ends at 1000 and 6000 ms; answers need at least 650 ms.
    chunks = frames(1870, 30) + frames(6900, 30)

    starts = answer_starts(chunks, [1000.0, 6000.0], [], min_answer_ms=650)

    assert starts == [1870.0, 6900.0]


def test_an_answer_a_turn_late_is_not_taken_for_the_next_turns() -> None:
    # The answer to turn 1 arrives at 6200, 200 ms after turn 2's speech ended: too soon to be
    # turn 2's answer. Turn 2's answer comes at 7500.
    chunks = frames(6200, 30) + frames(7500, 30)

    starts = answer_starts(chunks, [1000.0, 6000.0], [], min_answer_ms=650)

    assert starts == [6200.0, 7500.0]


def test_a_burst_starts_after_a_stop_audio_or_a_long_gap_at_its_first_voiced_chunk() -> None:
    silent_lead = [(2000.0, 20.0, False), (2020.0, 20.0, False)]
    chunks = frames(900, 5) + silent_lead + frames(2040, 5)

    assert answer_starts(chunks, [0.0], [], min_answer_ms=1000) == [2040.0]
    # Within 250 ms of the chunk before: the same burst, unless a StopAudio came between.
    close = frames(900, 5) + frames(1100, 5)
    assert answer_starts(close, [0.0], [], min_answer_ms=1000) == [None]
    assert answer_starts(close, [0.0], [1050.0], min_answer_ms=1000) == [1100.0]


def test_no_speech_end_no_answer() -> None:
    assert answer_starts(frames(2000, 5), [None], [], min_answer_ms=0) == [None]


def test_turns_fill_the_duration_and_there_is_always_one() -> None:
    samples = [sample("help_bill"), sample("balance")]
    lengths = [wav_secs(s) for s in samples]

    turns = plan_turns(samples, duration_secs=20, pause_ms=3000)

    used, expected = LEAD_IN_MS / 1000, 0
    while used + lengths[expected % 2] + 3 <= 20:
        used += lengths[expected % 2] + 3
        expected += 1
    assert len(turns) == expected
    assert [path for path, _ in turns[:2]] == [str(s) for s in samples]
    assert plan_turns(samples, duration_secs=1, pause_ms=3000) == ((str(samples[0]), 3000),)


def test_a_plan_knows_how_long_its_call_lasts() -> None:
    turns = ((str(sample("balance")), 2000),)

    plan = CallPlan(0, "ws://127.0.0.1:1/", "c0", 0.0, turns, lead_in_ms=500)

    assert plan.length_secs == pytest.approx(0.5 + wav_secs(sample("balance")) + 2.0)
    assert math.isclose(plan.min_answer_ms, 0.0)
