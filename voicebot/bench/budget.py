"""The latency a turn is declared to take, read from the bench pipeline; the rest is overhead.

A caller turn's voice-to-voice time (end of the caller's speech → first bot audio, as the
simulated ACS peer sees it) is made of waits the pipeline declares and the framework's own time.
The declared waits, in ms, after the caller's last voiced frame:

- the VAD's ``stop_secs``: silence the VAD waits for before it reports the caller stopped;
- the end of the user turn. voicebot's stop strategy (pipecat's
  ``SpeechTimeoutUserTurnStopStrategy``) starts two waits at the VAD stop, side by side: the
  speech timeout (``user_speech_timeout_ms``) and the STT's final transcript
  (``final_delay_ms``); the turn ends when both are over, so this is their maximum. Stock
  pipecat's default (``TurnAnalyzerUserTurnStopStrategy`` with smart-turn) ends the turn when the
  model says "complete" and the final transcript is in: the declared part is the STT delay, the
  model's inference time is the framework's;
- the LLM's time to first token (``ttft_ms``; the bench replies in one chunk);
- the TTS's first byte (``first_byte_ms``).

So, per turn::

    voicebot: overhead = v2v − vad_stop − max(speech_timeout, stt_final) − llm_ttft − tts_ttfb
    pipecat:  overhead = v2v − vad_stop − stt_final − llm_ttft − tts_ttfb

The VAD stop time is not ``stop_secs`` exactly: Silero keeps hearing speech for a window or
three after the last frame loud enough to count as voiced, and it scores 32 ms windows, so a
turn's stop comes 200–280 ms after its speech ended, depending on the words and on where the
windows fall. That is the model's time, the same for any framework running it: the bench
measures it for every turn of the callers' script before it places a call
(:func:`measured_vad_stops`: the script's frames, in order, through a stock pipecat
``SileroVADAnalyzer`` with the pipeline's thresholds) and subtracts each turn's own. The report
also gives the overhead with ``stop_secs`` subtracted instead (``overhead_fixed_stop_ms``).

Subtracting the speech timeout *and* the STT delay would count the same 150–200 ms twice. The
overhead also holds the VAD's window granularity (Silero looks at 32 ms windows) and the
network hop: it is everything a faster framework could win back.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

from voicebot.build.loader import PipelineSpec
from voicebot.services.fake import FakeLLMProviderParams
from voicebot.services.silero import SileroParams
from voicebot.testing.acs_simulator import VOICED_DBFS, is_voiced
from voicebot.testing.fakes import FakeSTTParams, FakeTTSParams
from voicebot.testing.wav import frame_bytes, read_wav, split_frames

Side = Literal["voicebot", "pipecat"]
"""The two servers the bench compares."""


@dataclass(frozen=True)
class DeclaredLatency:
    """The declared waits of one turn of a pipeline, in ms (see the module docstring)."""

    vad_stop_ms: float
    speech_timeout_ms: float
    stt_final_ms: float
    llm_ttft_ms: float
    tts_first_byte_ms: float
    vad_stops_ms: tuple[float | None, ...] = ()
    """Each turn's measured VAD stop time (see :func:`measured_vad_stops`); where missing,
    ``vad_stop_ms``."""

    def with_vad_stops(self, stops: Sequence[float | None]) -> DeclaredLatency:
        """The same waits, with each turn's measured VAD stop time."""
        return replace(self, vad_stops_ms=tuple(stops))

    def turn_vad_stop_ms(self, turn: int | None = None) -> float:
        """The VAD stop time of turn ``turn`` (its measured one where known)."""
        if turn is not None and 0 <= turn < len(self.vad_stops_ms):
            measured = self.vad_stops_ms[turn]
            if measured is not None:
                return measured
        return self.vad_stop_ms

    @classmethod
    def from_spec(cls, spec: PipelineSpec) -> DeclaredLatency:
        """Read the waits from a pipeline with ``vad: silero`` and ``fake`` STT, LLM and TTS.

        Raises:
            ValueError: naming the file and every step or key that does not fit (a missing
                step, another provider, per-item latencies that make turns differ).
        """
        problems: list[str] = []
        providers = {step.name: step.provider.name for step in spec.steps}
        for name, wanted in (("vad", "silero"), ("stt", "fake"), ("llm", "fake"), ("tts", "fake")):
            if providers.get(name) != wanted:
                problems.append(f"{name}: needs provider {wanted} (got {providers.get(name)})")
        if problems:
            raise ValueError(f"{spec.file}: not a bench pipeline: " + "; ".join(problems))
        vad, stt = spec.step("vad").params, spec.step("stt").params
        llm, tts = spec.step("llm").params, spec.step("tts").params
        assert isinstance(vad, SileroParams) and isinstance(stt, FakeSTTParams)
        assert isinstance(llm, FakeLLMProviderParams) and isinstance(tts, FakeTTSParams)
        if any(t.delay_ms is not None for t in stt.script()):
            problems.append("stt.transcripts: per-transcript delay_ms makes turns differ")
        if any(r.ttft_ms is not None for r in llm.script()):
            problems.append("llm.replies: per-reply ttft_ms makes turns differ")
        if problems:
            raise ValueError(f"{spec.file}: " + "; ".join(problems))
        return cls(
            vad_stop_ms=vad.stop_secs * 1000,
            speech_timeout_ms=llm.user_speech_timeout_ms,
            stt_final_ms=stt.final_delay_ms,
            llm_ttft_ms=llm.ttft_ms,
            tts_first_byte_ms=tts.first_byte_ms,
        )

    def turn_end_ms(self, side: Side) -> float:
        """From the VAD's stop report to the end of the user turn, as declared."""
        if side == "voicebot":
            return max(self.speech_timeout_ms, self.stt_final_ms)
        return self.stt_final_ms

    def floor_ms(self, side: Side, turn: int | None = None) -> float:
        """The voice-to-voice time of a turn with no framework time at all (turn ``turn`` of
        the script, with its measured VAD stop; None: with ``stop_secs``)."""
        waits = self.turn_end_ms(side) + self.llm_ttft_ms + self.tts_first_byte_ms
        return self.turn_vad_stop_ms(turn) + waits

    def overhead_ms(self, side: Side, voice_to_voice_ms: float, turn: int | None = None) -> float:
        """The framework's share of one turn's voice-to-voice time (turn ``turn`` of the
        script; None: counting the VAD stop as ``stop_secs``)."""
        return voice_to_voice_ms - self.floor_ms(side, turn)

    def formula(self, side: Side) -> str:
        """The subtraction, spelled out with this pipeline's numbers (for the report)."""
        turn = (
            f"max(speech_timeout {self.speech_timeout_ms:g}, stt_final {self.stt_final_ms:g})"
            if side == "voicebot"
            else f"stt_final {self.stt_final_ms:g}"
        )
        known = sorted(ms for ms in self.vad_stops_ms if ms is not None)
        if known:
            stop = (
                f"vad_stop (measured per turn: {known[0]:g}–{known[-1]:g}, "
                f"median {statistics.median(known):g})"
            )
            rest = self.floor_ms(side) - self.vad_stop_ms
            return (
                f"v2v − {stop} − {turn} − llm_ttft {self.llm_ttft_ms:g} "
                f"− tts_first_byte {self.tts_first_byte_ms:g} = v2v − vad_stop − {rest:g} ms"
            )
        return (
            f"v2v − vad_stop {self.vad_stop_ms:g} − {turn} − llm_ttft {self.llm_ttft_ms:g} "
            f"− tts_first_byte {self.tts_first_byte_ms:g} = v2v − {self.floor_ms(side):g} ms"
        )


async def measured_vad_stops(
    turns: Sequence[tuple[str, int]],
    lead_in_ms: int,
    vad: SileroParams,
    *,
    sample_rate: int = 16000,
    voiced_dbfs: float = VOICED_DBFS,
) -> list[float | None]:
    """Each turn's VAD stop time in ms: from its last voiced frame to the VAD's stop report.

    The callers' script — ``lead_in_ms`` of silence, then each turn's WAV and its pause — goes
    20 ms frame by 20 ms frame, as the callers send it, through a stock pipecat
    ``SileroVADAnalyzer`` with ``vad``'s thresholds. A turn's speech ends at its last voiced
    frame (the callers' rule, :func:`~voicebot.testing.acs_simulator.is_voiced`); its stop is
    the first frame after that at which the analyzer is quiet again. None for a turn with no
    voiced frame or no stop before the next turn.
    """
    from pipecat.audio.vad.silero import SileroVADAnalyzer
    from pipecat.audio.vad.vad_analyzer import VADParams, VADState

    analyzer = SileroVADAnalyzer(sample_rate=sample_rate, params=VADParams(**vad.model_dump()))
    analyzer.set_sample_rate(sample_rate)
    silent = bytes(frame_bytes(sample_rate, 20))
    try:
        for _ in range(lead_in_ms // 20):
            await analyzer.analyze_audio(silent)
        stops: list[float | None] = []
        for path, pause_ms in turns:
            speech = list(split_frames(read_wav(path, sample_rate), sample_rate))
            frames = speech + [silent] * (pause_ms // 20)
            voiced = [i for i, pcm in enumerate(speech) if is_voiced(pcm, voiced_dbfs)]
            end = voiced[-1] if voiced else None
            stop: float | None = None
            speaking = False  # the analyzer heard speech at the turn's last voiced frame
            for i, pcm in enumerate(frames):
                state = await analyzer.analyze_audio(pcm)
                if i == end:
                    speaking = state in (VADState.SPEAKING, VADState.STOPPING)
                elif speaking and stop is None and end is not None and state == VADState.QUIET:
                    stop = (i - end) * 20.0
            stops.append(stop)
        return stops
    finally:
        await analyzer.cleanup()
