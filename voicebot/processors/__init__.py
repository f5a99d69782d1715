"""voicebot's own processors; importing this package registers them and the service providers."""

from voicebot.agents import router
from voicebot.processors import echo
from voicebot.services import azure, fake, kinds, local, silero, sphinx

__all__ = ["azure", "echo", "fake", "kinds", "local", "router", "silero", "sphinx"]
