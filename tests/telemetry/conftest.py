"""Telemetry tests: spans go to an in-memory exporter."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from voicebot.telemetry import Telemetry, Tracing


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def telemetry(exporter: InMemorySpanExporter) -> Telemetry:
    """Process telemetry whose spans land in ``exporter`` as each one ends."""
    return Telemetry(tracing=Tracing.to(exporter))
