"""``GET /api/v1/metrics``: the process's metrics in the Prometheus text format.

What is served is described in :mod:`voicebot.telemetry.metrics`. Like the health endpoints it
needs no API key: it carries counts and latencies, nothing a caller said or sent.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from voicebot.server.app import state_of
from voicebot.telemetry import telemetry_for
from voicebot.telemetry.metrics import CONTENT_TYPE

router = APIRouter(tags=["metrics"])


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    """Every series of this worker process, for a Prometheus scrape."""
    telemetry = telemetry_for(state_of(request).resources)
    return Response(telemetry.metrics.render(), media_type=CONTENT_TYPE)
