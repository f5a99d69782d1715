"""The process's telemetry: its metrics, its tracer, and who listens to turn latencies.

One :class:`Telemetry` per server process, created in the app lifespan and kept in its
:class:`~voicebot.services.resources.SharedResources` (:func:`telemetry_for`), so the media
endpoint, ``GET /api/v1/metrics`` and the providers that own pools all reach the same one.
Each call gets a :class:`~voicebot.telemetry.observer.CallObserver` from :meth:`Telemetry.call`.

Settings, read once by :meth:`Telemetry.from_env`:

* the standard ``OTEL_*`` variables: whether and where to export traces (off by default, see
  :mod:`voicebot.telemetry.tracing`);
* ``VOICEBOT_TRACE_CONTENT=true``: put what was said (transcripts, prompts, replies, spoken
  text, tool arguments and results) on spans. Off by default: it is personal data;
* ``VOICEBOT_CALLER_HASH_KEY``: the key caller numbers are pseudonymised with on traces. Unset:
  a random key per process, so one caller's calls match only within that process.
"""

from __future__ import annotations

import inspect
import os
import secrets
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from loguru import logger

from voicebot.telemetry.metrics import Metrics, PoolReader
from voicebot.telemetry.observer import CallObserver, TurnListener
from voicebot.telemetry.tracing import Tracing, TracingSettingsError, hash_caller
from voicebot.telemetry.turns import TurnLatency

if TYPE_CHECKING:
    from voicebot.services.resources import SharedResources

__all__ = ["TELEMETRY_RESOURCE", "Telemetry", "TelemetrySettingsError", "telemetry_for"]

#: Key of the process's :class:`Telemetry` in its shared resources.
TELEMETRY_RESOURCE = "telemetry"

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


class TelemetrySettingsError(ValueError):
    """A telemetry variable has a bad value; lists every problem at once."""


class Telemetry:
    """Metrics, tracing and turn-latency listeners shared by the calls of one process.

    Attributes:
        metrics: The process's Prometheus series.
        tracing: Where call traces go (``tracing.enabled`` is False when off).
        record_content: Whether spans carry what was said.
    """

    def __init__(
        self,
        *,
        metrics: Metrics | None = None,
        tracing: Tracing | None = None,
        record_content: bool = False,
        caller_hash_key: bytes | None = None,
    ) -> None:
        """Telemetry with fresh metrics and, unless ``tracing`` is given, no tracing."""
        self.metrics = metrics or Metrics()
        self.tracing = tracing or Tracing.off()
        self.record_content = record_content
        self._hash_key = caller_hash_key
        self._listeners: list[TurnListener] = []

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Telemetry:
        """Telemetry as the environment says (see the module docstring).

        Raises:
            TelemetrySettingsError: Bad values, each named with its variable.
        """
        env = os.environ if env is None else env
        problems: list[str] = []
        raw = env.get("VOICEBOT_TRACE_CONTENT", "").strip().lower()
        if raw not in _TRUE + _FALSE:
            value = env["VOICEBOT_TRACE_CONTENT"]
            problems.append(f"VOICEBOT_TRACE_CONTENT: expected true or false (got {value!r})")
        key = env.get("VOICEBOT_CALLER_HASH_KEY", "")
        tracing: Tracing | None = None
        try:
            tracing = Tracing.from_env(env)
        except TracingSettingsError as exc:
            problems.extend(str(exc).splitlines()[1:])
        if problems:
            raise TelemetrySettingsError(
                "telemetry settings:\n  " + "\n  ".join(p.strip() for p in problems)
            )
        record_content = raw in _TRUE
        if record_content and tracing is not None and tracing.enabled:
            logger.warning("VOICEBOT_TRACE_CONTENT is on: traces carry what callers said")
        return cls(
            tracing=tracing,
            record_content=record_content,
            caller_hash_key=key.encode() if key else None,
        )

    def call(
        self,
        call_id: str,
        *,
        correlation_id: str = "",
        caller: str | None = None,
        pipeline: str = "",
        clock: Callable[[], float] | None = None,
        output_transport: bool = True,
    ) -> CallObserver:
        """The observer for one call; pass it to the call's ``CallRunner(observers=[…])``.

        The call counts as active from now until the observer's ``finish()``. ``caller`` (the
        caller's number) goes on the trace only as its keyed hash. ``clock`` and
        ``output_transport`` are as for :class:`CallObserver`.
        """
        observer = CallObserver(
            call_id,
            correlation_id=correlation_id,
            caller_hash=self.caller_hash(caller) if caller else None,
            pipeline=pipeline,
            metrics=self.metrics,
            tracer=self.tracing.tracer,
            record_content=self.record_content,
            listeners=[self._fan_out],
            clock=clock,
            output_transport=output_transport,
        )
        return observer

    def caller_hash(self, number: str) -> str:
        """The pseudonym of a caller's number on this process's traces."""
        if self._hash_key is None:
            logger.info(
                "VOICEBOT_CALLER_HASH_KEY is not set: caller numbers are hashed with a random "
                "key valid in this process only"
            )
            self._hash_key = secrets.token_bytes(32)
        return hash_caller(number, self._hash_key)

    def add_turn_listener(self, listener: TurnListener) -> Callable[[], None]:
        """Call ``listener`` with every answered turn of every call; returns its remover.

        A listener may be async; it runs on the observer task of the call the turn belongs to,
        so keep it quick (hand the data to a queue). One that raises is logged and kept.
        """
        self._listeners.append(listener)

        def remove() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return remove

    async def _fan_out(self, latency: TurnLatency) -> None:
        for listener in list(self._listeners):
            try:
                result = listener(latency)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                logger.exception(f"call {latency.call_id}: turn latency listener failed")

    def record_bad_input(self, kind: str, count: int = 1) -> None:
        """Count rejected inbound media messages of ``kind`` (see ``Metrics.record_bad_input``)."""
        self.metrics.record_bad_input(kind, count)

    def record_error(self, source: str, category: str = "unknown") -> None:
        """Count an error (see ``Metrics.record_error``)."""
        self.metrics.record_error(source, category)

    def register_pool(self, name: str, read: PoolReader) -> Callable[[], None]:
        """Report a pool's size at every scrape (see ``Metrics.register_pool``)."""
        return self.metrics.register_pool(name, read)

    async def aclose(self) -> None:
        """Flush and stop the trace exporter (bounded); metrics need no closing."""
        await self.tracing.aclose()


def telemetry_for(resources: SharedResources) -> Telemetry:
    """The process's :class:`Telemetry`, created from the environment on first use.

    Kept in ``resources`` and closed with them. Call it in the app lifespan so bad settings
    stop start-up and the exporter is ready before the first call.
    """
    return resources.get(TELEMETRY_RESOURCE, Telemetry.from_env, close=_close)


async def _close(telemetry: Telemetry) -> None:
    await telemetry.aclose()
