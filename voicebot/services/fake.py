"""``provider: fake`` — scripted services with declared timings, for tests and offline demos.

The services themselves live in :mod:`voicebot.testing.fakes`; this module makes them available
to pipeline YAML::

    - stt: {provider: fake, transcripts: ["what is my balance"], final_delay_ms: 150}
    - llm: {provider: fake, replies: ["Your balance is 42 dollars."], ttft_ms: 300}
    - tts: {provider: fake, first_byte_ms: 150}
"""

from __future__ import annotations

from pipecat.processors.frame_processor import FrameProcessor

from voicebot.build.context import BuildContext, Built
from voicebot.build.registry import provider
from voicebot.services import kinds
from voicebot.services.conversation import ConversationParams, conversation
from voicebot.testing.fakes import (
    FakeLLMParams,
    FakeLLMService,
    FakeSTTParams,
    FakeSTTService,
    FakeTTSParams,
    FakeTTSService,
)


class FakeLLMProviderParams(ConversationParams, FakeLLMParams):
    """Scripted replies plus the conversation settings every LLM provider has."""


@provider("stt", "fake", FakeSTTParams)
def fake_stt(params: FakeSTTParams, context: BuildContext) -> FrameProcessor:
    """Scripted transcripts, each a declared delay after the caller stops speaking."""
    return FakeSTTService(params=params)


@provider("llm", "fake", FakeLLMProviderParams)
def fake_llm(params: FakeLLMProviderParams, context: BuildContext) -> Built:
    """Scripted replies and tool calls after a declared time to first token."""
    fields = set(FakeLLMParams.model_fields)
    script = FakeLLMParams.model_validate(params.model_dump(include=fields))
    return conversation(FakeLLMService(params=script), params)


@provider("tts", "fake", FakeTTSParams)
def fake_tts(params: FakeTTSParams, context: BuildContext) -> FrameProcessor:
    """A tone of declared length per character after a declared first-byte delay."""
    return FakeTTSService(params=params)


__all__ = ["fake_llm", "fake_stt", "fake_tts", "kinds"]
