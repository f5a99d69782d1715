"""Log set-up: one place decides the level and keeps pipecat's per-frame chatter out.

``VOICEBOT_LOG_LEVEL`` (default INFO) sets voicebot's level; pipecat's own DEBUG lines (frame links,
task creation) appear only at DEBUG. Logs never carry secrets; transcripts appear only at DEBUG.
"""

from __future__ import annotations

import os
import sys

from loguru import logger


def configure_logging(level: str | None = None) -> None:
    """Send logs to stderr at ``level`` (or ``$VOICEBOT_LOG_LEVEL``, or INFO)."""
    chosen = (level or os.environ.get("VOICEBOT_LOG_LEVEL") or "INFO").upper()
    logger.remove()
    logger.add(
        sys.stderr,
        level=chosen,
        format="{time:HH:mm:ss.SSS} {level: <7} {name}: {message}",
        filter=lambda record: (
            chosen == "DEBUG"
            or not record["name"].startswith("pipecat")
            or record["level"].no >= logger.level("WARNING").no
        ),
    )
