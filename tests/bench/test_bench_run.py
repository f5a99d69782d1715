"""``voicebot bench`` end to end: real server processes, real sockets, real time."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from voicebot.build.loader import TRANSPORTS_DIR_ENV

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def bench_yaml(tmp_path: Path) -> Path:
    """The bench pipeline under a name no other process has on its command line."""
    path = tmp_path / f"bench-{uuid.uuid4().hex[:8]}.yaml"
    shutil.copy(REPO / "benchmarks" / "pipelines" / "bench.yaml", path)
    return path


def bench_env() -> dict[str, str]:
    return {**os.environ, TRANSPORTS_DIR_ENV: str(REPO / "transports")}


def processes_naming(text: str) -> list[int]:
    """Pids of live processes whose command line holds ``text``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            pids.append(int(entry.name))
    return pids


def test_a_tiny_run_of_both_sides_reports_sane_numbers(bench_yaml: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    command = [
        sys.executable, "-m", "voicebot.cli", "--log-level", "WARNING", "bench",
        "--calls", "2", "--duration", "6", "--pipeline", str(bench_yaml), "--json", str(out),
    ]  # fmt: skip

    done = subprocess.run(
        command, env=bench_env(), capture_output=True, text=True, timeout=180, check=False
    )

    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report) >= {"voicebot", "pipecat", "ratios", "machine", "config", "steps"}
    for side in ("voicebot", "pipecat"):
        result = report[side]
        assert result["calls"] == 2 and result["calls_ok"] == 2, result
        assert result["turns"] == 2 and result["turns_unanswered"] == 0
        assert set(result["overhead_ms"]) >= {"p50", "p95", "p99"}
        assert result["overhead_ms"]["p50"] >= 0
        assert result["voice_to_voice_ms"]["p50"] >= report["config"]["floor_ms"][side]
        assert isinstance(result["late_frames"], int) and result["bot_frames"] > 0
        assert result["cpu_percent"] > 0
        assert result["rss_mb_idle"] > 50 and result["rss_mb_per_call"] is not None
        assert result["server_exited"] is True
    assert report["ratios"]["calls"] == 2 and report["ratios"]["cpu_percent"] > 0
    assert report["machine"]["cpus"] >= 1 and len(report["machine"]["load_average_after"]) == 3
    assert "pipecat/voicebot" in done.stdout
    assert processes_naming(bench_yaml.name) == []


def test_ctrl_c_stops_both_servers(bench_yaml: Path) -> None:
    command = [
        sys.executable, "-m", "voicebot.cli", "--log-level", "WARNING", "bench",
        "--calls", "2", "--duration", "30", "--pipeline", str(bench_yaml),
    ]  # fmt: skip
    bench = subprocess.Popen(
        command,
        env=bench_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own group: the Ctrl-C below reaches it and its callers
    )
    try:
        deadline = time.monotonic() + 90
        while not processes_naming(f"serve --pipeline {bench_yaml}"):
            assert bench.poll() is None, bench.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the voicebot server never started"
            time.sleep(0.2)
        time.sleep(6)  # calls under way

        os.killpg(bench.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        _, stderr = bench.communicate(timeout=30)
    finally:
        if bench.poll() is None:
            os.killpg(bench.pid, signal.SIGKILL)
            bench.wait()

    assert bench.returncode == 130, stderr[-3000:]
    assert "interrupted; servers stopped" in stderr
    assert processes_naming(bench_yaml.name) == []
