"""ACSMediaSerializer: exact wire JSON out, the documented ACS messages in, bad input survived."""

import asyncio
import base64
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from loguru import logger
from pipecat.audio.dtmf.types import KeypadEntry
from pipecat.clocks.system_clock import SystemClock
from pipecat.frames.frames import (
    EndFrame,
    InputAudioRawFrame,
    InputDTMFFrame,
    InterruptionFrame,
    OutputAudioRawFrame,
    TextFrame,
    TTSAudioRawFrame,
)
from pipecat.processors.frame_processor import FrameProcessorSetup
from pipecat.utils.asyncio.task_manager import TaskManager

from voicebot.transports.acs import ACSMediaSerializer

# The inbound samples from shared/reference/acs-media-streaming.md; the AudioData sample's
# placeholder is filled with 640 bytes of real PCM by `_doc_audio_data`.
DOC_METADATA = (
    '{"kind":"AudioMetadata","audioMetadata":{"subscriptionId":'
    '"89e8cb59-b991-48b0-b154-1db84f16a077","encoding":"PCM","sampleRate":16000,'
    '"channels":1,"length":640}}'
)
DOC_AUDIO_DATA = (
    '{"kind":"AudioData","audioData":{"timestamp":"2024-11-15T19:16:12.925Z",'
    '"participantRawID":"8:acs:3d20e1de-0f28-41c5-84f0-000000000000",'
    '"data":"<base64 PCM, 640 bytes decoded>","silent":false}}'
)
DOC_DTMF = '{"kind":"DtmfData","dtmfData":{"data":"3"}}'


def _setup(in_rate: int, out_rate: int) -> FrameProcessorSetup:
    """What the transport hands the serializer; only the rates (Hz) matter to it."""
    return FrameProcessorSetup(
        clock=SystemClock(),
        task_manager=TaskManager(),
        pipeline_worker=None,  # type: ignore[arg-type]
        audio_in_sample_rate=in_rate,
        audio_out_sample_rate=out_rate,
    )


async def _serializer(
    in_rate: int = 16000, out_rate: int = 16000, **params: object
) -> ACSMediaSerializer:
    serializer = ACSMediaSerializer(
        call_id="call-1", params=ACSMediaSerializer.InputParams(**params)
    )
    await serializer.setup(_setup(in_rate, out_rate))
    return serializer


def _tone(rate: int, ms: int, hz: float = 440.0) -> bytes:
    """PCM16 mono sine of `ms` milliseconds at `rate` Hz."""
    t = np.arange(rate * ms // 1000) / rate
    return (8000 * np.sin(2 * np.pi * hz * t)).astype("<i2").tobytes()


def _metadata(rate: int) -> str:
    return json.dumps(
        {
            "kind": "AudioMetadata",
            "audioMetadata": {
                "subscriptionId": "s",
                "encoding": "PCM",
                "sampleRate": rate,
                "channels": 1,
                "length": rate // 50 * 2,
            },
        }
    )


def _audio_data(pcm: bytes, silent: bool = False) -> str:
    return json.dumps(
        {
            "kind": "AudioData",
            "audioData": {
                "timestamp": "2024-11-15T19:16:12.925Z",
                "participantRawID": "4:+15551234567",
                "data": base64.b64encode(pcm).decode(),
                "silent": silent,
            },
        }
    )


def _doc_audio_data(pcm: bytes) -> str:
    return DOC_AUDIO_DATA.replace("<base64 PCM, 640 bytes decoded>", base64.b64encode(pcm).decode())


# --- serialize: exact wire strings ---------------------------------------------------------


async def test_serialize_audio_is_exact_pascal_case_audio_data() -> None:
    serializer = await _serializer()
    frame = OutputAudioRawFrame(audio=b"\x01\x00\x02\x00", sample_rate=16000, num_channels=1)

    assert (
        await serializer.serialize(frame)
        == '{"Kind":"AudioData","AudioData":{"Data":"AQACAA=="},"StopAudio":null}'
    )


async def test_serialize_tts_audio_too() -> None:
    serializer = await _serializer()
    frame = TTSAudioRawFrame(audio=b"\x00\x00", sample_rate=16000, num_channels=1)

    assert (
        await serializer.serialize(frame)
        == '{"Kind":"AudioData","AudioData":{"Data":"AAA="},"StopAudio":null}'
    )


async def test_serialize_interruption_is_exact_stop_audio() -> None:
    serializer = await _serializer()

    assert (
        await serializer.serialize(InterruptionFrame())
        == '{"Kind":"StopAudio","AudioData":null,"StopAudio":{}}'
    )


@pytest.mark.parametrize("frame", [TextFrame("hello"), EndFrame()])
async def test_serialize_other_frames_is_none(frame: object) -> None:
    serializer = await _serializer()

    assert await serializer.serialize(frame) is None  # type: ignore[arg-type]


async def test_serialize_resamples_to_the_call_rate() -> None:
    serializer = await _serializer(in_rate=16000, out_rate=24000)
    await serializer.deserialize(_metadata(16000))

    sent = 0
    for _ in range(50):  # 1 s of 20 ms frames at 24 kHz
        frame = OutputAudioRawFrame(audio=_tone(24000, 20), sample_rate=24000, num_channels=1)
        message = await serializer.serialize(frame)
        if message is not None:
            sent += len(base64.b64decode(json.loads(message)["AudioData"]["Data"]))

    assert abs(sent - 32000) <= 640  # 1 s at 16 kHz, give or take the resampler's 20 ms lag


async def test_serialize_before_metadata_uses_16_khz() -> None:
    serializer = await _serializer(out_rate=16000)
    frame = OutputAudioRawFrame(audio=_tone(16000, 20), sample_rate=16000, num_channels=1)

    message = await serializer.serialize(frame)

    assert serializer.call_sample_rate == 16000
    assert message is not None
    assert base64.b64decode(json.loads(message)["AudioData"]["Data"]) == frame.audio


# --- deserialize: the documented messages --------------------------------------------------


async def test_doc_metadata_sets_the_call_rate_and_yields_no_frame() -> None:
    serializer = await _serializer()

    assert await serializer.deserialize(DOC_METADATA) is None
    assert serializer.call_sample_rate == 16000
    assert not serializer.bad_input


async def test_doc_audio_data_becomes_input_audio() -> None:
    serializer = await _serializer()
    pcm = _tone(16000, 20)
    await serializer.deserialize(DOC_METADATA)

    frame = await serializer.deserialize(_doc_audio_data(pcm))

    assert isinstance(frame, InputAudioRawFrame)
    assert frame.audio == pcm
    assert (frame.sample_rate, frame.num_channels) == (16000, 1)
    assert not serializer.bad_input


async def test_doc_dtmf_becomes_input_dtmf() -> None:
    serializer = await _serializer()

    frame = await serializer.deserialize(DOC_DTMF)

    assert isinstance(frame, InputDTMFFrame)
    assert frame.button == KeypadEntry.THREE


@pytest.mark.parametrize(("digit", "key"), [("#", KeypadEntry.POUND), ("*", KeypadEntry.STAR)])
async def test_dtmf_symbols(digit: str, key: KeypadEntry) -> None:
    serializer = await _serializer()

    frame = await serializer.deserialize(
        json.dumps({"kind": "DtmfData", "dtmfData": {"data": digit}})
    )

    assert isinstance(frame, InputDTMFFrame)
    assert frame.button == key


async def test_silent_frames_still_carry_audio() -> None:
    serializer = await _serializer()
    await serializer.deserialize(DOC_METADATA)

    frame = await serializer.deserialize(_audio_data(bytes(640), silent=True))

    assert isinstance(frame, InputAudioRawFrame)
    assert frame.audio == bytes(640)


async def test_silent_frame_without_data_is_20_ms_of_silence() -> None:
    serializer = await _serializer()
    await serializer.deserialize(DOC_METADATA)
    message = {"kind": "AudioData", "audioData": {"timestamp": "t", "silent": True}}

    frame = await serializer.deserialize(json.dumps(message))

    assert isinstance(frame, InputAudioRawFrame)
    assert frame.audio == bytes(640)


async def test_unknown_fields_are_ignored() -> None:
    serializer = await _serializer()
    await serializer.deserialize(DOC_METADATA)
    message = json.loads(_audio_data(_tone(16000, 20)))
    message["audioData"]["mark"] = {"sequence": 3}
    message["extra"] = True

    frame = await serializer.deserialize(json.dumps(message))

    assert isinstance(frame, InputAudioRawFrame)
    assert not serializer.bad_input


async def test_24_khz_call_into_16_khz_pipeline_is_resampled() -> None:
    serializer = await _serializer(in_rate=16000, out_rate=16000)
    await serializer.deserialize(_metadata(24000))

    frames = [await serializer.deserialize(_audio_data(_tone(24000, 20))) for _ in range(50)]

    audio = [f for f in frames if f is not None]
    assert all(isinstance(f, InputAudioRawFrame) and f.sample_rate == 16000 for f in audio)
    received = sum(len(f.audio) for f in audio)  # type: ignore[union-attr]
    assert abs(received - 32000) <= 640  # 1 s at 16 kHz, give or take the resampler's 20 ms lag
    assert serializer.call_sample_rate == 24000


async def test_same_rates_pass_audio_through_untouched() -> None:
    serializer = await _serializer(in_rate=24000)
    await serializer.deserialize(_metadata(24000))
    pcm = _tone(24000, 20)

    frame = await serializer.deserialize(_audio_data(pcm))

    assert isinstance(frame, InputAudioRawFrame)
    assert frame.audio == pcm


async def test_configured_rate_accepts_audio_before_metadata() -> None:
    serializer = await _serializer(in_rate=24000, out_rate=24000, sample_rate=24000)
    pcm = _tone(24000, 20)

    frame = await serializer.deserialize(_audio_data(pcm))

    assert isinstance(frame, InputAudioRawFrame)
    assert frame.audio == pcm
    assert serializer.call_sample_rate == 24000


async def test_metadata_wins_over_the_configured_rate() -> None:
    serializer = await _serializer(sample_rate=24000)

    await serializer.deserialize(_metadata(16000))

    assert serializer.call_sample_rate == 16000


def test_configured_rate_must_be_an_acs_rate() -> None:
    with pytest.raises(ValueError, match="sample_rate=8000"):
        ACSMediaSerializer(params=ACSMediaSerializer.InputParams(sample_rate=8000))


# --- bad input: None, counted, logged once -------------------------------------------------

BAD_INPUT = [
    ("invalid_json", '{"kind":"AudioData",'),
    ("unknown_kind", '{"kind":"TranscriptionData","transcriptionData":{}}'),
    ("unknown_kind", "[1, 2, 3]"),
    ("malformed", '{"kind":"AudioData","audioData":"AAAA"}'),
    ("malformed", '{"kind":"AudioData","audioData":{"data":42,"silent":false}}'),
    ("malformed", '{"kind":"DtmfData","dtmfData":{}}'),
    ("invalid_base64", '{"kind":"AudioData","audioData":{"data":"not base64!","silent":false}}'),
    ("odd_length_pcm", '{"kind":"AudioData","audioData":{"data":"AAAA","silent":false}}'),
    ("unsupported_rate", _metadata(8000)),
    ("unsupported_rate", '{"kind":"AudioMetadata","audioMetadata":{"sampleRate":16000.0}}'),
    ("binary_frame", b"\x00\x01\x02\x03"),
    ("invalid_dtmf", '{"kind":"DtmfData","dtmfData":{"data":"pound"}}'),
    ("oversize", _audio_data(bytes(64 * 1024))),
]


@pytest.mark.parametrize(("kind", "data"), BAD_INPUT)
async def test_bad_input_is_none_and_counted(kind: str, data: str | bytes) -> None:
    serializer = await _serializer()
    await serializer.deserialize(DOC_METADATA)

    assert await serializer.deserialize(data) is None
    assert serializer.bad_input == {kind: 1}


async def test_audio_before_metadata_is_counted() -> None:
    serializer = await _serializer()

    assert await serializer.deserialize(_audio_data(bytes(640))) is None
    assert serializer.bad_input == {"audio_before_metadata": 1}


async def test_unsupported_rate_leaves_the_rate_unknown() -> None:
    serializer = await _serializer()
    await serializer.deserialize(_metadata(44100))

    assert await serializer.deserialize(_audio_data(bytes(640))) is None
    assert serializer.bad_input == {"unsupported_rate": 1, "audio_before_metadata": 1}


async def test_each_kind_is_logged_once_with_the_call_id() -> None:
    lines: list[str] = []
    sink = logger.add(lines.append, level="WARNING", format="{message}")
    try:
        serializer = await _serializer()
        for _ in range(3):
            await serializer.deserialize("{oops")
            await serializer.deserialize(b"\x00")
    finally:
        logger.remove(sink)

    assert serializer.bad_input == {"invalid_json": 3, "binary_frame": 3}
    assert len(lines) == 2
    assert all("call-1" in line for line in lines)


async def test_size_limit_is_configurable() -> None:
    serializer = await _serializer(max_message_bytes=100)

    assert await serializer.deserialize(DOC_METADATA) is None
    assert serializer.bad_input == {"oversize": 1}


# --- property: nothing raises --------------------------------------------------------------

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
_known_kinds = st.sampled_from(["AudioMetadata", "AudioData", "DtmfData", "StopAudio", ""])
_payload_keys = st.sampled_from(["audioMetadata", "audioData", "dtmfData"])
_field_names = st.sampled_from(["data", "silent", "sampleRate", "timestamp", "length"])
_acs_like = st.builds(
    lambda kind, key, fields, extra: json.dumps({"kind": kind, key: fields, **extra}),
    _known_kinds,
    _payload_keys,
    st.dictionaries(
        _field_names,
        _json_values | st.binary(max_size=9).map(lambda b: base64.b64encode(b).decode()),
        max_size=5,
    )
    | _json_values,
    st.dictionaries(st.text(max_size=8), _json_values, max_size=2),
)


async def _feed(messages: list[str | bytes]) -> ACSMediaSerializer:
    serializer = await _serializer(in_rate=16000)
    for message in messages:
        frame = await serializer.deserialize(message)
        assert frame is None or isinstance(frame, InputAudioRawFrame | InputDTMFFrame)
    return serializer


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text() | st.binary() | _acs_like | st.just(DOC_METADATA), max_size=6))
def test_arbitrary_input_never_raises(messages: list[str | bytes]) -> None:
    asyncio.run(_feed(messages))


def test_deeply_nested_json_does_not_raise() -> None:
    serializer = asyncio.run(_feed(["[" * 30_000 + "]" * 30_000]))

    assert serializer.bad_input == {"invalid_json": 1}
