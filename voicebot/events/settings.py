"""Which event bus a process uses, from the environment; built once, started by the app lifespan.

=============================== ==============================================================
``VOICEBOT_EVENTS_BACKEND``      ``auto`` (default: redis when a Redis URL is set), ``memory``
                                 (this worker only), ``redis``.
``VOICEBOT_EVENTS_QUEUE_SIZE``   Events waiting for the publisher task (default 1000); more are
                                 dropped and counted.
``REDIS_URL``                    The Redis the session store uses (``VOICEBOT_REDIS_URL`` also
                                 works); the events go on channel ``<prefix>:<env>:events``,
                                 with the session store's ``VOICEBOT_SESSION_ENV`` and prefix.
=============================== ==============================================================
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from voicebot.events.bus import QUEUE_SIZE, EventBus, RedisRelay
from voicebot.sessions.settings import SessionSettings

if TYPE_CHECKING:
    from voicebot.services.resources import SharedResources

#: Key of the process's :class:`EventBus` in its shared resources.
EVENTS_RESOURCE = "event_bus"


class EventSettings(BaseSettings):
    """Event bus settings; see the module docstring for the variables."""

    model_config = SettingsConfigDict(env_prefix="VOICEBOT_EVENTS_", extra="ignore")

    backend: Literal["auto", "memory", "redis"] = "auto"
    queue_size: int = Field(default=QUEUE_SIZE, ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> EventSettings:
        if self.backend == "redis" and SessionSettings().redis_url is None:
            raise ValueError("VOICEBOT_EVENTS_BACKEND is 'redis' but REDIS_URL is not set")
        return self


def events_channel(session: SessionSettings) -> str:
    """The pub/sub channel of the workers sharing ``session``'s Redis and env."""
    return f"{session.prefix}:{session.env}:events"


def create_event_bus(
    settings: EventSettings | None = None, session: SessionSettings | None = None
) -> EventBus:
    """The bus ``settings`` ask for (default: from the environment). Not started."""
    settings = settings or EventSettings()
    session = session or SessionSettings()
    url = session.redis_url
    use_redis = settings.backend == "redis" or (settings.backend == "auto" and url is not None)
    relay = None
    if use_redis and url is not None:
        relay = RedisRelay(url.get_secret_value(), events_channel(session))
    return EventBus(relay, queue_size=settings.queue_size)


def event_bus_for(resources: SharedResources) -> EventBus:
    """The process's :class:`EventBus`, created from the environment on first use.

    Kept in ``resources`` and closed with them; start it in the app lifespan.
    """
    return resources.get(EVENTS_RESOURCE, create_event_bus, close=_close)


async def _close(bus: EventBus) -> None:
    await bus.aclose()
