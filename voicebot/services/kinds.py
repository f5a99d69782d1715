"""The service processors every voice pipeline is made of, declared once.

Each is registered without providers; provider modules (``voicebot.services.fake``,
``voicebot.services.silero``, …) add implementations with :func:`voicebot.build.registry.provider`.
"""

from __future__ import annotations

from voicebot.build.registry import service

VAD = service(
    "vad",
    consumes=["audio_in"],
    emits=["speech"],
    default_provider="silero",
    description="voice activity detection: marks when the caller starts and stops speaking",
)
STT = service(
    "stt",
    consumes=["audio_in"],
    emits=["transcript"],
    description="speech-to-text: the caller's words as interim and final transcripts",
)
LLM = service(
    "llm",
    consumes=["transcript"],
    emits=["text"],
    swallows=["transcript"],
    description="the conversation: user turns in, the bot's reply streamed out as text",
)
TTS = service(
    "tts",
    consumes=["text"],
    emits=["audio_out"],
    swallows=["text"],
    description="text-to-speech: the bot's reply as audio at the pipeline's output rate",
)
