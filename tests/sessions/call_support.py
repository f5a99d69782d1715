"""Helpers of the call-resume tests: bank pipelines with a scripted caller, ``voicebot serve``
subprocesses, and a caller that waits for each answer."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import httpx

from voicebot.build.loader import TRANSPORTS_DIR_ENV
from voicebot.testing.acs_simulator import FRAME_MS, ACSCallSimulator, Turn
from voicebot.testing.wav import sample

REPO = Path(__file__).resolve().parents[2]

START_TIMEOUT_SECS = 60.0
"""How long a ``voicebot serve`` subprocess has to answer its health check (imports and the
Silero warm-up on a busy 2-core machine)."""


def bank_pipeline(folder: Path, name: str, transcripts: list[str]) -> Path:
    """The bank's agents (offline policy) with a caller who says ``transcripts`` in order.

    A fake STT cannot know what was said before a reconnection, so each server is given the
    words its part of the call has: the caller's script, not the bot's state, is split.
    """
    said = "".join(f"\n        - {text}" for text in transcripts)
    path = folder / f"{name}.yaml"
    path.write_text(
        f"""\
name: {name}
transport: acs
audio: {{in_rate: 16000, out_rate: 16000}}
call: {{idle_timeout_secs: 60, max_duration_secs: 300}}
processors:
  - vad: {{provider: silero, stop_secs: 0.2}}
  - stt:
      provider: fake
      final_delay_ms: 100
      transcripts:{said}
  - agents: {{store: {REPO / "agents"}}}
  - tts: {{provider: fake, first_byte_ms: 50, ms_per_char: 8}}
""",
        encoding="utf-8",
    )
    return path


def server_env(*, secret: str, redis_url: str, session_env: str) -> dict[str, str]:
    """The environment of a ``voicebot serve`` subprocess: no Azure, the test's Redis and env."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AZURE_", "ACS_", "VOICEBOT_", "REDIS_", "OTEL_"))
    }
    env.update(
        {
            "VOICEBOT_SIGNING_SECRET": secret,
            "REDIS_URL": redis_url,
            "VOICEBOT_SESSION_ENV": session_env,
            TRANSPORTS_DIR_ENV: str(REPO / "transports"),
        }
    )
    return env


class ServeProcess:
    """``voicebot serve`` in a subprocess on 127.0.0.1:``port`` (an async context manager).

    Entering waits until ``/api/v1/health`` answers; leaving stops it (SIGTERM, then SIGKILL).
    Its output goes to ``log_path``, shown when it fails to start.
    """

    def __init__(self, pipeline: Path, port: int, env: dict[str, str], log_path: Path) -> None:
        self.pipeline = pipeline
        self.port = port
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def http_base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_base(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def launch(self) -> None:
        """Start the process (returns at once)."""
        args = [sys.executable, "-m", "voicebot.cli", "serve", "--pipeline", str(self.pipeline)]
        args += ["--host", "127.0.0.1", "--port", str(self.port)]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=REPO
            )

    async def __aenter__(self) -> ServeProcess:
        await asyncio.to_thread(self.launch)
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT_SECS
        async with httpx.AsyncClient(timeout=2.0) as client:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"voicebot serve exited early:\n{self.log()[-3000:]}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{self.http_base}/api/v1/health")).status_code == 200:
                        return self
                if time.monotonic() > deadline:
                    await self.__aexit__(None, None, None)
                    raise RuntimeError(f"voicebot serve did not start:\n{self.log()[-3000:]}")
                await asyncio.sleep(0.2)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(process.wait, 15)
        except subprocess.TimeoutExpired:
            process.kill()
            await asyncio.to_thread(process.wait, 5)

    async def ready(self) -> dict[str, object]:
        async with httpx.AsyncClient(timeout=5.0) as client:
            response = await client.get(f"{self.http_base}/api/v1/health/ready")
        response.raise_for_status()
        body: dict[str, object] = response.json()
        return body


def bot_ms_since(sim: ACSCallSimulator, since_ms: float) -> float:
    """Milliseconds of bot audio that arrived after ``since_ms`` (call time)."""
    return sum(len(c.pcm) / 2 / sim.sample_rate * 1000 for c in sim.bot_audio if c.t_ms >= since_ms)


async def listen(sim: ACSCallSimulator, *, since_ms: float, timeout_ms: float = 8000) -> float:
    """Wait (in silent frames) for the bot to answer after ``since_ms`` and then fall quiet for
    600 ms; returns the ms of audio it sent (0 when nothing came within ``timeout_ms``)."""
    waited = 0
    while waited < timeout_ms:
        await sim.silence(100)
        waited += 100
        chunks = [c for c in sim.bot_audio if c.t_ms >= since_ms]
        if chunks:
            last = chunks[-1]
            ends = last.t_ms + len(last.pcm) / 2 / sim.sample_rate * 1000
            if sim.report().frames_sent * FRAME_MS - ends > 600:
                break
    return bot_ms_since(sim, since_ms)


async def say(sim: ACSCallSimulator, wav: str = "balance", *, timeout_ms: float = 8000) -> float:
    """The caller says one turn (any speech: the fake STT decides the words); returns the ms of
    the bot's answer."""
    await sim.play([Turn(sample(wav), pause_after_ms=0)])
    speech_end = sim.report().turns[-1].speech_end_ms or 0.0
    return await listen(sim, since_ms=speech_end, timeout_ms=timeout_ms)
