"""voicebot's own processors; importing this package registers them and the service providers."""

from voicebot.processors import echo
from voicebot.services import fake, kinds, silero

__all__ = ["echo", "fake", "kinds", "silero"]
