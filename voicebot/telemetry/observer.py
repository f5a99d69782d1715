"""One call seen from its frames: per-turn latency, metrics, and (when tracing is on) its trace.

:class:`CallObserver` is a pipecat observer attached to one call (``CallRunner(observers=[…])``).
For every caller turn it measures the voice-to-voice latency and its stages (see
:mod:`voicebot.telemetry.turns`), then logs one structured line, hands a :class:`TurnLatency`
to its listeners and records it in the process's :class:`~voicebot.telemetry.metrics.Metrics`.
With a tracer it also writes the call's spans (see :mod:`voicebot.telemetry.trace`).

Why not pipecat's own tracing (``PipelineWorker(enable_tracing=True)``)? It serves a
conversation app well, but for phone calls this observer is leaner and safer: pipecat's spans
come from decorators on each service class and wrap the services' ``push_frame`` (a cost on
every frame, audio included); voicebot's fakes and its own services carry no such decorators;
it records transcripts and full prompts whenever it is on; it installs the process-global tracer
provider; and its TTFB figures read the wall clock, so tests on a virtual clock cannot check
them. Here the frames already in the pipeline say everything, the observer looks at each frame
once (``observe_every_push=False``), content is recorded only when asked for, and the same
measurements feed the log, the metrics and the trace.

Cost on the per-frame path: one dictionary lookup by the frame's type, cached per type; caller
audio returns at once and bot audio after a few attribute checks, allocating nothing.

Times come from the pipeline clock of each push (``FramePushed.timestamp``), so they are exact
even when the observer's queue runs behind; pass ``clock`` (seconds, e.g. the event loop's
time) to measure on another clock, such as the virtual clock of
:class:`voicebot.testing.CallHarness`.
"""

from __future__ import annotations

import inspect
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from loguru import logger
from opentelemetry.trace import Span, Tracer
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    CancelFrame,
    EndFrame,
    ErrorFrame,
    Frame,
    FunctionCallInProgressFrame,
    FunctionCallResultFrame,
    FunctionCallsStartedFrame,
    InputAudioRawFrame,
    InterruptionFrame,
    LLMContextFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    OutputAudioRawFrame,
    StartFrame,
    TranscriptionFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.observers.base_observer import BaseObserver, FramePushed
from pipecat.processors.audio.vad_processor import VADProcessor
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.services.llm_service import LLMService
from pipecat.services.stt_service import STTService
from pipecat.services.tts_service import TTSService
from pipecat.transports.base_input import BaseInputTransport
from pipecat.transports.base_output import BaseOutputTransport

from voicebot.agents.decisions import AgentDecisionFrame
from voicebot.telemetry.metrics import Metrics
from voicebot.telemetry.trace import Attributes, CallTrace, Event
from voicebot.telemetry.turns import Stage, Turn, TurnLatency

__all__ = ["CallObserver", "ErrorListener", "TurnListener"]

#: Called with each answered turn's latency; may be async. Runs on the call's observer task
#: (not the pipeline's), so a slow listener delays only later telemetry of that call.
TurnListener = Callable[[TurnLatency], Awaitable[None] | None]

#: Called with each error frame's source kind (``stt``, ``llm``, ``tts``, ``vad``,
#: ``transport``, ``pipeline``), category, message and whether it was fatal; must be quick.
ErrorListener = Callable[[str, str, str, bool], None]

_DOWN = FrameDirection.DOWNSTREAM
_Handler = Callable[[FramePushed], None]


@dataclass(eq=False)
class _Work:
    """What a service does for the caller (STT, LLM, tool, TTS), measured from frames."""

    name: str
    stage: Stage
    start: int
    turn: _Turn | None
    attributes: Attributes
    first: int | None = None
    end: int | None = None
    text: list[str] | None = None


@dataclass(eq=False)
class _Turn:
    """A turn, with what its span needs until it can be written."""

    turn: Turn
    span: Span | None = None
    children: list[tuple[_Work, int, str | None]] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)


class CallObserver(BaseObserver):
    """Per-turn latency, metrics and the trace of one call (see the module docstring).

    Call :meth:`finish` when the call is over (after ``CallRunner.run`` returns): it ends the
    call's trace with the outcome and counts the call in the metrics.

    Attributes:
        call_id: The call.
        listeners: Called with each answered turn's :class:`TurnLatency`, in order.
        error_listeners: Called with each error frame (see :data:`ErrorListener`).
        turns: The call's answered turns so far.
    """

    def __init__(
        self,
        call_id: str,
        *,
        correlation_id: str = "",
        caller_hash: str | None = None,
        pipeline: str = "",
        metrics: Metrics | None = None,
        tracer: Tracer | None = None,
        record_content: bool = False,
        listeners: Sequence[TurnListener] = (),
        clock: Callable[[], float] | None = None,
        output_transport: bool = True,
        **kwargs: Any,
    ) -> None:
        """Observe one call.

        Args:
            call_id: The ACS call connection id.
            correlation_id: The ACS correlation id, for the trace.
            caller_hash: The caller's pseudonym (see ``hash_caller``), never the number.
            pipeline: The pipeline's name, for the trace.
            metrics: Where to count calls, turns, latencies, barge-ins and errors. The call
                counts as active from now until :meth:`finish`.
            tracer: Write the call's spans here (None: no trace).
            record_content: Put transcripts, prompts, replies, spoken text and tool arguments
                and results on spans. They are personal data: off unless asked for.
            listeners: Initial :attr:`listeners`.
            clock: Seconds to measure by, instead of the pipeline clock of each push.
            output_transport: Whether the pipeline ends in an output transport, whose
                ``BotStartedSpeakingFrame`` marks the first bot audio sent. Without one (tests,
                offline simulation) the first bot audio frame pushed marks it.
        """
        super().__init__(observe_every_push=False, **kwargs)
        self.call_id = call_id
        self.listeners: list[TurnListener] = list(listeners)
        self.error_listeners: list[ErrorListener] = []
        self.turns: list[TurnLatency] = []
        self._metrics = metrics
        self._tracer = tracer
        self._content = record_content
        self._clock = clock
        self._output_transport = output_transport
        self._call_attributes: Attributes = {"voicebot.call.id": call_id}
        if correlation_id:
            self._call_attributes["voicebot.call.correlation_id"] = correlation_id
        if caller_hash:
            self._call_attributes["voicebot.call.caller_hash"] = caller_hash
        if pipeline:
            self._call_attributes["voicebot.pipeline"] = pipeline

        self._offset: int | None = None  # epoch ns minus clock ns
        self._trace: CallTrace | None = None
        self._turn: _Turn | None = None  # waiting for the bot's answer
        self._turn_count = 0
        self._stt_from: int | None = None  # the VAD stop the next transcript answers
        self._stt: _Work | None = None
        self._llm: _Work | None = None
        self._tts: _Work | None = None
        self._tools: dict[str, _Work] = {}
        self._context: Any = None  # the last LLM context seen (content recording only)
        self._bot_speaking = False
        self._ended_by: str | None = None
        self._ended_at: int | None = None  # when the pipeline was told to end
        self._closed = False
        self._finished = False
        self._answered: list[TurnLatency] = []  # to hand to listeners
        if metrics is not None:
            metrics.call_started()

        self._handlers: dict[type, _Handler | None] = {}
        self._rules: tuple[tuple[type[Frame], _Handler | None], ...] = (
            (InputAudioRawFrame, None),
            (TTSAudioRawFrame, self._on_tts_audio),
            (OutputAudioRawFrame, self._on_bot_audio),
            (VADUserStartedSpeakingFrame, self._on_user_started),
            (VADUserStoppedSpeakingFrame, self._on_user_stopped),
            (TranscriptionFrame, self._on_transcript),
            (LLMContextFrame, self._on_context),
            (LLMFullResponseStartFrame, self._on_llm_start),
            (LLMTextFrame, self._on_llm_text),
            (FunctionCallsStartedFrame, self._on_llm_calls),
            (LLMFullResponseEndFrame, self._on_llm_end),
            (FunctionCallInProgressFrame, self._on_tool_start),
            (FunctionCallResultFrame, self._on_tool_result),
            (TTSStartedFrame, self._on_tts_start),
            (TTSTextFrame, self._on_tts_text),
            (TTSStoppedFrame, self._on_tts_stop),
            (BotStartedSpeakingFrame, self._on_bot_started),
            (BotStoppedSpeakingFrame, self._on_bot_stopped),
            (InterruptionFrame, self._on_interruption),
            (AgentDecisionFrame, self._on_decision),
            (ErrorFrame, self._on_error),
            (StartFrame, self._on_start),
            (EndFrame, self._on_end),
            (CancelFrame, self._on_end),
        )
        self.frame_types = tuple(kind for kind, handler in self._rules if handler is not None)
        """The frames this observer handles (the rest are not passed to it; see
        :mod:`voicebot.build.observers`)."""
        self._first_tts_audio_due = False
        if output_transport:
            # Bot audio matters only for the TTS's first byte (the answer is marked by
            # BotStartedSpeakingFrame): the rest of each answer's 50 chunks a second stay out.
            self.push_gate = self._push_gate

    # -- the per-frame path ----------------------------------------------------------------

    def _push_gate(self, frame: Frame) -> bool:
        """At push time: bot audio only up to the first TTS chunk after each ``TTSStartedFrame``
        (see :mod:`voicebot.build.observers`); every other frame."""
        if not isinstance(frame, OutputAudioRawFrame):
            if isinstance(frame, TTSStartedFrame):
                self._first_tts_audio_due = True
            return True
        if isinstance(frame, TTSAudioRawFrame) and self._first_tts_audio_due:
            self._first_tts_audio_due = False
            return True
        return False

    async def on_push_frame(self, data: FramePushed) -> None:
        kind = type(data.frame)
        try:
            handler = self._handlers[kind]
        except KeyError:
            handler = self._handlers[kind] = self._resolve(kind)
        if handler is None:
            return
        handler(data)
        if self._answered:
            await self._notify()

    def _resolve(self, kind: type) -> _Handler | None:
        for frame_type, handler in self._rules:
            if issubclass(kind, frame_type):
                return handler
        return None

    # -- clock ---------------------------------------------------------------------------------

    def _at(self, data: FramePushed) -> int:
        """When ``data`` was pushed, in nanoseconds on this observer's clock."""
        now = data.timestamp if self._clock is None else round(self._clock() * 1e9)
        if self._offset is None:
            self._offset = time.time_ns() - now
        return now

    def _now(self) -> int:
        """Now, on this observer's clock (epoch time until a frame has set the clock)."""
        if self._clock is not None:
            now = round(self._clock() * 1e9)
            if self._offset is None:
                self._offset = time.time_ns() - now
            return now
        return time.time_ns() - (self._offset or 0)

    def _epoch(self, at: int) -> int:
        return at + (self._offset or 0)

    # -- caller --------------------------------------------------------------------------------

    def _on_user_started(self, data: FramePushed) -> None:
        if data.direction is not _DOWN or not self._bot_speaking:
            return
        if self._metrics is not None:
            self._metrics.barge_ins.inc()
        self._event("barge_in", self._at(data), {})

    def _on_user_stopped(self, data: FramePushed) -> None:
        if data.direction is not _DOWN:
            return
        frame = data.frame
        assert isinstance(frame, VADUserStoppedSpeakingFrame)
        at = self._at(data)
        self._flush_stt()
        turn = self._open_turn(at)
        turn.turn.caller_spoke(at, round(frame.stop_secs * 1e9))
        self._stt_from = at

    def _on_transcript(self, data: FramePushed) -> None:
        if data.direction is not _DOWN:
            return
        frame = data.frame
        assert isinstance(frame, TranscriptionFrame)
        at = self._at(data)
        turn = self._open_turn(at)
        work = self._stt
        if self._stt_from is not None:  # the final transcript of the speech the VAD ended
            work = self._stt = self._work("stt", "stt", self._stt_from, data.source)
            self._first_output(work, at)
            self._stt_from = None
        elif work is None or work.turn is not turn:  # no VAD: the turn starts here
            return
        work.end = at  # a final may come in pieces: the last one ends the STT's work
        turn.turn.add("stt", work.start, at)
        if self._content:
            work.text = (work.text or []) + [frame.text.strip()]
            work.attributes["voicebot.transcript"] = " ".join(work.text)

    def _flush_stt(self) -> None:
        """The STT's work on the last speech is over: write its span."""
        work, self._stt = self._stt, None
        if work is not None and work.end is not None:
            self._done(work, work.end)

    def _open_turn(self, at: int) -> _Turn:
        if self._turn is None:
            self._turn_count += 1
            self._turn = _Turn(Turn(index=self._turn_count, speech_end=at))
        return self._turn

    # -- LLM and tools -----------------------------------------------------------------------

    def _on_context(self, data: FramePushed) -> None:
        if self._content and data.direction is _DOWN:
            frame = data.frame
            assert isinstance(frame, LLMContextFrame)
            self._context = frame.context

    def _on_llm_start(self, data: FramePushed) -> None:
        if data.direction is not _DOWN:
            return
        at = self._at(data)
        if self._llm is not None:
            self._done(self._llm, at, incomplete=True)
        self._llm = self._work("llm", "llm", at, data.source)
        model = getattr(getattr(data.source, "settings", None), "model", None)
        if isinstance(model, str) and model:
            self._llm.attributes["gen_ai.request.model"] = model
        if self._content:
            self._llm.text = []
            if self._context is not None:
                self._llm.attributes["gen_ai.input.messages"] = _json(self._context.get_messages())

    def _on_llm_text(self, data: FramePushed) -> None:
        work = self._llm
        if work is None or data.direction is not _DOWN:
            return
        if work.first is None:
            self._first_output(work, self._at(data))
        if work.text is not None:
            frame = data.frame
            assert isinstance(frame, LLMTextFrame)
            work.text.append(frame.text)

    def _on_llm_calls(self, data: FramePushed) -> None:
        work = self._llm
        if work is not None and work.first is None and data.direction is _DOWN:
            self._first_output(work, self._at(data))

    def _on_llm_end(self, data: FramePushed) -> None:
        if self._llm is not None and data.direction is _DOWN:
            work, self._llm = self._llm, None
            self._done(work, self._at(data))

    def _on_tool_start(self, data: FramePushed) -> None:
        if data.direction is not _DOWN:
            return
        frame = data.frame
        assert isinstance(frame, FunctionCallInProgressFrame)
        work = self._work("tool", "tools", self._at(data), data.source)
        work.attributes["gen_ai.tool.name"] = frame.function_name
        work.attributes["gen_ai.tool.call.id"] = frame.tool_call_id
        if self._content:
            work.attributes["gen_ai.tool.call.arguments"] = _json(frame.arguments)
        self._tools[frame.tool_call_id] = work

    def _on_tool_result(self, data: FramePushed) -> None:
        if data.direction is not _DOWN:
            return
        frame = data.frame
        assert isinstance(frame, FunctionCallResultFrame)
        work = self._tools.pop(frame.tool_call_id, None)
        if work is None:
            return
        at = self._at(data)
        work.first = at
        work.attributes["voicebot.ttfb_ms"] = (at - work.start) / 1e6
        if work.turn is not None:
            work.turn.turn.add("tools", work.start, at)
        if self._content:
            work.attributes["gen_ai.tool.call.result"] = _json(frame.result)
        self._done(work, at, error=frame.error)

    # -- TTS and the bot's audio -------------------------------------------------------------

    def _on_tts_start(self, data: FramePushed) -> None:
        if data.direction is not _DOWN:
            return
        at = self._at(data)
        if self._tts is not None:
            self._done(self._tts, at, incomplete=True)
        self._tts = self._work("tts", "tts", at, data.source)
        if self._content:
            self._tts.text = []

    def _on_tts_audio(self, data: FramePushed) -> None:
        work = self._tts
        if work is not None and work.first is None and data.direction is _DOWN:
            self._first_output(work, self._at(data))
        if not (self._output_transport or self._bot_speaking):
            self._on_bot_audio(data)

    def _on_bot_audio(self, data: FramePushed) -> None:
        if self._output_transport or self._bot_speaking or data.direction is not _DOWN:
            return
        self._bot_speaking = True
        self._answer(self._at(data))

    def _on_tts_text(self, data: FramePushed) -> None:
        work = self._tts
        if work is not None and work.text is not None and data.direction is _DOWN:
            frame = data.frame
            assert isinstance(frame, TTSTextFrame)
            work.text.append(frame.text)

    def _on_tts_stop(self, data: FramePushed) -> None:
        if data.direction is not _DOWN:
            return
        if self._tts is not None:
            work, self._tts = self._tts, None
            self._done(work, self._at(data))
        if not self._output_transport:
            self._bot_speaking = False

    def _on_bot_started(self, data: FramePushed) -> None:
        if self._output_transport and data.direction is _DOWN and not self._bot_speaking:
            self._bot_speaking = True
            self._answer(self._at(data))

    def _on_bot_stopped(self, data: FramePushed) -> None:
        if self._output_transport and data.direction is _DOWN:
            self._bot_speaking = False

    def _on_interruption(self, data: FramePushed) -> None:
        if data.direction is not _DOWN:
            return
        at = self._at(data)
        for work in (self._llm, self._tts):
            if work is not None:
                work.attributes["voicebot.interrupted"] = True
                self._done(work, at)
        self._llm = self._tts = None
        self._bot_speaking = False

    def _answer(self, at: int) -> None:
        """The first bot audio went out: the waiting turn, if any, is answered."""
        if self._turn is None:
            return
        self._flush_stt()
        state, self._turn = self._turn, None
        turn = state.turn
        turn.answered_at = at
        latency = turn.latency(self.call_id, self._offset or 0)
        self.turns.append(latency)
        self._answered.append(latency)
        logger.bind(call_id=self.call_id, turn_latency=latency.as_dict()).info(
            f"call {self.call_id}: turn {turn.index} voice-to-voice {latency.summary()}"
        )
        if self._metrics is not None:
            self._metrics.turn(
                latency.voice_to_voice_ms / 1e3,
                {stage: ms / 1e3 for stage, ms in latency.stages_ms.items()},
            )
        attributes: Attributes = {
            "voicebot.turn": turn.index,
            "voicebot.turn.answered": True,
            "voicebot.latency.voice_to_voice_ms": latency.voice_to_voice_ms,
        }
        for stage, ms in latency.stages_ms.items():
            attributes[f"voicebot.latency.{stage}_ms"] = ms
        self._write_turn(state, at, attributes)

    async def _notify(self) -> None:
        answered, self._answered = self._answered, []
        for latency in answered:
            for listener in list(self.listeners):
                try:
                    result = listener(latency)
                    if inspect.isawaitable(result):
                        await result
                except Exception:
                    logger.exception(f"call {self.call_id}: turn latency listener failed")

    # -- decisions, errors, start and end ----------------------------------------------------

    def _on_decision(self, data: FramePushed) -> None:
        frame = data.frame
        assert isinstance(frame, AgentDecisionFrame)
        record = frame.record
        attributes: Attributes = {
            "voicebot.decision.kind": record.kind,
            "voicebot.decision.agent": record.agent,
            "voicebot.decision.turn": record.turn,
        }
        for key in ("engine", "tool", "target", "reason"):
            value = getattr(record, key)
            if value:
                attributes[f"voicebot.decision.{key}"] = str(value)
        if record.latency_ms is not None:
            attributes["voicebot.decision.latency_ms"] = float(record.latency_ms)
        if self._content:
            if record.args is not None:
                attributes["voicebot.decision.args"] = _json(record.args)
            if record.result is not None:
                attributes["voicebot.decision.result"] = _json(record.result)
        self._event("agent.decision", self._at(data), attributes)

    def _on_error(self, data: FramePushed) -> None:
        frame = data.frame
        assert isinstance(frame, ErrorFrame)
        source = _source_kind(frame.processor or data.source)
        category = frame.category.value if frame.category is not None else "unknown"
        if self._metrics is not None:
            self._metrics.record_error(source, category)
        attributes: Attributes = {
            "voicebot.error.source": source,
            "voicebot.error.category": category,
            "voicebot.error.fatal": bool(frame.fatal),
            "voicebot.error.message": frame.error,
        }
        self._event("error", self._at(data), attributes)
        for listener in list(self.error_listeners):
            try:
                listener(source, category, frame.error, bool(frame.fatal))
            except Exception:
                logger.exception(f"call {self.call_id}: error listener failed")

    def _on_start(self, data: FramePushed) -> None:
        self._call_trace(self._at(data))

    def _on_end(self, data: FramePushed) -> None:
        if data.direction is _DOWN and self._ended_by is None:
            self._ended_by = "completed" if isinstance(data.frame, EndFrame) else "cancelled"
            self._ended_at = self._at(data)

    async def cleanup(self) -> None:
        """The pipeline is gone: write what is still open (an unanswered turn, cut-off work)."""
        await super().cleanup()
        self._close()

    def finish(self, outcome: str | None = None, error: str | None = None) -> None:
        """The call is over: end its trace and count it. Safe to call more than once.

        Args:
            outcome: Why it ended (a ``CallOutcome`` value); default: ``completed`` if the
                pipeline ended with an ``EndFrame``, else ``cancelled``.
            error: What went wrong, for a call that failed.
        """
        if self._finished:
            return
        self._finished = True
        self._close()
        outcome = str(outcome or self._ended_by or "cancelled")
        if self._metrics is not None:
            self._metrics.call_finished(outcome)
        end = self._ended_at if self._ended_at is not None else self._now()
        trace = self._call_trace(end)  # a call that never started still gets its trace
        if trace is not None:
            attributes: Attributes = {
                "voicebot.call.outcome": outcome,
                "voicebot.call.turns": self._turn_count,
            }
            if outcome == "error" and error is None:
                error = "the call failed"
            trace.end(self._epoch(end), attributes, error)

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        at = self._ended_at if self._ended_at is not None else self._now()
        self._flush_stt()
        for work in (self._llm, self._tts):
            if work is not None:
                self._done(work, at, incomplete=True)
        for work in self._tools.values():
            self._done(work, at, incomplete=True)
        self._llm = self._tts = None
        self._tools.clear()
        state, self._turn = self._turn, None
        if state is not None:
            if self._metrics is not None:
                self._metrics.turn(None, {})
            attributes: Attributes = {
                "voicebot.turn": state.turn.index,
                "voicebot.turn.answered": False,
            }
            self._write_turn(state, max(at, state.turn.speech_end), attributes)

    # -- spans ---------------------------------------------------------------------------------

    def _call_trace(self, at: int) -> CallTrace | None:
        if self._trace is None and self._tracer is not None:
            self._trace = CallTrace(self._tracer, self._epoch(at), self._call_attributes)
        return self._trace

    def _work(self, name: str, stage: Stage, start: int, source: FrameProcessor) -> _Work:
        return _Work(name, stage, start, self._turn, {"voicebot.service": source.name})

    def _first_output(self, work: _Work, at: int) -> None:
        work.first = at
        work.attributes["voicebot.ttfb_ms"] = (at - work.start) / 1e6
        if work.turn is not None:
            work.turn.turn.add(work.stage, work.start, at)

    def _done(
        self, work: _Work, end: int, *, incomplete: bool = False, error: str | None = None
    ) -> None:
        """``work`` is over: write its span now, or once its turn's span is written."""
        if self._tracer is None:
            return
        if incomplete:
            work.attributes["voicebot.incomplete"] = True
        if work.text and work.name in ("llm", "tts"):
            key = "gen_ai.output.messages" if work.name == "llm" else "voicebot.tts.text"
            work.attributes[key] = "".join(work.text) if work.name == "llm" else " ".join(work.text)
        state = work.turn
        if state is not None and state.span is None:
            state.children.append((work, end, error))
            return
        self._write(work, end, error, state.span if state is not None else None)

    def _write(self, work: _Work, end: int, error: str | None, parent: Span | None) -> None:
        trace = self._call_trace(work.start)
        if trace is not None:
            trace.record(
                work.name,
                self._epoch(work.start),
                self._epoch(end),
                work.attributes,
                parent=parent,
                error=error,
            )

    def _write_turn(self, state: _Turn, end: int, attributes: Attributes) -> None:
        trace = self._call_trace(state.turn.speech_end)
        if trace is None:
            return
        state.span = trace.record(
            "turn",
            self._epoch(state.turn.speech_end),
            self._epoch(end),
            attributes,
            events=state.events,
        )
        for work, work_end, error in state.children:
            self._write(work, work_end, error, state.span)
        state.children.clear()

    def _event(self, name: str, at: int, attributes: Attributes) -> None:
        """An event on the waiting turn's span, or on the call's if no turn is waiting."""
        if self._tracer is None:
            return
        event = Event(name, self._epoch(at), attributes)
        if self._turn is not None:
            self._turn.events.append(event)
        elif (trace := self._call_trace(at)) is not None:
            trace.event(event)


_SOURCE_KINDS: tuple[tuple[type, str], ...] = (
    (STTService, "stt"),
    (LLMService, "llm"),
    (TTSService, "tts"),
    (VADProcessor, "vad"),
    (BaseInputTransport, "transport"),
    (BaseOutputTransport, "transport"),
)


def _source_kind(processor: FrameProcessor | None) -> str:
    """``stt``, ``llm``, ``tts``, ``vad``, ``transport`` or ``pipeline``: what failed."""
    for processor_type, kind in _SOURCE_KINDS:
        if isinstance(processor, processor_type):
            return kind
    return "pipeline"


def _json(value: Any) -> str:
    return json.dumps(value, default=str, ensure_ascii=False)
