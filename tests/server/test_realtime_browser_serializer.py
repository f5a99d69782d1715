"""The browser conversation's serializer (``voicebot.transports.browser``): exact wire messages."""

from __future__ import annotations

from typing import Any

import pytest
from pipecat.frames.frames import InputAudioRawFrame, InterruptionFrame, OutputAudioRawFrame

from voicebot.transports.browser import INTERRUPT_MESSAGE, BrowserAudioSerializer

PCM_20MS = bytes(range(256)) * 2 + bytes(128)  # 640 bytes: 20 ms at 16 kHz


def serializer(rate: int = 16000, **kwargs: Any) -> BrowserAudioSerializer:
    return BrowserAudioSerializer("web-1", BrowserAudioSerializer.InputParams(sample_rate=rate), **kwargs)


async def test_bot_audio_goes_out_as_raw_pcm16_and_a_barge_in_as_the_interrupt_message() -> None:
    out = serializer()
    frame = OutputAudioRawFrame(audio=PCM_20MS, sample_rate=16000, num_channels=1)
    assert await out.serialize(frame) == PCM_20MS
    assert await out.serialize(InterruptionFrame()) == INTERRUPT_MESSAGE == '{"type":"interrupt"}'


async def test_bot_audio_is_resampled_to_the_page_rate() -> None:
    out = serializer(24000)
    silence = OutputAudioRawFrame(audio=bytes(640 * 10), sample_rate=16000, num_channels=1)
    sent = b"".join([await out.serialize(silence) or b"" for _ in range(5)])
    assert len(sent) % 2 == 0
    assert abs(len(sent) - 5 * 10 * 960) <= 2 * 960  # 24 kHz: 960 bytes per 20 ms, less the lag


async def test_binary_messages_are_caller_audio() -> None:
    frame = await serializer().deserialize(PCM_20MS)
    assert isinstance(frame, InputAudioRawFrame)
    assert (frame.audio, frame.sample_rate, frame.num_channels) == (PCM_20MS, 16000, 1)


async def test_bad_messages_are_dropped_and_counted_by_kind() -> None:
    page = serializer()
    for bad in (b"\x00\x01\x02", b"\x00" * (64 * 1024 + 2), "{not json", '{"type":"dance"}', "[]"):
        assert await page.deserialize(bad) is None
    assert page.bad_input == {
        "odd_length_pcm": 1,
        "oversize": 1,
        "invalid_json": 1,
        "unknown_type": 2,
    }


async def test_stop_is_handed_to_the_endpoint() -> None:
    seen: list[tuple[str, dict[str, Any]]] = []

    async def control(kind: str, message: dict[str, Any]) -> None:
        seen.append((kind, message))

    page = serializer(on_control=control)
    assert await page.deserialize('{"type":"stop"}') is None
    assert seen == [("stop", {"type": "stop"})] and not page.bad_input


def test_only_the_browser_rates_are_accepted() -> None:
    with pytest.raises(ValueError, match=r"sample_rate=8000 is not supported; use one of \(16000, 24000\)"):
        serializer(8000)
