"""The bench's PNG: latency (p50, p95) and server CPU against the number of concurrent calls.

Needs matplotlib, imported only when a plot is asked for (``pip install matplotlib``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

COLORS = {"voicebot": "tab:blue", "pipecat": "tab:orange"}


def write_plot(report: dict[str, Any], path: Path) -> None:
    """Write the plot of ``report["steps"]`` to ``path`` (PNG).

    Raises:
        RuntimeError: matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("--plot needs matplotlib: pip install matplotlib") from None

    fig, (latency, cpu) = plt.subplots(1, 2, figsize=(11, 4.2))
    floors = report["config"]["floor_ms"]
    steps = report["steps"]
    finite = [
        s[side]["voice_to_voice_ms"][pct]
        for s in steps
        for side in COLORS
        if s.get(side)
        for pct in ("p50", "p95")
        if s[side]["voice_to_voice_ms"][pct] is not None
    ]
    # A percentile that fell on unanswered turns has no value: drawn as an x on this line.
    ceiling = 1.08 * max(finite, default=1000.0)
    for side, color in COLORS.items():
        points = [(s["calls"], s[side]) for s in steps if s.get(side)]
        if not points:
            continue
        calls = [n for n, _ in points]
        for pct, style in (("p50", "-o"), ("p95", "--s")):
            values = [r["voice_to_voice_ms"][pct] for _, r in points]
            shown = [ceiling if v is None else v for v in values]
            latency.plot(calls, shown, style, color=color, label=f"{side} {pct}")
            missing = [(n, ceiling) for n, v in zip(calls, values, strict=True) if v is None]
            if missing:
                latency.plot(*zip(*missing, strict=True), "x", color=color, markersize=11)
        latency.axhline(floors[side], color=color, linestyle=":", linewidth=1)
        cpu.plot(calls, [r["cpu_percent"] for _, r in points], "-o", color=color, label=side)
    if any(
        s[side]["voice_to_voice_ms"][pct] is None
        for s in steps
        for side in COLORS
        if s.get(side)
        for pct in ("p50", "p95")
    ):
        latency.axhline(ceiling, color="grey", linestyle="--", linewidth=0.8)
        latency.annotate("x: that share of turns got no answer", (0.02, 0.9), fontsize=8,
                         xycoords="axes fraction", va="top")  # fmt: skip
    counts = sorted({s["calls"] for s in steps})
    for axes in (latency, cpu):
        axes.set_xscale("log")
        axes.set_xticks(counts, [str(n) for n in counts])
        axes.minorticks_off()
    latency.set_title("voice-to-voice latency (dotted: declared floor)")
    latency.set_xlabel("concurrent calls")
    latency.set_ylabel("ms")
    latency.legend(fontsize=8)
    latency.grid(alpha=0.3)
    cores = report["machine"].get("cpus") or 1
    cpu.axhline(100 * cores, color="grey", linestyle=":", linewidth=1)
    cpu.set_title(f"server CPU ({cores} cores = {100 * cores} %)")
    cpu.set_xlabel("concurrent calls")
    cpu.set_ylabel("% of one core")
    cpu.legend(fontsize=8)
    cpu.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
