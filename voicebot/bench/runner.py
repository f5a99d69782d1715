"""``voicebot bench``: N concurrent simulated ACS calls against voicebot and stock pipecat.

For each number of calls (one, or a ramp) and each side, the bench starts the server in a
process of its own (``voicebot serve`` with the bench pipeline, or
:mod:`voicebot.bench.stock_pipecat` with the same file), waits until it is ready, reads its idle
memory, places the calls from caller processes (:mod:`voicebot.bench.callers`) while it samples
the server's CPU time and memory, and stops the server. The sides run one after the other, never
at once, on the same machine, with the same callers.

CPU and memory are taken over the *steady window*, from the moment the last caller connected to
the moment the first one hung up: every call is live then. ``rss_mb_per_call`` is
``(largest RSS in the window − RSS before the first call) / calls``.

Latency and overhead: see :mod:`voicebot.bench.budget`; pacing: :mod:`voicebot.bench.callers`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from loguru import logger

from voicebot.bench.budget import DeclaredLatency, Side, measured_vad_stops
from voicebot.bench.callers import (
    LEAD_IN_MS,
    CallPlan,
    CallResult,
    place_calls_in_processes,
    plan_turns,
    wav_secs,
)
from voicebot.bench.procstat import ProcessSampler
from voicebot.bench.report import machine_info, ratios, summarize, table
from voicebot.bench.servers import process_gone, running_server
from voicebot.services.silero import SileroParams

#: Turns the callers speak, in order (WAV samples shipped with voicebot).
SAMPLES = ("help_bill", "balance", "hello")
#: Seconds between one side's run and the next, for the machine to settle.
COOL_DOWN_SECS = 2.0
#: Seconds after a server is ready before its idle memory is read.
SETTLE_SECS = 1.0
#: The steady window must last this long (s), else CPU and memory are taken over the whole run.
MIN_WINDOW_SECS = 2.0


@dataclass(frozen=True)
class BenchConfig:
    """What to run. Times in s, pauses in ms."""

    steps: tuple[int, ...]
    """Numbers of concurrent calls, run in this order."""
    duration_secs: float
    pipeline: Path
    sides: tuple[Side, ...] = ("voicebot", "pipecat")
    url: str | None = None
    """A running voicebot server (ws://host:port) instead of starting one."""
    pipecat_max_calls: int = 25
    """Steps above this run voicebot only (one stock process collapses well before)."""
    pause_ms: int = 3000
    stagger_secs: float | None = None
    """Callers connect evenly over this; None: see :meth:`stagger_for`."""
    log_dir: Path = Path("/tmp/voicebot-bench")
    workers: int = 1
    """voicebot's worker processes (``serve --workers``); stock pipecat runs one process."""

    def stagger_for(self, calls: int, cycle_secs: float) -> float:
        """Seconds over which ``calls`` callers connect.

        Unless set, one turn cycle (``cycle_secs``, a turn and its pause) or 0.1 s per call,
        whichever is longer, at most 10 s and a quarter of the duration. Spread over a whole
        cycle, the callers' turns end at evenly spread moments, as real callers' do, not all
        together (which would make per-turn work, like a turn model's inference, come in bursts).
        """
        if self.stagger_secs is not None:
            return self.stagger_secs
        return min(max(0.1 * calls, cycle_secs), 10.0, self.duration_secs / 4)


def parse_counts(text: str) -> tuple[int, ...]:
    """``"10,50,100"`` → ``(10, 50, 100)``; every count a positive integer."""
    try:
        counts = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or N,N,... (got {text!r})") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"call counts must be 1 or more (got {text!r})")
    return counts


def script_turns(config: BenchConfig) -> tuple[tuple[str, int], ...]:
    """The turns every caller plays: the samples in order, as many as the duration holds."""
    from voicebot.testing.wav import sample

    return plan_turns([sample(name) for name in SAMPLES], config.duration_secs, config.pause_ms)


def make_plans(
    calls: int,
    urls: Sequence[tuple[str, str]],
    config: BenchConfig,
    start_at: float,
    min_answer_ms: float,
) -> list[CallPlan]:
    """One plan per ``(url, call id)``; starts spread evenly over the stagger."""

    turns = script_turns(config)
    cycle = sum(wav_secs(path) + pause / 1000 for path, pause in turns) / len(turns)
    step = config.stagger_for(calls, cycle) / calls
    return [
        CallPlan(i, url, call_id, start_at + i * step, turns, min_answer_ms)
        for i, (url, call_id) in enumerate(urls)
    ]


def _steady_window(results: Sequence[CallResult]) -> tuple[float, float] | None:
    connected = [r for r in results if r.connected_at is not None and r.ended_at is not None]
    if not connected:
        return None
    t0 = max(r.connected_at for r in connected if r.connected_at is not None)
    t1 = min(r.ended_at for r in connected if r.ended_at is not None)
    if t1 - t0 >= MIN_WINDOW_SECS:
        return t0, t1
    t0 = min(r.connected_at for r in connected if r.connected_at is not None)
    t1 = max(r.ended_at for r in connected if r.ended_at is not None)
    return t0, t1


async def run_side(
    side: Side, calls: int, config: BenchConfig, budget: DeclaredLatency
) -> dict[str, Any]:
    """Run one side at ``calls`` concurrent calls; its summary (see ``report.summarize``)."""
    from voicebot.acs.tokens import media_url

    ids = [f"bench-{side}-{calls}-{i}-{uuid.uuid4().hex[:8]}" for i in range(calls)]
    # No answer can come sooner after the end of speech than the declared waits, even if the
    # VAD were to report the stop at once.
    earliest = budget.floor_ms(side) - budget.vad_stop_ms
    if side == "voicebot" and config.url:
        key = _signing_key_from_env()
        urls = [(media_url(config.url, key, call_id, 3600), call_id) for call_id in ids]
        results = await place_calls_in_processes(make_plans(calls, urls, config, _soon(), earliest))
        summary = _summary(side, calls, results, budget, None, None)
        summary["server"] = config.url
        return summary

    workers = config.workers if side == "voicebot" else 1
    async with running_server(
        side,
        config.pipeline,
        log_dir=config.log_dir,
        max_calls=max(200, calls + 10),
        workers=workers,
    ) as server:
        sampler = ProcessSampler(server.pid, children=workers > 1)
        before = sampler.read()
        await asyncio.sleep(SETTLE_SECS)
        idle = sampler.read()
        idle_cpu = sampler.cpu_percent(before.t, idle.t) if before and idle else None
        # How busy the machine was before any call: other work that competes with the run.
        idle_machine = sampler.machine_percent(before.t, idle.t) if before and idle else None
        sampler.start()
        try:
            if side == "voicebot":
                urls = [
                    (media_url(server.base_url, server.signing_key, call_id, 3600), call_id)
                    for call_id in ids
                ]
            else:
                ws = server.base_url.replace("http://", "ws://", 1)
                urls = [(f"{ws}/ws", call_id) for call_id in ids]
            results = await place_calls_in_processes(
                make_plans(calls, urls, config, _soon(), earliest)
            )
        finally:
            await sampler.stop()
        pid = server.pid
    summary = _summary(side, calls, results, budget, sampler, idle.rss if idle else None)
    summary["cpu_percent_idle"] = None if idle_cpu is None else round(idle_cpu, 1)
    summary["machine_cpu_percent_idle"] = None if idle_machine is None else round(idle_machine, 1)
    summary["server_exited"] = process_gone(pid)
    summary["workers"] = workers
    return summary


def _summary(
    side: Side,
    calls: int,
    results: Sequence[CallResult],
    budget: DeclaredLatency,
    sampler: ProcessSampler | None,
    rss_idle: int | None,
) -> dict[str, Any]:
    window = _steady_window(results)
    cpu = machine = rss = None
    if sampler is not None and window is not None:
        cpu = sampler.cpu_percent(*window)
        machine = sampler.machine_percent(*window)
        rss = sampler.max_rss(*window)
    return summarize(
        side,
        calls,
        results,
        budget,
        cpu_percent=cpu,
        machine_percent=machine,
        rss_idle=rss_idle,
        rss_loaded=rss,
        window_secs=(window[1] - window[0]) if window else None,
    )


def _soon() -> float:
    """When the first caller of a run connects: a moment after the caller processes start."""
    return time.monotonic() + 5.0


def _signing_key_from_env() -> bytes:
    from voicebot.config import load_settings

    settings = load_settings()
    if settings.signing_secret is None:
        raise ValueError("--url needs VOICEBOT_SIGNING_SECRET, the server's signing secret")
    return settings.signing_secret.get_secret_value().encode()


async def run_bench(config: BenchConfig) -> dict[str, Any]:
    """Every step, every side; the full report (see the README of ``benchmarks/``)."""
    from voicebot.build.loader import load_pipeline

    spec = load_pipeline(config.pipeline)
    budget = DeclaredLatency.from_spec(spec)
    # Each turn's VAD stop, measured on the script the callers will play (see budget.py).
    vad = spec.step("vad").params
    assert isinstance(vad, SileroParams)
    budget = budget.with_vad_stops(await measured_vad_stops(script_turns(config), LEAD_IN_MS, vad))
    report: dict[str, Any] = {
        "machine": {**machine_info(), "load_average_before": machine_info()["load_average"]},
        "config": {
            **{k: v for k, v in asdict(config).items() if k not in ("log_dir",)},
            "pipeline": str(config.pipeline),
            "declared_ms": asdict(budget),
            "floor_ms": {
                "voicebot": budget.floor_ms("voicebot"),
                "pipecat": budget.floor_ms("pipecat"),
            },
        },
        "steps": [],
    }
    first = True
    for calls in config.steps:
        step: dict[str, Any] = {"calls": calls}
        for side in config.sides:
            if side == "pipecat" and calls > config.pipecat_max_calls:
                step[side] = None
                step[f"{side}_skipped"] = f"over --pipecat-max-calls {config.pipecat_max_calls}"
                continue
            if not first:
                await asyncio.sleep(COOL_DOWN_SECS)
            first = False
            logger.info(f"bench: {side}, {calls} calls, {config.duration_secs:g} s")
            step[side] = await run_side(side, calls, config, budget)
        if step.get("voicebot") and step.get("pipecat"):
            step["ratios"] = ratios(step["voicebot"], step["pipecat"])
        report["steps"].append(step)
    report["machine"]["load_average_after"] = machine_info()["load_average"]
    del report["machine"]["load_average"]
    _headline(report)
    return report


def _headline(report: dict[str, Any]) -> None:
    """Put the largest step both sides ran (else the last) at the top of the report."""
    steps = report["steps"]
    both = [s for s in steps if s.get("voicebot") and s.get("pipecat")]
    top = both[-1] if both else steps[-1]
    for side in ("voicebot", "pipecat"):
        report[side] = top.get(side) or _last_of(steps, side)
    report["ratios"] = top.get("ratios")
    # Readers look for these first: order them so.
    for key in ("config", "machine", "steps"):
        report[key] = report.pop(key)


def _last_of(steps: Sequence[dict[str, Any]], side: str) -> dict[str, Any] | None:
    return next((s[side] for s in reversed(steps) if s.get(side)), None)


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """The run the command line asks for."""
    steps = parse_counts(args.ramp) if args.ramp else parse_counts(str(args.calls))
    sides: tuple[Side, ...] = (args.only,) if args.only else ("voicebot", "pipecat")
    return BenchConfig(
        steps=steps,
        duration_secs=args.duration,
        pipeline=args.pipeline,
        sides=sides,
        url=args.url,
        pipecat_max_calls=args.pipecat_max_calls,
        pause_ms=args.pause_ms,
        stagger_secs=args.stagger,
        workers=args.workers,
    )


def main(args: argparse.Namespace) -> int:
    """Run the bench the command line asks for; print the table, write JSON and plot."""
    try:
        config = config_from_args(args)
    except argparse.ArgumentTypeError as exc:
        print(f"voicebot bench: {exc}", file=sys.stderr)
        return 2
    if not config.pipeline.is_file():
        print(f"voicebot bench: no pipeline file {config.pipeline}", file=sys.stderr)
        return 2
    try:
        report = asyncio.run(run_bench(config))
    except KeyboardInterrupt:
        print("voicebot bench: interrupted; servers stopped", file=sys.stderr)
        return 130
    except (RuntimeError, ValueError) as exc:
        print(f"voicebot bench: {exc}", file=sys.stderr)
        return 1
    print(table(report["steps"]))
    text = json.dumps(report, indent=2)
    if args.json:
        Path(args.json).write_text(text + "\n")
        print(f"wrote {args.json}")
    if args.plot:
        from voicebot.bench.plot import write_plot

        write_plot(report, Path(args.plot))
        print(f"wrote {args.plot}")
    return 0
