"""What a processor factory is given when a call's pipeline is built."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pipecat.processors.frame_processor import FrameProcessor

from voicebot.build.schema import AudioSpec
from voicebot.services.resources import SharedResources


@dataclass(frozen=True)
class BuildContext:
    """Per-call facts plus the process-wide resources a factory may draw on.

    Factories create fresh processors for every call; anything heavy and read-only (ONNX
    sessions, client pools) comes from ``resources`` and is shared by all calls of the process.
    """

    call_id: str
    audio: AudioSpec
    resources: SharedResources
    base_dir: Path = field(default_factory=Path.cwd)
    """Directory of the pipeline file: relative paths in params resolve against it."""
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass
class Built:
    """Processors one YAML entry contributes.

    ``processors`` go at the entry's place in the pipeline; ``tail`` goes after the transport's
    output (e.g. an assistant context aggregator that must only see what was actually played).
    """

    processors: list[FrameProcessor]
    tail: list[FrameProcessor] = field(default_factory=list)
