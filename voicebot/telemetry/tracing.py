"""Where call traces go: an OpenTelemetry tracer set up from the standard ``OTEL_*`` variables.

Tracing is **off** unless the environment asks for it, and off means no tracer, no exporter and
no thread: call observers then skip every span. It is on when

* ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set (OTLP), or
* ``OTEL_TRACES_EXPORTER`` names an exporter: ``otlp`` or ``console`` (``none``: off);

and ``OTEL_SDK_DISABLED`` is not ``true``. (The OpenTelemetry SDK's own default exporter is
``otlp`` to localhost; a phone bot does not send its calls anywhere unasked.)

Everything else is read by the OpenTelemetry SDK and exporter as usual:
``OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL`` (``http/protobuf``, the default here, or ``grpc`` with
``opentelemetry-exporter-otlp-proto-grpc`` installed), ``…_ENDPOINT``, ``…_HEADERS``,
``…_TIMEOUT``, ``…_COMPRESSION``, ``OTEL_SERVICE_NAME`` (default ``voicebot``),
``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER[_ARG]`` and ``OTEL_BSP_*`` (batching).

The tracer comes from a ``TracerProvider`` of voicebot's own, never the process-global one, so
tests and other libraries' instrumentation stay apart. Spans are exported in batches from one
background thread; :meth:`Tracing.aclose` flushes them at shutdown within a bounded time.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import os
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from loguru import logger
from opentelemetry.trace import Tracer

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

__all__ = ["SHUTDOWN_TIMEOUT_SECS", "TracingSettingsError", "Tracing", "hash_caller"]

#: How long flushing and closing the exporter may take at shutdown, in seconds.
SHUTDOWN_TIMEOUT_SECS = 1.5

_EXPORTERS = ("otlp", "console", "none")
_PROTOCOLS = ("http/protobuf", "grpc")


class TracingSettingsError(ValueError):
    """The ``OTEL_*`` variables ask for something voicebot cannot do; lists every problem."""


class Tracing:
    """The tracer call observers use, or none when tracing is off.

    Attributes:
        tracer: The tracer, or None (tracing off).
        provider: The SDK provider behind it, or None.
    """

    def __init__(self, provider: TracerProvider | None = None) -> None:
        """Trace through ``provider`` (None: tracing off). See :meth:`from_env`."""
        self.provider = provider
        self.tracer: Tracer | None = (
            provider.get_tracer("voicebot.telemetry") if provider is not None else None
        )

    @property
    def enabled(self) -> bool:
        return self.tracer is not None

    @classmethod
    def off(cls) -> Tracing:
        return cls(None)

    @classmethod
    def to(cls, exporter: SpanExporter, *, batch: bool = False) -> Tracing:
        """Export to ``exporter``: each span as it ends, or in batches from a thread."""
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

        provider = TracerProvider(resource=_resource(), shutdown_on_exit=False)
        processor = BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
        provider.add_span_processor(processor)
        return cls(provider)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Tracing:
        """Tracing as the ``OTEL_*`` variables say (see the module docstring).

        Raises:
            TracingSettingsError: An exporter or protocol voicebot does not know, or one whose
                package is not installed; every problem at once.
        """
        env = os.environ if env is None else env
        if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
            return cls.off()
        problems: list[str] = []
        named = [
            name.strip().lower()
            for name in env.get("OTEL_TRACES_EXPORTER", "").split(",")
            if name.strip()
        ]
        for name in named:
            if name not in _EXPORTERS:
                problems.append(
                    f"OTEL_TRACES_EXPORTER: unknown exporter {name!r}; use one of "
                    f"{', '.join(_EXPORTERS)}"
                )
        endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get(
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        )
        wanted = [n for n in named if n != "none"] if named else (["otlp"] if endpoint else [])
        protocol_var = (
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
            if env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            else "OTEL_EXPORTER_OTLP_PROTOCOL"
        )
        protocol = env.get(protocol_var, "").strip().lower() or "http/protobuf"
        if "otlp" in wanted and protocol not in _PROTOCOLS:
            problems.append(
                f"{protocol_var}: unsupported protocol {protocol!r}; use http/protobuf or grpc"
            )
        exporters: list[SpanExporter] = []
        if not problems:
            for name in wanted:
                try:
                    exporters.append(_exporter(name, protocol))
                except ImportError as exc:
                    problems.append(str(exc))
        if problems:
            raise TracingSettingsError("tracing settings:\n  " + "\n  ".join(problems))
        if not exporters:
            return cls.off()

        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        provider = TracerProvider(resource=_resource(), shutdown_on_exit=False)
        for exporter in exporters:
            provider.add_span_processor(BatchSpanProcessor(exporter))
        logger.info(f"tracing calls to {', '.join(wanted)} ({protocol}, {endpoint or 'default'})")
        return cls(provider)

    async def aclose(self) -> None:
        """Export what is buffered and stop the exporter thread, within SHUTDOWN_TIMEOUT_SECS.

        The SDK's shutdown blocks (up to the exporter's own timeout when the collector is
        unreachable), so it runs on a daemon thread of its own, abandoned past the bound.
        """
        provider, self.provider, self.tracer = self.provider, None, None
        if provider is None:
            return
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def finished() -> None:
            if not done.done():
                done.set_result(None)

        def shut_down() -> None:
            try:
                provider.shutdown()
            finally:
                with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
                    loop.call_soon_threadsafe(finished)

        threading.Thread(target=shut_down, name="otel-shutdown", daemon=True).start()
        try:
            await asyncio.wait_for(done, SHUTDOWN_TIMEOUT_SECS)
        except TimeoutError:
            logger.warning("tracing: spans still unexported at shutdown were dropped")


def _resource() -> Any:
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource

    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: "voicebot"}))
    return resource


def _exporter(name: str, protocol: str) -> SpanExporter:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    package = (
        "opentelemetry-exporter-otlp-proto-grpc"
        if protocol == "grpc"
        else "opentelemetry-exporter-otlp-proto-http"
    )
    try:
        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                OTLPSpanExporter as GrpcExporter,
            )

            return GrpcExporter()
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    except ImportError:
        raise ImportError(
            f"OTLP over {protocol} needs the package {package} (pip install {package})"
        ) from None


def hash_caller(number: str, key: bytes) -> str:
    """A stable pseudonym for a caller's number: HMAC-SHA256 with ``key``, 32 hex digits.

    Keyed, because phone numbers are few enough to reverse a plain hash by trying them all.
    The same number gives the same pseudonym under the same key, so one caller's calls can be
    found together without their number being stored.
    """
    return hmac.new(key, number.strip().encode(), hashlib.sha256).hexdigest()[:32]
