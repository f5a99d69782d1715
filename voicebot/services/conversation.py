"""Wraps an LLM service into a conversation: user turns in, replies out, context kept.

``llm`` in pipeline YAML becomes ``user aggregator → LLM service`` at its place and the assistant
aggregator after the transport output, so the context records what was actually played. The
system prompt is the LLM service's ``system_instruction`` (pipecat 1.9+), not a message in the
context: the context holds only what was said.
"""

from __future__ import annotations

from typing import Any

from pipecat.frames.frames import Frame, LLMUpdateSettingsFrame, StartFrame, TTSSpeakFrame
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import (
    LLMContextAggregatorPair,
    LLMUserAggregatorParams,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.services.llm_service import LLMService
from pipecat.services.settings import LLMSettings
from pipecat.turns.user_stop import SpeechTimeoutUserTurnStopStrategy
from pipecat.turns.user_turn_strategies import UserTurnStrategies
from pydantic import BaseModel, ConfigDict, Field

from voicebot.build.context import Built


class ConversationParams(BaseModel):
    """Settings of the conversation around any LLM provider."""

    model_config = ConfigDict(extra="forbid")

    system_prompt: str = "You are a helpful voice assistant on a phone call. Answer briefly."
    greeting: str = ""
    """Said as soon as the call starts (and kept in the context); empty: wait for the caller."""
    user_speech_timeout_ms: float = Field(default=200.0, ge=0)
    """After the caller stops speaking (VAD), wait this long for more speech before the turn ends.
    Replaces pipecat's default smart-turn model, which costs a model per call."""


def unset_llm_settings(model: str) -> LLMSettings:
    """pipecat LLM settings with every tunable left unset, for LLM services that aren't models
    (a scripted fake, the offline policy): pipecat wants every field given."""
    return LLMSettings(
        model=model,
        system_instruction=None,
        temperature=None,
        max_tokens=None,
        top_p=None,
        top_k=None,
        frequency_penalty=None,
        presence_penalty=None,
        seed=None,
        filter_incomplete_user_turns=None,
        user_turn_completion_config=None,
        use_provider_thinking_default=False,
    )


def conversation(llm: LLMService, params: ConversationParams) -> Built:
    """``[user aggregator, system instruction, llm]`` in place, the assistant aggregator in the
    tail."""
    timeout_secs = params.user_speech_timeout_ms / 1000
    strategies = UserTurnStrategies(
        stop=[SpeechTimeoutUserTurnStopStrategy(user_speech_timeout=timeout_secs)]
    )
    pair = LLMContextAggregatorPair(
        LLMContext(), user_params=LLMUserAggregatorParams(user_turn_strategies=strategies)
    )
    processors: list[FrameProcessor] = [
        pair.user(),
        SystemInstruction(llm, params.system_prompt),
        llm,
    ]
    if params.greeting:
        processors.append(Greeter(params.greeting))
    return Built(processors, tail=[pair.assistant()])


class SystemInstruction(FrameProcessor):
    """Gives ``llm`` its system instruction right after the pipeline starts.

    pipecat's way to change a service's settings is a settings frame (``llm.settings`` is for
    reading); sent right behind the ``StartFrame``, it reaches the LLM before any user turn.
    """

    def __init__(self, llm: LLMService, text: str, **kwargs: Any) -> None:
        super().__init__(enable_direct_mode=True, **kwargs)
        self._llm = llm
        self._text = text

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        await self.push_frame(frame, direction)
        if isinstance(frame, StartFrame):
            delta = LLMSettings(system_instruction=self._text)
            await self.push_frame(LLMUpdateSettingsFrame(delta=delta, service=self._llm))


class Greeter(FrameProcessor):
    """Says ``text`` once, right after the pipeline starts."""

    def __init__(self, text: str, **kwargs: Any) -> None:
        super().__init__(enable_direct_mode=True, **kwargs)
        self._text = text

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        await self.push_frame(frame, direction)
        if isinstance(frame, StartFrame):
            await self.push_frame(TTSSpeakFrame(self._text))
