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

    voicebot: overhead = v2v − stop_secs − max(speech_timeout, stt_final) − llm_ttft − tts_ttfb
    pipecat:  overhead = v2v − stop_secs − stt_final − llm_ttft − tts_ttfb

Subtracting the speech timeout *and* the STT delay would count the same 150–200 ms twice. The
overhead also holds the VAD's window granularity (Silero looks at 32 ms windows) and the
network hop: it is everything a faster framework could win back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from voicebot.build.loader import PipelineSpec
from voicebot.services.fake import FakeLLMProviderParams
from voicebot.services.silero import SileroParams
from voicebot.testing.fakes import FakeSTTParams, FakeTTSParams

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

    def floor_ms(self, side: Side) -> float:
        """The voice-to-voice time of a turn with no framework time at all."""
        return self.vad_stop_ms + self.turn_end_ms(side) + self.llm_ttft_ms + self.tts_first_byte_ms

    def overhead_ms(self, side: Side, voice_to_voice_ms: float) -> float:
        """The framework's share of one turn's voice-to-voice time."""
        return voice_to_voice_ms - self.floor_ms(side)

    def formula(self, side: Side) -> str:
        """The subtraction, spelled out with this pipeline's numbers (for the report)."""
        turn = (
            f"max(speech_timeout {self.speech_timeout_ms:g}, stt_final {self.stt_final_ms:g})"
            if side == "voicebot"
            else f"stt_final {self.stt_final_ms:g}"
        )
        return (
            f"v2v − vad_stop {self.vad_stop_ms:g} − {turn} − llm_ttft {self.llm_ttft_ms:g} "
            f"− tts_first_byte {self.tts_first_byte_ms:g} = v2v − {self.floor_ms(side):g} ms"
        )
