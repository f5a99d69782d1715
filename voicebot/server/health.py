"""``GET /api/v1/health`` (liveness) and ``GET /api/v1/health/ready`` (one entry per dependency)."""

from __future__ import annotations

import os
import socket
from typing import Any

from fastapi import APIRouter, Request, Response

from voicebot.events import event_bus_for
from voicebot.server.app import state_of
from voicebot.server.realtime import dashboard_clients
from voicebot.server.sessions import sessions_check
from voicebot.services.azure import speech_status

router = APIRouter(tags=["health"])

#: This worker process, as readiness reports it (several may serve one port).
WORKER = f"{socket.gethostname()}:{os.getpid()}"


@router.get("/health")
async def health() -> dict[str, str]:
    """The process is up and its event loop answers."""
    return {"status": "ok"}


@router.get("/health/ready")
async def ready(request: Request, response: Response) -> dict[str, Any]:
    """Whether this worker can take a call, and the state of what calls depend on.

    503 ``draining`` once the worker is shutting down (SIGTERM): it takes no new calls.
    """
    state = state_of(request)
    settings = state.settings
    calls = {"active": len(state.active), "max": settings.max_calls}
    checks: dict[str, Any] = {
        "pipeline": {"status": "ok", "name": state.spec.name, "file": str(state.spec.file)},
        "calls": {"status": "ok" if calls["active"] < calls["max"] else "full", **calls},
        "call_automation": state.calls.status(),
        "resources": {"status": "ok", "loaded": state.resources.keys()},
    }
    if (speech := speech_status(state.resources)) is not None:
        checks["azure_speech"] = speech  # a cold pool slows first audio; it does not block calls
    # Sessions degraded (Redis down): calls go on with in-process state, so still ready.
    checks["sessions"] = await sessions_check(state)
    checks["events"] = event_bus_for(state.resources).status()  # degraded: no relay to others
    checks["dashboard"] = dashboard_clients(state).status()
    ready_now = checks["calls"]["status"] == "ok"
    degraded = sorted(name for name, check in checks.items() if check.get("status") == "degraded")
    status = "ready" if ready_now else "full"
    if state.draining:
        status = "draining"
        response.status_code = 503
    return {"status": status, "worker": WORKER, "degraded": degraded, "checks": checks}
