"""``voicebot serve --workers N``: N worker processes sharing one listening socket.

A call's pipeline runs on one event loop, so one process uses at most one core. With N workers
the parent binds the socket once and starts N processes that accept from it; the kernel hands
each new connection (a call's media stream) to one of them. Each worker is a whole server: its
own app, warmed models, call limit (``VOICEBOT_MAX_CALLS`` is per worker) and drain on SIGTERM.

What the workers share:

* the media-URL signing key — a URL signed by one worker is accepted by all. If
  ``VOICEBOT_SIGNING_SECRET`` is unset the parent makes one for this run;
* call sessions, when ``REDIS_URL`` is set — a reconnecting call resumes on whichever worker
  accepts it; with the in-memory store a call resumes only on its own worker;
* live events across workers, through the same Redis.

Call Automation state (the calls placed or answered through the REST API and their webhook
events) stays in the worker that handled the request; run call control on a single worker, or
route its webhooks back to the worker that placed the call.

The parent forwards SIGTERM/SIGINT to every worker (each drains its calls, see
:mod:`voicebot.server.drain`), waits for them, and restarts a worker that dies on its own.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import secrets
import signal
import socket
import threading
import time
from multiprocessing.context import SpawnProcess
from types import FrameType
from typing import Any

from loguru import logger

#: How often the parent checks its workers, in seconds.
CHECK_SECS = 0.5
#: A worker that exits within this many seconds of starting is not restarted (a start-up error
#: would only repeat); the parent stops instead.
MIN_UPTIME_SECS = 10.0


def bind_socket(host: str, port: int) -> socket.socket:
    """The listening socket every worker accepts from."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def run_worker(overrides: dict[str, Any], log_level: str | None, sock: socket.socket) -> None:
    """One worker process: build the app and serve it on ``sock`` until told to stop."""
    from voicebot.config import load_settings
    from voicebot.logs import configure_logging
    from voicebot.server import create_app
    from voicebot.server.drain import serve

    # Out of the terminal's process group: Ctrl-C reaches the parent only, which passes it on
    # once (a second signal would skip the drain).
    os.setpgrp()
    _exit_with_parent()
    configure_logging(log_level)
    settings = load_settings(**overrides)
    app = create_app(settings)
    # uvicorn re-raises the stop signal once it has shut down: the worker just ends.
    with contextlib.suppress(KeyboardInterrupt):
        serve(app, sockets=[sock])


def _exit_with_parent() -> None:
    """Stop this worker (as by SIGTERM: it drains) if the parent process goes away."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


class Supervisor:
    """Starts the workers, forwards stop signals to them, restarts one that dies."""

    def __init__(
        self, overrides: dict[str, Any], log_level: str | None, workers: int, sock: socket.socket
    ) -> None:
        self.overrides = overrides
        self.log_level = log_level
        self.count = workers
        self.sock = sock
        self.context = multiprocessing.get_context("spawn")
        self.processes: list[tuple[SpawnProcess, float]] = []
        self.stopping = False

    def _start(self) -> tuple[SpawnProcess, float]:
        process = self.context.Process(
            target=run_worker,
            args=(self.overrides, self.log_level, self.sock),
            name="voicebot-worker",
        )
        process.start()
        return process, time.monotonic()

    def _signal(self, sig: int, _frame: FrameType | None) -> None:
        """Pass a stop signal on to every worker as SIGTERM (the first drains, a second stops)."""
        if self.stopping:
            logger.warning("stopping the workers now")
        self.stopping = True
        for process, _ in self.processes:
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, signal.SIGTERM)

    def run(self) -> int:
        """Run until stopped; 0 after a requested stop, 1 if a worker could not start."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._signal)
        self.processes = [self._start() for _ in range(self.count)]
        pids = ", ".join(str(p.pid) for p, _ in self.processes)
        logger.info(f"{self.count} workers started (pids {pids})")
        code = 0
        while any(p.is_alive() for p, _ in self.processes):
            time.sleep(CHECK_SECS)
            if self.stopping:
                continue
            for index, (process, started) in enumerate(self.processes):
                if process.is_alive():
                    continue
                if time.monotonic() - started < MIN_UPTIME_SECS:
                    logger.error(
                        f"worker {process.pid} exited with {process.exitcode} while starting; "
                        "stopping"
                    )
                    code = 1
                    self._signal(signal.SIGTERM, None)
                    break
                logger.warning(f"worker {process.pid} exited with {process.exitcode}: restarting")
                self.processes[index] = self._start()
        for process, _ in self.processes:
            process.join()
        return code


def share_signing_secret() -> None:
    """Make a media-URL signing key for this run if none is set: every worker must accept the
    URLs the others sign, and the workers inherit the environment."""
    if not os.environ.get("VOICEBOT_SIGNING_SECRET"):
        os.environ["VOICEBOT_SIGNING_SECRET"] = secrets.token_urlsafe(32)
        logger.info("VOICEBOT_SIGNING_SECRET is unset: the workers share a key made for this run")


def serve_workers(
    overrides: dict[str, Any], log_level: str | None, workers: int, host: str, port: int
) -> int:
    """Serve with ``workers`` processes on ``host:port`` (see the module docstring).

    Call :func:`share_signing_secret` first, before settings are read.
    """
    sock = bind_socket(host, port)
    try:
        return Supervisor(overrides, log_level, workers, sock).run()
    finally:
        sock.close()
