"""The bench's numbers: one side's summary, the ratios between the sides, the machine, a table.

Units are in the key names or below: ms for latencies, % of one core for CPU (a 2-core machine
tops out at 200), MB (10^6 bytes) for memory.

Ratios are ``pipecat / voicebot``: above 1, voicebot needs less (CPU, memory, overhead).

Latency percentiles count every turn: one never answered is infinitely late, and a percentile
that falls on such turns is None (``null``): see ``turns_unanswered``.
"""

from __future__ import annotations

import math
import os
import platform
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np

from voicebot.bench.budget import DeclaredLatency, Side
from voicebot.bench.callers import CallResult

MB = 1_000_000


def percentiles(values: Sequence[float | None]) -> dict[str, float | None]:
    """p50, p95, p99, max and mean of ``values``, rounded to 0.1.

    None in ``values`` is a turn that was never answered: infinitely late. A percentile that
    falls on one is None, and so are max and mean if there is any; so an overloaded server
    does not look fast because only its few answered turns are counted. All None if empty.
    """
    if not values:
        return {"p50": None, "p95": None, "p99": None, "max": None, "mean": None}
    a = np.asarray([math.inf if v is None else v for v in values], dtype=float)
    # The sample's own values, no interpolation: a percentile is a turn that happened.
    ranks = np.percentile(a, [50, 95, 99], method="inverted_cdf")

    def finite(x: float) -> float | None:
        return round(float(x), 1) if math.isfinite(x) else None

    p50, p95, p99 = (finite(x) for x in ranks)
    return {"p50": p50, "p95": p95, "p99": p99, "max": finite(a.max()), "mean": finite(a.mean())}


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def summarize(
    side: Side,
    calls: int,
    results: Sequence[CallResult],
    budget: DeclaredLatency,
    *,
    cpu_percent: float | None,
    machine_percent: float | None,
    rss_idle: int | None,
    rss_loaded: int | None,
    window_secs: float | None,
) -> dict[str, Any]:
    """One side's numbers at ``calls`` concurrent calls.

    ``cpu_percent`` and ``rss_loaded`` are the server's over the window when every call was
    connected (``window_secs`` long); ``rss_idle`` before the first call.
    """
    v2v = [ms for r in results for ms in r.latencies_ms]
    # turn index within the callers' script, for the turn's measured VAD stop
    turn_of = [i for r in results for i in range(len(r.latencies_ms))]
    turns = sum(len(r.latencies_ms) for r in results)
    rss_per_call = None
    if rss_idle is not None and rss_loaded is not None and calls:
        rss_per_call = (rss_loaded - rss_idle) / MB / calls
    lags = [r.max_send_lag_ms for r in results if r.connected_at is not None]
    errors = sorted({r.error for r in results if r.error})
    return {
        "calls": calls,
        "calls_ok": sum(r.ok for r in results),
        "calls_failed": sum(not r.ok for r in results),
        "errors": errors[:5],
        "turns": turns,
        "turns_unanswered": sum(ms is None for ms in v2v),
        "voice_to_voice_ms": percentiles(v2v),
        "overhead_ms": percentiles(
            [
                None if ms is None else budget.overhead_ms(side, ms, turn)
                for ms, turn in zip(v2v, turn_of, strict=True)
            ]
        ),
        "overhead_formula": budget.formula(side),
        "overhead_fixed_stop_ms": percentiles(
            [None if ms is None else budget.overhead_ms(side, ms) for ms in v2v]
        ),
        "late_frames": sum(r.pacing.late_frames for r in results),
        "underruns": sum(r.pacing.underruns for r in results),
        "bot_frames": sum(r.pacing.frames for r in results),
        "max_gap_ms": round(max((r.pacing.max_gap_ms for r in results), default=0.0), 1),
        "cpu_percent": _round(cpu_percent),
        "cpu_percent_per_call": _round(cpu_percent / calls if cpu_percent and calls else None, 2),
        "rss_mb_idle": _round(rss_idle / MB if rss_idle is not None else None),
        "rss_mb_loaded": _round(rss_loaded / MB if rss_loaded is not None else None),
        "rss_mb_per_call": _round(rss_per_call, 2),
        "machine_cpu_percent": _round(machine_percent),
        "window_secs": _round(window_secs),
        "caller_max_send_lag_ms": percentiles(lags)["max"],
    }


def _ratio(pipecat: float | None, voicebot: float | None) -> float | None:
    if pipecat is None or voicebot is None or voicebot <= 0:
        return None
    return round(pipecat / voicebot, 2)


def ratios(voicebot: dict[str, Any], pipecat: dict[str, Any]) -> dict[str, Any]:
    """``pipecat / voicebot`` for CPU, memory, overhead and latency at the same load."""
    return {
        "calls": voicebot["calls"],
        "cpu_percent": _ratio(pipecat["cpu_percent"], voicebot["cpu_percent"]),
        "rss_mb_per_call": _ratio(pipecat["rss_mb_per_call"], voicebot["rss_mb_per_call"]),
        "overhead_ms_p50": _ratio(pipecat["overhead_ms"]["p50"], voicebot["overhead_ms"]["p50"]),
        "overhead_ms_p95": _ratio(pipecat["overhead_ms"]["p95"], voicebot["overhead_ms"]["p95"]),
        "voice_to_voice_ms_p50": _ratio(
            pipecat["voice_to_voice_ms"]["p50"], voicebot["voice_to_voice_ms"]["p50"]
        ),
        "voice_to_voice_ms_p95": _ratio(
            pipecat["voice_to_voice_ms"]["p95"], voicebot["voice_to_voice_ms"]["p95"]
        ),
        "meaning": "pipecat / voicebot at the same number of calls; above 1 voicebot needs less",
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_mb() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) * 1024 / MB)
    except OSError:
        pass
    return None


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on (load average read at the call)."""
    return {
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "mem_total_mb": _mem_total_mb(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "pipecat": _version("pipecat-ai"),
        "voicebot": _version("voicebot"),
    }


def table(steps: Sequence[dict[str, Any]]) -> str:
    """The steps as a plain-text table, one line per side and number of calls."""
    head = (
        f"{'side':9} {'calls':>5} {'ok':>4} {'turns':>5} {'v2v p50':>8} {'p95':>6} "
        f"{'ovh p50':>8} {'p95':>6} {'p99':>6} {'late':>5} {'cpu %':>6} {'MB/call':>8}"
    )
    lines = [head, "-" * len(head)]

    def cell(value: Any, width: int) -> str:
        return f"{'-' if value is None else value:>{width}}"

    for step in steps:
        for side in ("voicebot", "pipecat"):
            s = step.get(side)
            if not s:
                continue
            lines.append(
                f"{side:9} {s['calls']:>5} {s['calls_ok']:>4} {s['turns']:>5} "
                f"{cell(s['voice_to_voice_ms']['p50'], 8)} "
                f"{cell(s['voice_to_voice_ms']['p95'], 6)} "
                f"{cell(s['overhead_ms']['p50'], 8)} {cell(s['overhead_ms']['p95'], 6)} "
                f"{cell(s['overhead_ms']['p99'], 6)} {s['late_frames']:>5} "
                f"{cell(s['cpu_percent'], 6)} {cell(s['rss_mb_per_call'], 8)}"
            )
        r = step.get("ratios")
        if r:
            lines.append(
                f"{'ratio':9} {r['calls']:>5}  pipecat/voicebot: cpu {r['cpu_percent']}x, "
                f"memory/call {r['rss_mb_per_call']}x, overhead p50 {r['overhead_ms_p50']}x, "
                f"p95 {r['overhead_ms_p95']}x"
            )
    return "\n".join(lines)
