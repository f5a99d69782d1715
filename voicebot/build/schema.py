"""The shape of pipeline and transport-profile YAML files (pydantic models, unknown keys rejected).

A pipeline file::

    name: acs-phone
    transport: acs                      # → transports/acs.yaml
    audio: {in_rate: 16000, out_rate: 16000}
    call: {idle_timeout_secs: 120, reprompt_after_secs: 8}   # "Are you still there?" twice first
    imports: [redactor]                 # redactor.py next to this file registers `redactor`
    processors:                         # ordered, each a one-key mapping: name → params
      - vad: {provider: silero, stop_secs: 0.2}
      - stt: {provider: local}
      - my_company.redactor:PIIRedactor: {mask: "*"}
"""

from __future__ import annotations

from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from voicebot.build.kinds import FrameKind

SampleRate = Literal[8000, 16000, 24000]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AudioSpec(_Strict):
    """Sample rates (Hz) of the audio inside the pipeline; the transport converts at the edge."""

    in_rate: SampleRate = 16000
    out_rate: SampleRate = 16000


class CallSpec(_Strict):
    """How long a call may stay quiet or last before the pipeline ends it, and how a silent
    caller is reprompted first (:mod:`voicebot.processors.inactivity`)."""

    idle_timeout_secs: float | None = Field(default=300.0, gt=0)
    """End the call after this long with no speech from either side (None: never)."""
    max_duration_secs: float | None = Field(default=None, gt=0)
    """End the call after this long in all (None: no limit)."""
    reprompt_after_secs: float | None = Field(default=None, gt=0)
    """Say ``reprompt_text`` after this long with neither the caller nor the bot speaking
    (None: never reprompt)."""
    reprompt_text: str = Field(default="Are you still there?", min_length=1)
    """What the bot says to a silent caller (spoken by the pipeline's ``tts``)."""
    max_reprompts: int = Field(default=2, ge=1, le=10)
    """Reprompts in a row while the caller stays silent; then ``idle_timeout_secs`` ends the
    call."""

    @model_validator(mode="after")
    def _reprompt_before_hang_up(self) -> Self:
        idle, reprompt = self.idle_timeout_secs, self.reprompt_after_secs
        if reprompt is not None and idle is not None and reprompt >= idle:
            raise ValueError(
                f"reprompt_after_secs ({reprompt:g}) must be less than idle_timeout_secs "
                f"({idle:g}), or the call hangs up before the first reprompt"
            )
        return self


class PipelineFile(_Strict):
    """A pipeline file as written; processors are checked one by one against the registry."""

    name: str = Field(min_length=1)
    description: str = ""
    transport: str = Field(min_length=1)
    audio: AudioSpec = AudioSpec()
    call: CallSpec = CallSpec()
    imports: list[str] = []
    """Python modules to import before processors are looked up (their ``@processor``
    decorators register short names). The pipeline file's folder is searched first."""
    processors: list[dict[str, Any] | str] = Field(min_length=1)


class TransportProfile(_Strict):
    """How one kind of connection carries a call (``transports/<name>.yaml``)."""

    name: str
    description: str = ""
    rates: list[SampleRate] = [16000]
    """Sample rates (Hz) the far end can send and receive."""
    frame_ms: int = Field(default=20, gt=0)
    """Duration of one audio frame on the wire, in ms."""
    bidirectional: bool = True
    dtmf: bool = False
    emits: list[FrameKind] = [FrameKind.AUDIO_IN]
    """Kinds of frames the transport's input feeds into the pipeline."""
    consumes: list[FrameKind] = [FrameKind.AUDIO_OUT]
    """Kinds of frames the transport's output sends to the far end."""
