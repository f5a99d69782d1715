"""The shape of pipeline and transport-profile YAML files (pydantic models, unknown keys rejected).

A pipeline file::

    name: acs-phone
    transport: acs                      # → transports/acs.yaml
    audio: {in_rate: 16000, out_rate: 16000}
    call: {idle_timeout_secs: 120}
    imports: [redactor]                 # redactor.py next to this file registers `redactor`
    processors:                         # ordered, each a one-key mapping: name → params
      - vad: {provider: silero, stop_secs: 0.2}
      - stt: {provider: local}
      - my_company.redactor:PIIRedactor: {mask: "*"}
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from voicebot.build.kinds import FrameKind

SampleRate = Literal[8000, 16000, 24000]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AudioSpec(_Strict):
    """Sample rates (Hz) of the audio inside the pipeline; the transport converts at the edge."""

    in_rate: SampleRate = 16000
    out_rate: SampleRate = 16000


class CallSpec(_Strict):
    """How long a call may stay quiet or last before the pipeline ends it."""

    idle_timeout_secs: float | None = Field(default=300.0, gt=0)
    """End the call after this long with no speech from either side (None: never)."""
    max_duration_secs: float | None = Field(default=None, gt=0)
    """End the call after this long in all (None: no limit)."""


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
