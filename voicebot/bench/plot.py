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
    for side, color in COLORS.items():
        points = [(s["calls"], s[side]) for s in report["steps"] if s.get(side)]
        if not points:
            continue
        calls = [n for n, _ in points]
        for pct, style in (("p50", "-o"), ("p95", "--s")):
            values = [r["voice_to_voice_ms"][pct] for _, r in points]
            latency.plot(calls, values, style, color=color, label=f"{side} {pct}")
        latency.axhline(floors[side], color=color, linestyle=":", linewidth=1)
        cpu.plot(calls, [r["cpu_percent"] for _, r in points], "-o", color=color, label=side)
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
