"""The servers under test, each in a process of its own: started, waited for, always stopped.

Each server runs in a new session (process group), so a Ctrl-C in the terminal reaches the bench
only, and the bench ends the server itself: SIGTERM to the group, SIGKILL after a grace period.
Every server the bench started is also killed at interpreter exit, should the bench die first.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from loguru import logger

from voicebot.bench.budget import Side

#: Seconds a server has to answer its health URL after it was started (imports, model loading).
START_TIMEOUT_SECS = 60.0
#: Seconds between SIGTERM and SIGKILL when stopping a server.
STOP_GRACE_SECS = 5.0

_running: set[int] = set()  # process group ids of servers not yet stopped


def _kill_leftovers() -> None:
    for pgid in list(_running):
        with contextlib.suppress(OSError):
            os.killpg(pgid, signal.SIGKILL)


atexit.register(_kill_leftovers)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Server:
    """A running server: its process, where calls go and what its log file is."""

    side: Side
    process: asyncio.subprocess.Process
    base_url: str
    """``http://127.0.0.1:<port>``."""
    log_path: Path
    signing_key: bytes = b""
    """The key voicebot signs media URLs with (empty for stock pipecat)."""

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.returncode is None

    def log_tail(self, lines: int = 20) -> str:
        """The last lines the server wrote (stdout and stderr)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def server_command(side: Side, pipeline: Path, port: int, workers: int = 1) -> list[str]:
    """The command line that starts one server on 127.0.0.1:``port`` for ``pipeline``.

    ``workers`` > 1 starts voicebot with that many worker processes on the port.
    """
    if side == "voicebot":
        return [
            sys.executable, "-m", "voicebot.cli", "--log-level", "WARNING", "serve",
            "--pipeline", str(pipeline), "--host", "127.0.0.1", "--port", str(port),
            "--workers", str(workers),
        ]  # fmt: skip
    return [
        sys.executable, "-m", "voicebot.bench.stock_pipecat",
        "--pipeline", str(pipeline), "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip


def health_path(side: Side) -> str:
    """The path that answers 200 once the server takes calls."""
    return "/api/v1/health/ready" if side == "voicebot" else "/health"


@contextlib.asynccontextmanager
async def running_server(
    side: Side,
    pipeline: Path,
    *,
    log_dir: Path,
    max_calls: int,
    extra_env: Mapping[str, str] | None = None,
    workers: int = 1,
) -> AsyncIterator[Server]:
    """Start a server, wait until it is ready, yield it, and stop it whatever happens.

    Raises:
        RuntimeError: the server exited or did not get ready within ``START_TIMEOUT_SECS``;
            the message holds the end of its log.
    """
    port = free_port()
    await asyncio.to_thread(log_dir.mkdir, parents=True, exist_ok=True)
    log_path = log_dir / f"{side}-{port}.log"
    key = secrets.token_urlsafe(32)
    env = {
        **os.environ,
        "VOICEBOT_SIGNING_SECRET": key,
        "VOICEBOT_MAX_CALLS": str(max_calls),
        "PYTHONUNBUFFERED": "1",
        **(extra_env or {}),
    }
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            *server_command(side, pipeline, port, workers),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    _running.add(process.pid)
    server = Server(side, process, f"http://127.0.0.1:{port}", log_path, key.encode())
    try:
        await _wait_ready(server, START_TIMEOUT_SECS)
        yield server
    finally:
        await stop_server(server)


async def stop_server(server: Server, grace_secs: float = STOP_GRACE_SECS) -> None:
    """SIGTERM the server's process group, then SIGKILL it if it has not exited in time."""
    process = server.process
    try:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), grace_secs)
            except TimeoutError:
                logger.warning(f"{server.side} server {process.pid} ignored SIGTERM: killing it")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # its group too: nothing may stay behind
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), grace_secs)
    finally:
        _running.discard(process.pid)


async def _wait_ready(server: Server, timeout_secs: float) -> None:
    deadline = time.monotonic() + timeout_secs
    path = health_path(server.side)
    port = int(server.base_url.rsplit(":", 1)[1])
    while time.monotonic() < deadline:
        if not server.alive():
            raise RuntimeError(
                f"{server.side} server exited with {server.process.returncode} while starting; "
                f"its log ({server.log_path}) ends:\n{server.log_tail()}"
            )
        if await _http_ok(port, path):
            return
        await asyncio.sleep(0.2)
    raise RuntimeError(
        f"{server.side} server was not ready within {timeout_secs:g} s; its log "
        f"({server.log_path}) ends:\n{server.log_tail()}"
    )


async def _http_ok(port: int, path: str, timeout_secs: float = 2.0) -> bool:
    """Whether ``GET path`` on 127.0.0.1:``port`` answers 200."""
    try:
        async with asyncio.timeout(timeout_secs):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
                writer.write(request.encode())
                await writer.drain()
                status = await reader.readline()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except (OSError, TimeoutError):
        return False
    return status.split(b" ")[1:2] == [b"200"]


def process_gone(pid: int) -> bool:
    """Whether no process with this id exists any more (zombies count as gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return True
    return stat[stat.rindex(b")") + 2 : stat.rindex(b")") + 3] == b"Z"


__all__ = ["Server", "free_port", "process_gone", "running_server", "stop_server"]
