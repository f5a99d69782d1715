"""Settings from the environment (``VOICEBOT_*``), read once at start-up.

Secrets are ``SecretStr``: they never appear in logs, reprs or error messages. A setting with a
bad value stops start-up with a message naming the variable and the value's problem.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from loguru import logger
from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything the server needs to know; each field is ``VOICEBOT_<NAME>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="VOICEBOT_", extra="ignore")

    pipeline: Path = Path("pipelines/acs_phone.yaml")
    """The pipeline YAML every call runs."""
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    public_url: str = ""
    """How ACS reaches this server, e.g. ``https://bot.example.com`` (media URLs and callbacks
    are built from it). Empty: ``http://{host}:{port}``."""

    max_calls: int = Field(default=200, ge=1)
    """Concurrent calls this worker accepts; more are refused with WebSocket close code 1013."""
    workers: int = Field(default=1, ge=1)
    """Worker processes ``voicebot serve`` starts on the one port (each takes ``max_calls``);
    see :mod:`voicebot.server.workers`."""
    drain_timeout_secs: float = Field(default=30.0, ge=0)
    """On SIGTERM, how long calls in progress may go on before the worker stops (new calls are
    refused meanwhile); see :mod:`voicebot.server.drain`."""
    signing_secret: SecretStr | None = None
    """Key of the HMAC that signs media-stream URLs. Unset: a random key per process (fine for one
    process; set it when several workers must accept each other's URLs)."""
    media_token_ttl_secs: int = Field(default=300, ge=1)
    """How long a signed media URL stays valid, in seconds."""
    api_key: SecretStr | None = None
    """Bearer / ``x-api-key`` token the call-control REST endpoints require."""
    callback_secret: SecretStr | None = None
    """Shared secret in the Event Grid and Call Automation webhook URLs."""
    acs_connection_string: SecretStr | None = None
    """ACS resource connection string (``endpoint=...;accesskey=...``); unset: no call control."""
    acs_endpoint: str = ""
    """Overrides the endpoint of the connection string (e.g. a local fake in tests)."""
    max_message_bytes: int = Field(default=64 * 1024, ge=1024)
    """Largest media-stream message accepted, in bytes."""

    @property
    def base_url(self) -> str:
        """``public_url`` or ``http://host:port``, without a trailing slash."""
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")

    def media_signing_key(self) -> bytes:
        """The HMAC key for media URLs (a per-process random one when none is set)."""
        if self.signing_secret is None:
            logger.warning(
                "VOICEBOT_SIGNING_SECRET is not set: media URLs are signed with a random key "
                "valid in this process only"
            )
            self.signing_secret = SecretStr(secrets.token_urlsafe(32))
        return self.signing_secret.get_secret_value().encode()


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment plus ``overrides``; exits with a readable message if bad."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = [
            f"VOICEBOT_{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
            for err in exc.errors()
        ]
        raise SystemExit("invalid settings:\n  " + "\n  ".join(lines)) from None
