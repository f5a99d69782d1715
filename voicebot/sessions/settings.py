"""Which session store a process uses, from the environment; built once in the app lifespan.

=========================== ============================================================
``REDIS_URL``               Redis to keep sessions in (``VOICEBOT_REDIS_URL`` also works).
                            ``redis://``, ``rediss://``, ``unix://``; a cluster by
                            ``redis+cluster://`` or ``?cluster=true``. Unset: in memory.
``VOICEBOT_REDIS_CLUSTER``  ``true``: connect with ``RedisCluster`` whatever the URL says.
``VOICEBOT_SESSION_STORE``  ``auto`` (default: redis when a URL is set), ``memory``, ``redis``.
``VOICEBOT_SESSION_ENV``    The ``<env>`` part of every key (default ``dev``).
``VOICEBOT_SESSION_TTL_SECS`` Seconds a session is kept after its last write (default 86400).
``VOICEBOT_SESSION_OP_TIMEOUT_SECS`` Bound of one Redis operation (default 1.0).
=========================== ============================================================

The URL may hold a password: it is a ``SecretStr`` and never logged.
"""

from __future__ import annotations

from typing import Literal

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from voicebot.sessions.keys import DEFAULT_PREFIX, check_name
from voicebot.sessions.memory import InMemorySessionStore
from voicebot.sessions.redis_store import OP_TIMEOUT_SECS, RedisSessionStore
from voicebot.sessions.store import DEFAULT_TTL_SECS, SessionStore


class SessionSettings(BaseSettings):
    """Session store settings; see the module docstring for the variables."""

    model_config = SettingsConfigDict(
        env_prefix="VOICEBOT_SESSION_",
        extra="ignore",
        populate_by_name=True,
        hide_input_in_errors=True,  # the input holds the Redis URL, which may hold a password
    )

    store: Literal["auto", "memory", "redis"] = "auto"
    redis_url: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("REDIS_URL", "VOICEBOT_REDIS_URL", "redis_url")
    )
    redis_cluster: bool = Field(
        default=False, validation_alias=AliasChoices("VOICEBOT_REDIS_CLUSTER", "redis_cluster")
    )
    env: str = "dev"
    prefix: str = DEFAULT_PREFIX
    ttl_secs: float = Field(default=DEFAULT_TTL_SECS, ge=1)
    op_timeout_secs: float = Field(default=OP_TIMEOUT_SECS, gt=0)

    @field_validator("env", "prefix")
    @classmethod
    def _key_part(cls, value: str, info: ValidationInfo) -> str:
        return check_name(str(info.field_name), value)

    @model_validator(mode="after")
    def _consistent(self) -> SessionSettings:
        if self.store == "redis" and self.redis_url is None:
            raise ValueError("VOICEBOT_SESSION_STORE is 'redis' but REDIS_URL is not set")
        return self

    @property
    def backend(self) -> Literal["memory", "redis"]:
        if self.store == "auto":
            return "redis" if self.redis_url is not None else "memory"
        return self.store


def create_session_store(settings: SessionSettings | None = None) -> SessionStore:
    """The store ``settings`` (default: from the environment) ask for. Connects lazily."""
    chosen = settings or SessionSettings()
    if chosen.backend == "memory" or chosen.redis_url is None:
        return InMemorySessionStore(ttl_secs=chosen.ttl_secs)
    return RedisSessionStore.from_url(
        chosen.redis_url.get_secret_value(),
        cluster=True if chosen.redis_cluster else None,
        env=chosen.env,
        prefix=chosen.prefix,
        ttl_secs=chosen.ttl_secs,
        op_timeout_secs=chosen.op_timeout_secs,
    )
