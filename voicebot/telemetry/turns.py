"""A caller's turn on the clock: from the end of their speech to the first bot audio sent.

A turn opens when the caller stops speaking (or, with no VAD in the pipeline, when a final
transcript arrives) and is answered by the first bot audio that leaves the pipeline. Until it is
answered, more speech from the caller extends the same turn: its end of speech moves to the
latest one. Its voice-to-voice latency is split into stages, each an interval measured from
frames:

============  ==============================================================================
``vad``       the VAD's wait: end of speech → ``VADUserStoppedSpeakingFrame``
``stt``       the STT's final: that VAD stop → the ``TranscriptionFrame`` after it
``llm``       an LLM's first token: ``LLMFullResponseStartFrame`` → its first ``LLMTextFrame``
              (or ``FunctionCallsStartedFrame``, for a response that only calls tools)
``tools``     a tool: ``FunctionCallInProgressFrame`` → its ``FunctionCallResultFrame``
``tts``       the TTS's first byte: ``TTSStartedFrame`` → its first ``TTSAudioRawFrame``
``overhead``  the rest: waiting for the turn to end (user-turn strategies), sentence
              aggregation, queues and hops between processors, the output transport
============  ==============================================================================

Stages are clipped to the turn, and where two overlap each instant counts once, for the later
stage in the pipeline (``tts`` > ``tools`` > ``llm`` > ``stt`` > ``vad``), so the stages always
add up to the voice-to-voice latency exactly (times are integer nanoseconds until the end).

**End of speech** is the VAD's stop minus its ``stop_secs``: the moment the caller's last audio
judged speech ended, as the VAD itself reckons it. It is exact to one VAD window (32 ms of audio
at 16 kHz; the VAD counts silence in whole windows). An observer cannot see which audio frame the
VAD judged speech last: the VAD processor does not say, and looking at every audio frame's every
hop would cost more than the rest of the observer. So when the VAD's inference runs late (a busy
process), its stop, and this end of speech, are late by as much and voice-to-voice reads that
much short; a caller-side measurement (the load benchmark) sees it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

__all__ = ["STAGE_ORDER", "Stage", "Turn", "TurnLatency", "split"]

Stage = Literal["vad", "stt", "llm", "tools", "tts"]

#: Named stages in pipeline order; where two overlap, the later one counts.
STAGE_ORDER: tuple[Stage, ...] = ("vad", "stt", "llm", "tools", "tts")
_RANK = {stage: rank for rank, stage in enumerate(STAGE_ORDER)}


@dataclass(frozen=True)
class TurnLatency:
    """How long the caller waited for an answer in one turn, and where the time went.

    Times in milliseconds; the six stages add up to ``voice_to_voice_ms``.

    Attributes:
        call_id: The call.
        turn: 1 for the caller's first turn, and so on.
        at: When the caller stopped speaking, ``time.time()`` seconds.
        voice_to_voice_ms: End of the caller's speech → first bot audio sent.
    """

    call_id: str
    turn: int
    at: float
    voice_to_voice_ms: float
    vad_ms: float
    stt_ms: float
    llm_ms: float
    tools_ms: float
    tts_ms: float
    overhead_ms: float

    @property
    def stages_ms(self) -> dict[str, float]:
        """``{"vad": …, "stt": …, "llm": …, "tools": …, "tts": …, "overhead": …}`` (ms)."""
        return {
            "vad": self.vad_ms,
            "stt": self.stt_ms,
            "llm": self.llm_ms,
            "tools": self.tools_ms,
            "tts": self.tts_ms,
            "overhead": self.overhead_ms,
        }

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """``900 ms (vad 200, stt 150, llm 300, tools 0, tts 150, overhead 100)``."""
        parts = ", ".join(f"{k} {v:.0f}" for k, v in self.stages_ms.items())
        return f"{self.voice_to_voice_ms:.0f} ms ({parts})"


@dataclass
class Turn:
    """One caller turn while it is measured; times are integer nanoseconds on one clock.

    Attributes:
        index: 1 for the caller's first turn.
        speech_end: End of the caller's speech (see the module docstring).
        vad_stop: The latest VAD stop of this turn, if the pipeline has a VAD.
        answered_at: When the first bot audio left; None while the caller waits.
        intervals: ``(stage, start, end)`` of the work done for this turn.
    """

    index: int
    speech_end: int
    vad_stop: int | None = None
    answered_at: int | None = None
    intervals: list[tuple[Stage, int, int]] = field(default_factory=list)

    def caller_spoke(self, vad_stop: int, stop_ns: int) -> None:
        """The VAD heard the caller stop (again): the turn's speech ends ``stop_ns`` before."""
        self.vad_stop = vad_stop
        self.speech_end = vad_stop - stop_ns
        self.intervals.append(("vad", self.speech_end, vad_stop))

    def add(self, stage: Stage, start: int, end: int) -> None:
        if end > start:
            self.intervals.append((stage, start, end))

    def latency(self, call_id: str, epoch_offset_ns: int) -> TurnLatency:
        """The answered turn's latency; ``epoch_offset_ns`` turns this clock into epoch time."""
        if self.answered_at is None:
            raise ValueError(f"turn {self.index} has not been answered")
        parts = split(self.speech_end, self.answered_at, self.intervals)
        return TurnLatency(
            call_id=call_id,
            turn=self.index,
            at=(self.speech_end + epoch_offset_ns) / 1e9,
            voice_to_voice_ms=(self.answered_at - self.speech_end) / 1e6,
            vad_ms=parts["vad"] / 1e6,
            stt_ms=parts["stt"] / 1e6,
            llm_ms=parts["llm"] / 1e6,
            tools_ms=parts["tools"] / 1e6,
            tts_ms=parts["tts"] / 1e6,
            overhead_ms=parts["overhead"] / 1e6,
        )


def split(start: int, end: int, intervals: list[tuple[Stage, int, int]]) -> dict[str, int]:
    """Split ``[start, end]`` among the stages' ``intervals`` (see the module docstring).

    Returns nanoseconds for every stage and ``overhead``; they add up to ``end - start``.
    """
    clipped = [
        (_RANK[stage], max(a, start), min(b, end))
        for stage, a, b in intervals
        if min(b, end) > max(a, start)
    ]
    parts = dict.fromkeys((*STAGE_ORDER, "overhead"), 0)
    bounds = sorted({start, end, *(a for _, a, _ in clipped), *(b for _, _, b in clipped)})
    for a, b in zip(bounds, bounds[1:], strict=False):
        covering = [rank for rank, s, e in clipped if s <= a and e >= b]
        stage = STAGE_ORDER[max(covering)] if covering else "overhead"
        parts[stage] += b - a
    return parts
