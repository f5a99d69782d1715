"""Telemetry of calls: per-turn latency from the audio, Prometheus metrics, OpenTelemetry traces.

* :class:`Telemetry` (one per process, :func:`telemetry_for`) holds the :class:`Metrics` served at
  ``GET /api/v1/metrics``, the tracer (off unless ``OTEL_*`` variables ask for it) and the
  process-wide turn-latency listeners.
* :class:`CallObserver` (one per call, ``telemetry.call(call_id, ...)``) watches the call's
  frames: every caller turn's voice-to-voice latency split into stages (:class:`TurnLatency`),
  logged, handed to listeners and recorded as metrics; and, with tracing on, the call's trace.
"""

from voicebot.telemetry.metrics import LATENCY_BUCKETS, STAGES, Metrics, PoolReader
from voicebot.telemetry.observer import CallObserver, TurnListener
from voicebot.telemetry.telemetry import (
    TELEMETRY_RESOURCE,
    Telemetry,
    TelemetrySettingsError,
    telemetry_for,
)
from voicebot.telemetry.tracing import Tracing, TracingSettingsError, hash_caller
from voicebot.telemetry.turns import TurnLatency

__all__ = [
    "LATENCY_BUCKETS",
    "STAGES",
    "TELEMETRY_RESOURCE",
    "CallObserver",
    "Metrics",
    "PoolReader",
    "Telemetry",
    "TelemetrySettingsError",
    "Tracing",
    "TracingSettingsError",
    "TurnLatency",
    "TurnListener",
    "hash_caller",
    "telemetry_for",
]
