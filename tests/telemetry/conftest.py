"""Telemetry tests: spans go to an in-memory exporter."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from telemetry_support import SCRIPTED_VAD_PIPELINE

from voicebot.telemetry import Telemetry, Tracing


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def telemetry(exporter: InMemorySpanExporter) -> Telemetry:
    """Process telemetry whose spans land in ``exporter`` as each one ends."""
    return Telemetry(tracing=Tracing.to(exporter))


@pytest.fixture
def scripted(pipeline_file: Callable[[str, str], Path]) -> Path:
    """A pipeline of scripted STT, LLM and TTS whose VAD frames the test sends (see ``speak``)."""
    return pipeline_file(SCRIPTED_VAD_PIPELINE, "scripted.yaml")
