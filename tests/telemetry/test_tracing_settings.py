"""Tracing from the ``OTEL_*`` variables: off by default, bad settings named, bounded shutdown."""

from __future__ import annotations

import threading
import time

import pytest

from voicebot.telemetry import Telemetry, TelemetrySettingsError, Tracing, TracingSettingsError


def otel_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("OtelBatch")]


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"OTEL_SERVICE_NAME": "voicebot"},
        {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"},
        {"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"},
    ],
)
def test_tracing_is_off_unless_asked_for(env: dict[str, str]) -> None:
    tracing = Tracing.from_env(env)
    assert not tracing.enabled and tracing.tracer is None and tracing.provider is None


async def test_an_otlp_endpoint_turns_tracing_on_and_shutdown_is_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The exporter reads its endpoint from the process environment, as the SDK does.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")  # nothing listens
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "5")
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    before = otel_threads()
    tracing = Tracing.from_env()
    assert tracing.enabled and tracing.tracer is not None and tracing.provider is not None
    assert tracing.provider.resource.attributes["service.name"] == "voicebot"
    assert len(otel_threads()) == len(before) + 1
    with tracing.tracer.start_as_current_span("unexportable"):
        pass
    started = time.monotonic()
    await tracing.aclose()
    assert time.monotonic() - started < 2.5
    assert not tracing.enabled


def test_service_name_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "bank-line")
    tracing = Tracing.from_env({"OTEL_TRACES_EXPORTER": "console"})
    assert tracing.provider is not None
    assert tracing.provider.resource.attributes["service.name"] == "bank-line"
    tracing.provider.shutdown()


def test_bad_settings_are_all_named_at_once() -> None:
    env = {
        "OTEL_TRACES_EXPORTER": "otlp,zipkin",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json",
        "VOICEBOT_TRACE_CONTENT": "sometimes",
    }
    with pytest.raises(TelemetrySettingsError) as raised:
        Telemetry.from_env(env)
    message = str(raised.value)
    assert "OTEL_TRACES_EXPORTER: unknown exporter 'zipkin'" in message
    assert "OTEL_EXPORTER_OTLP_PROTOCOL: unsupported protocol 'http/json'" in message
    assert "VOICEBOT_TRACE_CONTENT: expected true or false (got 'sometimes')" in message
    with pytest.raises(TracingSettingsError, match="zipkin"):
        Tracing.from_env(env)


def test_grpc_needs_its_package() -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc",
    }
    try:
        import opentelemetry.exporter.otlp.proto.grpc  # noqa: F401
    except ImportError:
        with pytest.raises(
            TracingSettingsError, match="pip install opentelemetry-exporter-otlp-proto-grpc"
        ):
            Tracing.from_env(env)
    else:
        pytest.skip("the gRPC exporter is installed")


def test_content_recording_is_off_by_default() -> None:
    assert Telemetry.from_env({}).record_content is False
    assert Telemetry.from_env({"VOICEBOT_TRACE_CONTENT": "true"}).record_content is True
