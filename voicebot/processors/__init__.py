"""voicebot's own processors; importing this package registers them and the service providers."""

from voicebot.agents import router
from voicebot.processors import echo
from voicebot.services import fake, kinds, local, silero

__all__ = ["echo", "fake", "kinds", "local", "router", "silero"]
