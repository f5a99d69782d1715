"""The process's Prometheus metrics, in a registry of their own.

One :class:`Metrics` per server process (created with its :class:`~voicebot.telemetry.Telemetry`
in the app lifespan) holds every series ``GET /api/v1/metrics`` serves. It uses its own
``CollectorRegistry``, not prometheus-client's global default, so two apps in one test process
never share counts.

Series (latencies in seconds, the Prometheus base unit):

=====================================  ===================================================
``voicebot_active_calls``              calls running now
``voicebot_calls_total{outcome}``      finished calls by outcome (``completed``,
                                       ``cancelled``, ``idle``, ``max_duration``, ``error``)
``voicebot_turns_total{answered}``     caller turns; ``answered="false"``: the call ended
                                       before the bot said anything back
``voicebot_voice_to_voice_seconds``    end of the caller's speech → first bot audio out
``voicebot_turn_stage_seconds{stage}`` that time split into ``vad``, ``stt``, ``llm``,
                                       ``tools``, ``tts`` and ``overhead`` (see
                                       :mod:`voicebot.telemetry.turns`)
``voicebot_barge_ins_total``           the caller started speaking while the bot spoke
``voicebot_errors_total{source,        errors by where they came from (``stt``, ``llm``,
category}``                            ``tts``, ``vad``, ``transport``, ``pipeline``, or
                                       what :meth:`Metrics.record_error` was told) and
                                       pipecat's ``ErrorCategory``
``voicebot_bad_input_total{kind}``     rejected inbound media messages by kind
``voicebot_pool_size{pool,state}``     what each registered pool reports, read at scrape
=====================================  ===================================================

Label values are kept to small fixed sets (outcomes, stages, categories, serializer kinds,
pool names): never a call id or anything a caller sends.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from threading import Lock

from loguru import logger
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = [
    "CONTENT_TYPE",
    "LATENCY_BUCKETS",
    "STAGES",
    "Metrics",
    "PoolReader",
]

#: Content type of :meth:`Metrics.render` (the Prometheus text exposition format).
CONTENT_TYPE = CONTENT_TYPE_LATEST

#: Histogram buckets for voice-to-voice latency and its stages, in seconds.
LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5,
    0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0,
)  # fmt: skip

#: The parts of a turn's voice-to-voice latency, in pipeline order.
STAGES = ("vad", "stt", "llm", "tools", "tts", "overhead")

#: What a pool reports at scrape time: one number (its size) or numbers by state,
#: e.g. ``{"idle": 3, "in_use": 1}``.
PoolReader = Callable[[], float | Mapping[str, float]]


class _PoolCollector(Collector):
    """``voicebot_pool_size{pool,state}``, read from the registered pools at each scrape."""

    def __init__(self) -> None:
        self._pools: dict[str, PoolReader] = {}
        self._lock = Lock()

    def add(self, name: str, read: PoolReader) -> Callable[[], None]:
        with self._lock:
            if name in self._pools:
                raise ValueError(f"a pool named {name!r} is already registered")
            self._pools[name] = read

        def remove() -> None:
            with self._lock:
                if self._pools.get(name) is read:
                    del self._pools[name]

        return remove

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "voicebot_pool_size", "Objects in each shared pool, by state", labels=["pool", "state"]
        )
        with self._lock:
            pools = list(self._pools.items())
        for name, read in pools:
            try:
                reading = read()
            except Exception as exc:  # a broken reader must not break the scrape
                logger.warning(f"metrics: pool {name!r} could not be read: {exc!r}")
                continue
            states = {"size": reading} if isinstance(reading, int | float) else reading
            for state, value in states.items():
                family.add_metric([name, state], float(value))
        yield family

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "voicebot_pool_size", "Objects in each shared pool, by state", labels=["pool", "state"]
        )


class Metrics:
    """Every series of one process, in a registry of its own (see the module docstring).

    Thread-safe: services on worker threads may record too.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.active_calls = Gauge("voicebot_active_calls", "Calls running now", registry=r)
        self.calls = Counter(
            "voicebot_calls", "Finished calls, by outcome", ["outcome"], registry=r
        )
        self.turns = Counter(
            "voicebot_turns",
            "Caller turns; answered=false: the call ended before the bot answered",
            ["answered"],
            registry=r,
        )
        self.voice_to_voice = Histogram(
            "voicebot_voice_to_voice_seconds",
            "End of the caller's speech to the first bot audio sent, per answered turn",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.stage = Histogram(
            "voicebot_turn_stage_seconds",
            "Voice-to-voice latency by stage (the stages of a turn add up to it)",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.barge_ins = Counter(
            "voicebot_barge_ins", "The caller started speaking while the bot spoke", registry=r
        )
        self.errors = Counter(
            "voicebot_errors",
            "Errors, by where they came from and pipecat's error category",
            ["source", "category"],
            registry=r,
        )
        self.bad_input = Counter(
            "voicebot_bad_input",
            "Rejected inbound media messages, by kind",
            ["kind"],
            registry=r,
        )
        self._pools = _PoolCollector()
        r.register(self._pools)
        # Children resolved once, so recording a turn does no label lookups.
        self._stage_children = {stage: self.stage.labels(stage=stage) for stage in STAGES}

    # -- for the rest of voicebot -----------------------------------------------------------

    def record_bad_input(self, kind: str, count: int = 1) -> None:
        """Count ``count`` rejected inbound messages of ``kind`` (the serializer's kind name)."""
        self.bad_input.labels(kind=kind).inc(count)

    def record_error(self, source: str, category: str = "unknown") -> None:
        """Count an error from ``source`` (e.g. ``transport``) of ``category``."""
        self.errors.labels(source=source, category=category).inc()

    def register_pool(self, name: str, read: PoolReader) -> Callable[[], None]:
        """Report a pool's size at every scrape; returns a function that stops reporting it.

        ``read()`` runs on the scraping request (keep it cheap, no I/O) and returns the pool's
        size, or sizes by state (``{"idle": 3, "in_use": 1}``). A reader that raises is logged
        and skipped for that scrape.

        Raises:
            ValueError: A pool of that name is already registered.
        """
        return self._pools.add(name, read)

    # -- for the call observers ---------------------------------------------------------------

    def call_started(self) -> None:
        self.active_calls.inc()

    def call_finished(self, outcome: str) -> None:
        self.active_calls.dec()
        self.calls.labels(outcome=outcome).inc()

    def turn(self, voice_to_voice_secs: float | None, stages: Mapping[str, float]) -> None:
        """Count a turn; with its latency (seconds) and stages if it was answered."""
        if voice_to_voice_secs is None:
            self.turns.labels(answered="false").inc()
            return
        self.turns.labels(answered="true").inc()
        self.voice_to_voice.observe(voice_to_voice_secs)
        for stage, secs in stages.items():
            self._stage_children[stage].observe(secs)

    def render(self) -> bytes:
        """Every series in the Prometheus text format (:data:`CONTENT_TYPE`)."""
        return generate_latest(self.registry)
