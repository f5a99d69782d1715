"""A user-written processor: masks long digit runs (account numbers, PINs) in transcripts.

Registered under the short name ``redactor`` by the decorator; the pipeline YAML imports this
module with ``imports: [redactor]`` and then uses ``- redactor: {mask: "#"}``.
"""

from __future__ import annotations

import re
from typing import Any

from pipecat.frames.frames import Frame, InterimTranscriptionFrame, TranscriptionFrame
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from voicebot.build.registry import processor


@processor("redactor", consumes=["transcript"], emits=["transcript"], swallows=["transcript"])
class PIIRedactor(FrameProcessor):
    """Replaces every run of ``min_digits`` or more digits in a transcript with ``mask``."""

    def __init__(self, mask: str = "*", min_digits: int = 4, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._pattern = re.compile(rf"\d{{{min_digits},}}")
        self._mask = mask

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, TranscriptionFrame | InterimTranscriptionFrame):
            frame.text = self._pattern.sub(lambda m: self._mask * len(m.group()), frame.text)
        await self.push_frame(frame, direction)
