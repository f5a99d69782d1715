"""The FastAPI app factory and the state shared by every request of one worker process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from fastapi import FastAPI, Request, WebSocket
from loguru import logger
from pydantic import ValidationError

from voicebot.acs.control import CallControl
from voicebot.build.builder import warm_up
from voicebot.build.loader import PipelineSpec, load_pipeline
from voicebot.config import Settings, load_settings
from voicebot.events import event_bus_for
from voicebot.runner import ActiveCalls
from voicebot.services.azure import (
    AzureSpeechSettingsError,
    SynthesizerPoolSettings,
    speech_credentials,
)
from voicebot.services.resources import SharedResources
from voicebot.sessions.settings import SessionSettings
from voicebot.telemetry import telemetry_for


@dataclass
class AppState:
    """What one worker process shares between calls: settings, the pipeline, heavy resources,
    and the calls it is running."""

    settings: Settings
    spec: PipelineSpec
    resources: SharedResources = field(default_factory=SharedResources)
    active: ActiveCalls = field(default_factory=ActiveCalls)
    signing_key: bytes = b""
    calls: CallControl = field(default_factory=CallControl)
    draining: bool = False
    """Set on SIGTERM: no new calls; the active ones finish (see :mod:`voicebot.server.drain`)."""


def state_of(connection: Request | WebSocket) -> AppState:
    """The :class:`AppState` of the app serving ``connection``."""
    state: AppState = connection.app.state.voicebot
    return state


def providers_summary(spec: PipelineSpec) -> str:
    """``stt=local, llm=fake, …`` for the start-up log line."""
    return ", ".join(
        f"{step.name}={step.provider.name}" for step in spec.steps if step.spec.needs_provider_key
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    """A voicebot server app. The pipeline is validated here, so a bad file stops start-up."""
    settings = settings or load_settings()
    spec = load_pipeline(settings.pipeline)
    try:  # Azure speech settings are checked now, every problem at once, not at the first call
        SynthesizerPoolSettings.from_env()
        if any(step.provider.name == "azure" for step in spec.steps):
            speech_credentials()
    except AzureSpeechSettingsError as exc:
        raise SystemExit(str(exc)) from None
    try:  # e.g. VOICEBOT_SESSION_STORE=redis without REDIS_URL stops start-up, not the first call
        session_settings = SessionSettings()
    except ValidationError as exc:
        raise SystemExit(f"session store settings: {exc}") from None
    state = AppState(settings=settings, spec=spec, signing_key=settings.media_signing_key())
    state.calls = CallControl.from_settings(settings, spec, state.active, state.signing_key)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        offline = settings.acs_connection_string is None
        logger.info(
            f"voicebot serving pipeline {spec.name!r} ({providers_summary(spec)}), "
            f"up to {settings.max_calls} calls"
            + (" — no Azure settings: offline providers, no call control" if offline else "")
        )
        telemetry_for(state.resources)  # bad OTEL_* settings stop start-up here
        await warm_up(spec, state.resources)
        await event_bus_for(state.resources).start()  # closed with the resources
        from voicebot.server.sessions import open_call_sessions

        sessions = open_call_sessions(state, session_settings)  # closed with the resources
        logger.info(f"call sessions kept in {sessions.store.backend}")
        try:
            yield
        finally:
            for call in state.active:
                await call.cancel("server shutting down")
            await state.resources.aclose()
            await state.calls.aclose()

    app = FastAPI(title="voicebot", lifespan=lifespan)
    app.state.voicebot = state

    from voicebot.server import calls, health, media, metrics, realtime

    app.include_router(health.router, prefix="/api/v1")
    app.include_router(media.router, prefix="/api/v1")
    app.include_router(calls.router, prefix="/api/v1")
    app.include_router(metrics.router, prefix="/api/v1")
    app.include_router(realtime.router, prefix="/api/v1")
    app.include_router(realtime.pages)  # GET /dashboard, /conversation
    return app
