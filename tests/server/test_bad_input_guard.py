"""BadInputGuard: the flood rule, the close code per kind of bad input, the per-call counts."""

from __future__ import annotations

import pytest

from voicebot.server.media import (
    BAD_INPUT_CLOSE_CODES,
    FLOOD_LIMIT,
    FLOOD_WINDOW_SECS,
    BadInputGuard,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def guard_with_log() -> tuple[BadInputGuard, list[tuple[int, str]], Clock]:
    closed: list[tuple[int, str]] = []
    clock = Clock()

    async def close(code: int, reason: str) -> None:
        closed.append((code, reason))

    return BadInputGuard("call-1", close, clock=clock), closed, clock


async def test_more_than_the_limit_within_the_window_closes_once() -> None:
    guard, closed, clock = guard_with_log()
    for _ in range(FLOOD_LIMIT):
        await guard("invalid_json")
        clock.now += 0.001
    assert closed == []
    await guard("invalid_json")
    assert closed == [(1007, "flood of undecodable messages: 26 bad in 1 s")]
    for _ in range(100):
        await guard("invalid_json")
    assert len(closed) == 1
    assert guard.counts == {"invalid_json": FLOOD_LIMIT + 101}
    assert guard.closed_with == closed[0]


async def test_bad_messages_spread_out_never_close() -> None:
    guard, closed, clock = guard_with_log()
    spacing = FLOOD_WINDOW_SECS / FLOOD_LIMIT  # exactly the limit in any window
    for _ in range(500):
        await guard("binary_frame")
        clock.now += spacing * 1.01
    assert closed == []
    assert guard.counts == {"binary_frame": 500}
    assert guard.summary() == "binary_frame=500"


async def test_the_code_is_what_most_of_the_flood_was() -> None:
    guard, closed, _ = guard_with_log()
    for kind in ["oversize"] * 14 + ["invalid_base64"] * 12:
        await guard(kind)
    assert closed == [(1009, "flood of oversize messages: 26 bad in 1 s")]


async def test_a_tie_goes_to_the_latest_kind() -> None:
    guard, closed, _ = guard_with_log()
    for kind in ["unknown_kind", "odd_length_pcm"] * 13:
        await guard(kind)
    assert [code for code, _ in closed] == [1007]


@pytest.mark.parametrize(
    ("kind", "code"),
    [
        ("oversize", 1009),
        ("invalid_json", 1007),
        ("invalid_base64", 1007),
        ("odd_length_pcm", 1007),
        ("binary_frame", 1008),
        ("unknown_kind", 1008),
        ("malformed", 1008),
        ("audio_before_metadata", 1008),
        ("unsupported_rate", 1008),
        ("invalid_dtmf", 1008),
        ("some_future_kind", 1008),
    ],
)
async def test_close_code_by_kind(kind: str, code: int) -> None:
    guard, closed, _ = guard_with_log()
    for _ in range(FLOOD_LIMIT + 1):
        await guard(kind)
    [(got, reason)] = closed
    assert got == code
    assert len(reason.encode()) <= 123  # the most a WebSocket close reason may hold


def test_every_serializer_kind_has_a_code() -> None:
    from voicebot.transports.acs import ACSMediaSerializer

    documented = ACSMediaSerializer.__doc__ or ""
    for kind in BAD_INPUT_CLOSE_CODES:
        assert f"``{kind}``" in documented


async def test_counts_can_live_in_the_call_record() -> None:
    from voicebot.processors.transcript import CallTranscript

    record = CallTranscript("call-1")

    async def close(code: int, reason: str) -> None:
        raise AssertionError("no flood here")

    guard = BadInputGuard("call-1", close, counts=record.bad_input)
    await guard("oversize")
    await guard("oversize")
    assert record.as_dict()["bad_input"] == {"oversize": 2}
