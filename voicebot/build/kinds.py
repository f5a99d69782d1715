"""Frame kinds: the coarse vocabulary processors use to declare what they consume and emit.

pipecat has hundreds of frame classes; a pipeline author thinks in a handful of streams. Each
processor registered with voicebot declares the kinds it consumes and emits, which is what
``voicebot validate`` uses to catch neighbours that cannot talk before a call ever starts.
"""

from __future__ import annotations

from enum import StrEnum

from pipecat.frames.frames import (
    Frame,
    InputAudioRawFrame,
    InputDTMFFrame,
    InterimTranscriptionFrame,
    LLMContextFrame,
    OutputAudioRawFrame,
    TextFrame,
    TranscriptionFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)


class FrameKind(StrEnum):
    """A stream of frames flowing downstream through a call's pipeline."""

    AUDIO_IN = "audio_in"
    """Caller audio: ``InputAudioRawFrame`` (PCM16 mono at the pipeline's input rate)."""
    AUDIO_OUT = "audio_out"
    """Bot audio: ``OutputAudioRawFrame`` / ``TTSAudioRawFrame`` at the output rate."""
    SPEECH = "speech"
    """Voice activity: the caller started / stopped speaking (VAD and turn frames)."""
    TRANSCRIPT = "transcript"
    """What the caller said: ``TranscriptionFrame`` and ``InterimTranscriptionFrame``."""
    DTMF = "dtmf"
    """Keypad digits: ``InputDTMFFrame``."""
    CONTEXT = "context"
    """A conversation ready for the LLM: ``LLMContextFrame``."""
    TEXT = "text"
    """Words for the bot to say: ``TextFrame`` / ``LLMTextFrame``."""


_KIND_OF: tuple[tuple[type[Frame] | tuple[type[Frame], ...], FrameKind], ...] = (
    (InputAudioRawFrame, FrameKind.AUDIO_IN),
    (OutputAudioRawFrame, FrameKind.AUDIO_OUT),
    (
        (
            VADUserStartedSpeakingFrame,
            VADUserStoppedSpeakingFrame,
            UserStartedSpeakingFrame,
            UserStoppedSpeakingFrame,
        ),
        FrameKind.SPEECH,
    ),
    ((TranscriptionFrame, InterimTranscriptionFrame), FrameKind.TRANSCRIPT),
    (InputDTMFFrame, FrameKind.DTMF),
    (LLMContextFrame, FrameKind.CONTEXT),
    (TextFrame, FrameKind.TEXT),
)


def kind_of(frame: Frame) -> FrameKind | None:
    """The kind a frame belongs to, or None for control and system frames."""
    for classes, kind in _KIND_OF:
        if isinstance(frame, classes):
            return kind
    return None
