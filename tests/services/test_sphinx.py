"""``provider: sphinx``: pocketsphinx streaming speech-to-text, in real pipelines.

Skipped unless pocketsphinx (part of the ``local`` extra) is installed. The caller turns are
the bank WAVs shipped in ``voicebot.testing`` (piper speech, 16 kHz). Pipelines run on the
harness's virtual clock, which waits for executor work in real time, so a latency measured
here is the real time decoding took. Run with ``-s`` to see the measurements.
"""

from __future__ import annotations

import asyncio
import re
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("pocketsphinx")

from pipecat.frames.frames import (
    Frame,
    InputAudioRawFrame,
    InterimTranscriptionFrame,
    TranscriptionFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.tests.utils import SleepFrame, run_test
from pydantic import ValidationError

from voicebot.build.context import BuildContext
from voicebot.build.loader import load_pipeline
from voicebot.build.problems import ConfigError
from voicebot.build.schema import AudioSpec
from voicebot.services import sphinx
from voicebot.services.local import LocalSpeechNotInstalledError
from voicebot.services.resources import SharedResources
from voicebot.testing import CallHarness, read_wav, sample
from voicebot.testing.recorder import Recorded
from voicebot.testing.wav import split_frames

WritePipeline = Callable[..., Path]

STT_PIPELINE = """
name: sphinx-stt
transport: acs
audio: {{in_rate: {rate}, out_rate: 16000}}
processors:{vad}
  - stt: {{provider: sphinx{stt}}}
  - echo        # stands in for the rest of the bot: transcripts pass on to the end
"""

#: Words each bank WAV must come back with (pocketsphinx mishears some of the others: "my pin
#: is" came back as "my tennis").
KEY_WORDS = {
    "bank_bill": ["help", "bill"],
    "bank_account": ["four", "five", "six", "seven", "eight"],
    "bank_pin": ["three", "four"],
    "bank_balance": ["what", "balance"],
}
#: Virtual seconds a wait may take; executor work counts in real time, so be generous.
WAIT_SECS = 30.0


def paced(pcm: bytes, rate: int) -> list[Frame]:
    """``pcm`` as 20 ms input frames with a ``SleepFrame`` after every 200 ms of them, so
    ``run_test`` feeds them at about the pace of a phone line (all at once, a graceful end
    would come before a loaded machine had decoded them)."""
    frames: list[Frame] = []
    for index, chunk in enumerate(split_frames(pcm, rate)):
        frames.append(InputAudioRawFrame(audio=chunk, sample_rate=rate, num_channels=1))
        if index % 10 == 9:
            frames.append(SleepFrame(sleep=0.2))
    return frames


def words(text: str) -> list[str]:
    """Lower-case words without punctuation: how transcripts are compared."""
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split()


def pipeline(write: WritePipeline, rate: int = 16000, **stt: Any) -> Path:
    """``vad → stt sphinx → echo``; at rates other than 16 kHz without the VAD (Silero hears 8
    and 16 kHz only): the test then sends the VAD's frames itself."""
    extra = "".join(f", {key}: {value}" for key, value in stt.items())
    vad = "\n  - vad: {provider: silero, stop_secs: 0.2}" if rate == 16000 else ""
    return write(STT_PIPELINE.format(rate=rate, vad=vad, stt=extra))


@pytest.fixture(scope="module")
def resources() -> Iterator[SharedResources]:
    """One decoder pool and thread pool for the whole module, as one process would have."""
    shared = SharedResources()
    yield shared
    asyncio.run(shared.aclose())


def vad_stop_after(call: CallHarness, since: float) -> float:
    stops = [
        r.at
        for r in call.frames
        if isinstance(r.frame, VADUserStoppedSpeakingFrame)
        and r.direction.name == "DOWNSTREAM"
        and r.at >= since
    ]
    assert stops, "the VAD never reported the end of speech"
    return stops[-1]


async def say(call: CallHarness, name: str) -> tuple[float, Recorded, list[Recorded]]:
    """Speak one bank WAV after a pause; returns (VAD end of speech, final, its interims)."""
    await call.silence(300)
    since = call.now
    await call.speak(sample(name))
    await call.silence(400)
    final = await call.wait_for(TranscriptionFrame, after=since, timeout=WAIT_SECS)
    interims = [
        r
        for r in call.frames
        if isinstance(r.frame, InterimTranscriptionFrame) and since <= r.at <= final.at
    ]
    return vad_stop_after(call, since), final, interims


# -- params, validation and registration -------------------------------------------------------


def test_params_are_checked() -> None:
    assert sphinx.SphinxSTTParams(language="en").language == "en"
    with pytest.raises(ValidationError, match="US English only"):
        sphinx.SphinxSTTParams(language="fr-FR")
    with pytest.raises(ValidationError, match="greater than or equal to 20"):
        sphinx.SphinxSTTParams(batch_ms=5)
    with pytest.raises(ValidationError, match="extra"):
        sphinx.SphinxSTTParams.model_validate({"model": "big"})


def test_validate_accepts_sphinx_and_names_bad_params(pipeline_file: WritePipeline) -> None:
    good = load_pipeline(pipeline(pipeline_file, preroll_ms=300, second_pass="true"))
    assert good.step("stt").provider.name == "sphinx"
    path = pipeline(pipeline_file, language="de", batch_ms=5000, beams=3)
    with pytest.raises(ConfigError) as error:
        load_pipeline(path)
    text = str(error.value)
    for expected in ("stt.language", "stt.batch_ms", "stt.beams: unknown key"):
        assert expected in text
    out = subprocess.run(
        [sys.executable, "-m", "voicebot.cli", "validate", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0
    assert "stt.language" in out.stdout + out.stderr


def test_importing_the_module_leaves_pocketsphinx_unloaded() -> None:
    code = "import sys, voicebot.services.sphinx; print('pocketsphinx' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "False"


def test_a_missing_pocketsphinx_names_the_install_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib.util

    real = importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        return None if name == "pocketsphinx" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    context = BuildContext(call_id="c", audio=AudioSpec(), resources=SharedResources())
    message = "pip install 'voicebot[local]' (missing: pocketsphinx)"
    with pytest.raises(LocalSpeechNotInstalledError, match=re.escape(message)):
        sphinx.sphinx_stt(sphinx.SphinxSTTParams(), context)


# -- transcription through a pipeline ----------------------------------------------------------


@pytest.mark.slow
async def test_bank_turns_come_back_with_their_key_words_partials_first(
    pipeline_file: WritePipeline, resources: SharedResources
) -> None:
    latencies: list[float] = []
    async with CallHarness(pipeline(pipeline_file), resources=resources) as call:
        for name, expected in KEY_WORDS.items():
            stop, final, interims = await say(call, name)
            heard = words(final.frame.text)  # type: ignore[attr-defined]
            assert all(word in heard for word in expected), (name, final.frame)
            assert isinstance(final.frame, TranscriptionFrame) and final.frame.finalized
            # Partials grow while the caller speaks: the first comes before the speech ended,
            # which the VAD reports stop_secs (0.2 s) later. (Decoding runs on a thread in real
            # time while the harness's clock is virtual, so how far ahead it comes depends on
            # the machine's load: 0.26 s on a busy CI run, 0.5 s and more when idle.)
            assert len(interims) >= 2, name
            assert interims[0].at < stop - 0.2
            assert final.at >= stop
            latencies.append(final.at - stop)
    assert len(call.transcripts) == 4
    print(
        "\nsphinx stt: VAD end of speech → final transcript "
        f"median {statistics.median(latencies) * 1000:.0f} ms, all "
        + ", ".join(f"{t * 1000:.0f}" for t in latencies)
    )
    # A bound that catches decoding left until the end, not a busy CPU.
    assert statistics.median(latencies) < sphinx.SPHINX_TTFS_P99 * 2


@pytest.mark.slow
async def test_24khz_input_is_resampled(
    pipeline_file: WritePipeline, resources: SharedResources
) -> None:
    async with CallHarness(pipeline(pipeline_file, 24000), resources=resources) as call:
        await call.silence(300)
        await call.send(VADUserStartedSpeakingFrame(start_secs=0.2))
        await call.speak(read_wav(sample("bank_balance"), 24000))
        await call.silence(200)
        await call.send(VADUserStoppedSpeakingFrame(stop_secs=0.2))
        final = await call.wait_for(TranscriptionFrame, timeout=WAIT_SECS)
    assert words(final.frame.text) == ["what", "is", "my", "balance"]  # type: ignore[attr-defined]


@pytest.mark.slow
async def test_run_test_at_16khz_without_interims(resources: SharedResources) -> None:
    """The service alone under pipecat's ``run_test``, audio sent as fast as it can go."""
    rate = 16000
    service = sphinx.SphinxSTTService(
        params=sphinx.SphinxSTTParams(interim=False),
        pool=sphinx.decoder_pool(resources),
        executor=sphinx.sphinx_executor(resources),
        sample_rate=rate,
    )
    audio = paced(read_wav(sample("bank_bill"), rate) + bytes(6400), rate)
    down, _ = await run_test(
        service,
        frames_to_send=[VADUserStartedSpeakingFrame(), *audio, VADUserStoppedSpeakingFrame()],
    )
    texts = [f for f in down if isinstance(f, TranscriptionFrame)]
    assert not [f for f in down if isinstance(f, InterimTranscriptionFrame)]
    assert [words(f.text) for f in texts] == [["i", "need", "help", "with", "my", "bill"]]
    sent = sum(isinstance(f, InputAudioRawFrame) for f in audio)
    assert sum(isinstance(f, InputAudioRawFrame) for f in down) == sent


async def transcribe_alone(resources: SharedResources, name: str) -> list[str]:
    """Final transcripts of one bank WAV through a service of its own under ``run_test``."""
    rate = 16000
    service = sphinx.SphinxSTTService(
        params=sphinx.SphinxSTTParams(),
        pool=sphinx.decoder_pool(resources),
        executor=sphinx.sphinx_executor(resources),
        sample_rate=rate,
    )
    audio = paced(bytes(8000) + read_wav(sample(name), rate) + bytes(6400), rate)
    down, _ = await run_test(
        service,
        frames_to_send=[VADUserStartedSpeakingFrame(), *audio, VADUserStoppedSpeakingFrame()],
    )
    return [f.text for f in down if isinstance(f, TranscriptionFrame)]


# -- sharing and memory ------------------------------------------------------------------------


@pytest.mark.slow
async def test_callers_speaking_at_once_share_the_language_model() -> None:
    names = ["bank_bill", "bank_balance"]
    alone = [await transcribe_alone(SharedResources(), name) for name in names]
    shared = SharedResources()
    try:
        together = await asyncio.gather(*(transcribe_alone(shared, name) for name in names))
        pool = sphinx.decoder_pool(shared)
        assert pool.created == 2  # two utterances at once: two decoders, one language model
    finally:
        await shared.aclose()
    assert list(together) == alone
    assert all(len(texts) == 1 for texts in alone)


@pytest.mark.slow
async def test_decoders_are_lent_per_utterance_and_shared_by_calls(
    pipeline_file: WritePipeline,
) -> None:
    shared = SharedResources()
    try:
        for call_id in ("call-1", "call-2"):
            async with CallHarness(
                pipeline(pipeline_file), resources=shared, call_id=call_id
            ) as call:
                for name in ("bank_balance", "bank_bill"):
                    await say(call, name)
            assert len(call.transcripts) == 2
        pool = sphinx.decoder_pool(shared)
        # One caller speaks at a time: one decoder served four utterances of two calls.
        assert pool.created == 1
        assert pool.idle == 1
    finally:
        await shared.aclose()


@pytest.mark.slow
def test_memory_of_a_decoder() -> None:
    code = """
import voicebot.processors
from voicebot.services import sphinx

def rss_mb():
    status = open("/proc/self/status").read().split("VmRSS:")[1]
    return int(status.split()[0]) / 1024

pool = sphinx.DecoderPool()
before = rss_mb()
pool.fill(1)
one = rss_mb()
pool.fill(2)
print(f"{before:.0f} {one:.0f} {rss_mb():.0f}")
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    before, one, two = (float(v) for v in out.stdout.split())
    print(
        f"\nsphinx: RSS {before:.0f} MB, one decoder +{one - before:.0f} MB, two +{two - before:.0f}"
    )
    # Each decoder has its own acoustic model, dictionary and search tables (lent per
    # utterance, not per call); the second does not load the language model again.
    assert 20 < two - one < 0.8 * (one - before)


@pytest.mark.slow
async def test_a_call_ending_mid_utterance_gives_its_decoder_back(
    pipeline_file: WritePipeline,
) -> None:
    shared = SharedResources()
    try:
        async with CallHarness(pipeline(pipeline_file), resources=shared) as call:
            await call.silence(300)
            await call.speak(read_wav(sample("bank_account"), 16000)[: 2 * 16000 * 2])
            await call.wait_for(InterimTranscriptionFrame, timeout=WAIT_SECS)
        # The call was cancelled while the caller spoke: the pool finishes the utterance.
        pool = sphinx.decoder_pool(shared)
        for _ in range(200):
            if pool.idle == pool.created == 1:
                break
            await asyncio.sleep(0.01)
        assert pool.idle == pool.created == 1
        assert call.transcripts == []
    finally:
        await shared.aclose()
