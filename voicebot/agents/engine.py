"""``PolicyLLMService``: the offline policy, behind the same interface as an LLM.

It answers each ``LLMContextFrame`` from the active agent's declared rules (see
:mod:`voicebot.agents.policy`) with what an LLM would produce: streamed text, and function calls
made through pipecat's ``run_function_calls``. Tools, handoffs, escalation and ending the call
therefore run exactly as with a real LLM, through the same flows node functions, context
messages and decision log.

A tool rule's reply is said when the tool's result comes back (the follow-up request whose last
message is that result). After a silent handoff the new agent answers the caller's last words;
one handoff per caller turn, so two agents can never pass a caller back and forth.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, cast

from pipecat.frames.frames import (
    Frame,
    FunctionCallFromLLM,
    LLMContextFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
)
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.llm_service import LLMService

from voicebot.agents.policy import Choice, Rule, decide, render, render_reply, template_context
from voicebot.agents.schema import HUMAN
from voicebot.agents.session import AgentSession
from voicebot.agents.store import END_CALL, TRANSFER_PREFIX
from voicebot.agents.tools import redacted
from voicebot.services.conversation import unset_llm_settings


class PolicyLLMService(LLMService):
    """Answers from the active agent's policy instead of a model; see the module docstring."""

    def __init__(self, session: AgentSession, **kwargs: Any) -> None:
        settings = unset_llm_settings("policy")
        super().__init__(settings=settings, **kwargs)
        self._session = session
        # tool_call_id → (rule whose reply waits for the result, agent that made the call)
        self._pending: dict[str, tuple[Rule | None, str]] = {}
        self._calls = 0
        # Tool call ids must be unique within a context, which a resumed call carries over
        # from an earlier pipeline: each pipeline's ids get a prefix of their own.
        self._id_prefix = uuid.uuid4().hex[:8]
        self._handoff_turn = -1

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, LLMContextFrame):
            await self._answer(frame.context)
        else:
            await self.push_frame(frame, direction)

    async def _answer(self, context: LLMContext) -> None:
        session = self._session
        messages = [cast(dict[str, Any], m) for m in context.get_messages() if isinstance(m, dict)]
        last = messages[-1] if messages else None
        if session.silent_entry:
            # Entered by a silent handoff: the new agent answers what the caller asked.
            session.silent_entry = False
        elif last is not None and last.get("role") == "tool":
            pending = self._pending.pop(str(last.get("tool_call_id")), None)
            if pending is not None and pending[0] is not None and pending[1] == session.active:
                rule = pending[0]
                result = _parse(last.get("content"))
                await self._respond(
                    context, render_reply(rule, session.memory, result, agent=session.active)
                )
            return
        utterance = _last_user_text(messages)
        if utterance is not None:
            await self._act(context, self._choose(utterance))

    def _choose(self, utterance: str) -> Choice:
        session = self._session
        store, agent = session.store, session.agent
        targets = agent.handoffs

        def allowed(rule: Rule) -> bool:
            if rule.spec.tool and rule.spec.tool not in agent.spec.tools:
                return False
            return not (rule.spec.handoff and rule.spec.handoff not in targets)

        return decide(
            utterance,
            session.memory,
            [store.shared, agent.policy],
            fallback=agent.policy.fallback or store.shared.fallback,
            allowed=allowed,
            tool_params=lambda name: list(store.tools[name].properties),
            extra={"agent": agent.name},
        )

    async def _act(self, context: LLMContext, choice: Choice) -> None:
        session = self._session
        agent = session.active
        if choice.handoff and self._handoff_turn == session.turn:
            # A second handoff in one caller turn: answer instead of passing the caller on.
            fallback = session.agent.policy.fallback or session.store.shared.fallback
            context_vars = template_context(session.memory, agent=agent)
            choice.handoff, choice.say = None, str(render(fallback, context_vars) or "")
        await session.record(
            "rule",
            engine="policy",
            reason=choice.rule.label if choice.rule else "fallback",
            args=redacted(choice.heard) or None,
            tool=choice.tool,
            target=choice.handoff or (END_CALL if choice.end else None),
        )
        if choice.tool:
            call = self._call(choice.tool, choice.args, context)
            self._pending[call.tool_call_id] = (choice.rule, agent)
            await self._respond(context, "", [call])
        elif choice.handoff:
            self._handoff_turn = session.turn
            name = TRANSFER_PREFIX + choice.handoff
            reason = f"policy rule {choice.rule.label}" if choice.rule else "policy"
            arguments = {"reason": reason}
            if choice.mode:
                arguments["mode"] = choice.mode  # not in the LLM's schema: the policy's own
            call = self._call(name, arguments, context)
            self._pending[call.tool_call_id] = (None, agent)
            await self._respond(context, choice.say if choice.handoff != HUMAN else "", [call])
        elif choice.end:
            call = self._call(END_CALL, {"reason": "the caller said goodbye"}, context)
            self._pending[call.tool_call_id] = (None, agent)
            await self._respond(context, choice.say, [call])
        else:
            await self._respond(context, choice.say)

    def _call(
        self, name: str, arguments: dict[str, Any], context: LLMContext
    ) -> FunctionCallFromLLM:
        self._calls += 1
        return FunctionCallFromLLM(
            function_name=name,
            tool_call_id=f"policy_{self._id_prefix}_{self._calls}",
            arguments=arguments,
            context=context,
        )

    async def _respond(
        self, context: LLMContext, text: str, calls: list[FunctionCallFromLLM] | None = None
    ) -> None:
        await self.push_frame(LLMFullResponseStartFrame())
        await self.start_processing_metrics()
        if text:
            await self._push_llm_text(text)
        if calls:
            await self.run_function_calls(calls)
        await self.stop_processing_metrics()
        await self.push_frame(LLMFullResponseEndFrame())


def _last_user_text(messages: list[dict[str, Any]]) -> str | None:
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(
                    str(part.get("text", "")) for part in content if isinstance(part, dict)
                )
            return None
    return None


def _parse(content: Any) -> Any:
    if isinstance(content, str):
        try:
            return json.loads(content)
        except ValueError:
            return content
    return content
