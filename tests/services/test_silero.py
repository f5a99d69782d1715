"""The shared Silero analyzer answers silence without the model and detects speech as before."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from pipecat.audio.vad.vad_analyzer import VADParams, VADState

from voicebot.services.resources import SharedResources
from voicebot.services.silero import (
    BATCHER_KEY,
    SILENCE_PEAK,
    SharedSileroVADAnalyzer,
    SileroBatcher,
    is_silence,
    shared_batcher,
    shared_model,
    shared_pool,
)
from voicebot.testing.wav import read_wav, sample, silence, split_frames

RATE = 16000


@pytest.fixture(scope="module")
def resources() -> SharedResources:
    """The process's resources, with a batcher that does not wait for more windows: these
    tests score one stream at a time, window after window."""
    resources = SharedResources()
    resources.get(
        BATCHER_KEY,
        lambda: SileroBatcher(shared_model(resources), shared_pool(resources), gather_secs=0),
    )
    return resources


def _analyzer(resources: SharedResources, *, skip: bool) -> SharedSileroVADAnalyzer:
    analyzer = SharedSileroVADAnalyzer(
        shared_batcher(resources), params=VADParams(stop_secs=0.2), skip_silence=skip
    )
    analyzer.set_sample_rate(RATE)
    return analyzer


async def _transitions(analyzer: SharedSileroVADAnalyzer, pcm: bytes) -> list[tuple[int, str]]:
    """(frame index, state) each time the state changes to SPEAKING or QUIET."""
    changes: list[tuple[int, str]] = []
    last = VADState.QUIET
    for i, frame in enumerate(split_frames(pcm, RATE)):
        state = await analyzer.analyze_audio(frame)
        if state != last and state in (VADState.SPEAKING, VADState.QUIET):
            changes.append((i, state.name))
        if state in (VADState.SPEAKING, VADState.QUIET):
            last = state
    return changes


def test_is_silence() -> None:
    assert is_silence(bytes(640))
    low = np.full(320, SILENCE_PEAK, dtype=np.int16)
    assert is_silence(low.tobytes())
    assert is_silence((-low).tobytes())
    assert not is_silence((low + 1).tobytes())
    assert not is_silence(np.array([0] * 319 + [-SILENCE_PEAK - 1], dtype=np.int16).tobytes())


@pytest.mark.parametrize("lead_ms", [1000, 3000])
@pytest.mark.parametrize("name", ["hello", "bank_bill", "bank_pin"])
async def test_silence_is_skipped_and_speech_found_at_the_same_frames(
    resources: SharedResources, name: str, lead_ms: int
) -> None:
    speech = read_wav(sample(name), RATE)
    pcm = silence(lead_ms, RATE) + speech + silence(3000, RATE) + speech + silence(600, RATE)
    silent_frames = sum(is_silence(f) for f in split_frames(pcm, RATE))

    scored = _analyzer(resources, skip=False)
    skipping = _analyzer(resources, skip=True)
    expected = await _transitions(scored, pcm)
    got = await _transitions(skipping, pcm)

    assert [state for _, state in got] == [state for _, state in expected]
    assert [state for _, state in expected][-1] == "QUIET"
    for (i, state), (j, _) in zip(got, expected, strict=True):
        assert abs(i - j) <= 3, (got, expected)  # within 60 ms
        if state == "QUIET":
            # The end of each utterance (what starts a turn) never later than when every
            # frame is scored, repeats included: skipped silence must not leave the model
            # where the last words left it (that found the end of a repeat 60 ms late).
            assert i - j <= 1, (got, expected)
    assert scored.silent_frames_skipped == 0
    # The leading second and most of the pause are answered without the model; silence
    # while the caller is speaking or stopping is still scored.
    assert skipping.silent_frames_skipped >= 50 + 140
    assert skipping.silent_frames_skipped < silent_frames


async def test_silence_while_speaking_is_still_scored(resources: SharedResources) -> None:
    speech = read_wav(sample("bank_bill"), RATE)
    analyzer = _analyzer(resources, skip=True)
    for frame in split_frames(speech, RATE):  # up to the moment speech is detected
        if await analyzer.analyze_audio(frame) == VADState.SPEAKING:
            break
    else:
        pytest.fail("no speech detected in bank_bill")
    skipped = analyzer.silent_frames_skipped
    states = [await analyzer.analyze_audio(f) for f in split_frames(silence(400, RATE), RATE)]
    # The stop is counted over scored silence: nothing skipped until QUIET is reached.
    assert states[-1] == VADState.QUIET
    first_quiet = states.index(VADState.QUIET)
    assert analyzer.silent_frames_skipped == skipped + len(states) - first_quiet - 1


async def test_batched_scores_match_the_model_scoring_each_call_alone(
    resources: SharedResources,
) -> None:
    """Windows of several calls scored together give each call what the model alone gives."""
    from pipecat.audio.vad.silero import SileroOnnxModel

    batcher = shared_batcher(resources)
    names = ["hello", "bank_bill", "bank_pin", "help_bill"]
    streams = [read_wav(sample(name), RATE) for name in names]
    windows = min(len(s) for s in streams) // 1024
    alone: list[list[float]] = []
    for pcm in streams:
        model: SileroOnnxModel = batcher.call_model()
        audio = np.frombuffer(pcm, dtype=np.int16).astype(np.float32) / 32768.0
        alone.append([model(audio[i * 512 : (i + 1) * 512], RATE).item() for i in range(windows)])

    models = [batcher.call_model() for _ in streams]
    before = batcher.batches

    async def call(k: int) -> list[float]:
        pcm = streams[k]
        return [
            await batcher.score(models[k], pcm[i * 1024 : (i + 1) * 1024], RATE)
            for i in range(windows)
        ]

    together = await asyncio.gather(*(call(k) for k in range(len(streams))))
    for got, expected in zip(together, alone, strict=True):
        assert np.allclose(got, expected, atol=1e-4), (got[:5], expected[:5])
    assert max(max(s) for s in together) > 0.9  # there is speech in there
    # the four calls' windows went in shared batches, not one run each
    assert batcher.batches - before <= windows + 1


async def test_a_cancelled_window_does_not_stop_the_others(resources: SharedResources) -> None:
    batcher = shared_batcher(resources)
    pcm = read_wav(sample("hello"), RATE)[16000:17024]
    first = asyncio.ensure_future(batcher.score(batcher.call_model(), pcm, RATE))
    second = asyncio.ensure_future(batcher.score(batcher.call_model(), pcm, RATE))
    first.cancel()
    assert 0.0 <= await asyncio.wait_for(second, 5) <= 1.0
    assert first.cancelled()
