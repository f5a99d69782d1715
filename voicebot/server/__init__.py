"""The HTTP/WebSocket server: app factory, lifespan and the ``/api/v1`` routers."""

from voicebot.server.app import AppState, create_app

__all__ = ["AppState", "create_app"]
