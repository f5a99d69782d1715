"""The ``agents`` processor: a store of agents running one call, on pipecat flows.

::

    - agents:
        store: ../agents                  # the agent store, relative to the pipeline file
        start: auth                       # default: the store's entry agent
        llm: {provider: azure_openai, endpoint: ${AZURE_OPENAI_ENDPOINT:-}, ...}
                                          # left out, or no endpoint: the offline policy

In the pipeline it stands where ``llm`` would: user turns in, the bot's words out. It builds
``DTMF aggregator → user aggregator → AgentRouter → [apology] → LLM`` with the assistant
aggregator after the transport output; keyed digits become a user turn like spoken ones. The
LLM is the configured one, the offline :class:`PolicyLLMService`, or both
behind pipecat's ``LLMSwitcher`` when some agents are strict (``engine: policy``).

The router runs the agents on a per-call ``FlowManager`` (see docs/agents.md): entering an agent
is a flows node built from its YAML (rendered prompt, tools, handoff tools, ``end_call``, and
a pre-action that sets the LLM model and the TTS voice and says the greeting). Every tool call runs
through :func:`~voicebot.agents.tools.run_tool` and every step is a decision in
``router.decisions``.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

from pipecat.flows import (
    NO_RESPONSE,
    ContextStrategy,
    ContextStrategyConfig,
    FlowArgs,
    FlowManager,
    FlowsFunctionSchema,
    NodeConfig,
)
from pipecat.frames.frames import (
    BotStoppedSpeakingFrame,
    CancelFrame,
    EndFrame,
    ErrorFrame,
    Frame,
    LLMContextFrame,
    LLMUpdateSettingsFrame,
    ManuallySwitchServiceFrame,
    StartFrame,
    TTSSpeakFrame,
    TTSUpdateSettingsFrame,
)
from pipecat.pipeline.llm_switcher import LLMSwitcher
from pipecat.processors.aggregators.dtmf_aggregator import DTMFAggregator
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import (
    LLMContextAggregatorPair,
    LLMUserAggregatorParams,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.services.llm_service import LLMService
from pipecat.services.settings import LLMSettings, TTSSettings
from pipecat.services.tts_service import TTSService
from pipecat.turns.user_stop import SpeechTimeoutUserTurnStopStrategy
from pipecat.turns.user_turn_strategies import UserTurnStrategies
from pydantic import BaseModel, ConfigDict, Field, field_validator

from voicebot.agents.backends import create_llm, parse_llm
from voicebot.agents.decisions import (
    AgentDecisionFrame,
    DecisionLog,
    DecisionRecord,
    TransferCallFrame,
)
from voicebot.agents.engine import PolicyLLMService
from voicebot.agents.policy import render, template_context
from voicebot.agents.schema import HUMAN, VoiceSpec
from voicebot.agents.session import AgentSession
from voicebot.agents.store import (
    END_CALL,
    TRANSFER_PREFIX,
    Agent,
    AgentStore,
    check_store,
    load_store,
)
from voicebot.agents.tools import (
    EndCall,
    Escalate,
    Handoff,
    ToolSpec,
    redacted,
    run_tool,
)
from voicebot.build.context import BuildContext, Built
from voicebot.build.problems import Problem
from voicebot.build.registry import DEFAULT, provider, service
from voicebot.services.local import LocalTTSService, LocalTTSSettings
from voicebot.services.openai import DEFAULT_APOLOGY, ApologyOnError
from voicebot.sessions.calls import live_session

# flows fills `{{ key }}` placeholders from its own state; our text is already rendered.
_FLOWS_PLACEHOLDER = re.compile(r"(?<!\\)(\{\{\s*[A-Za-z_][A-Za-z0-9_.]*\s*\}\})")


class AgentsParams(BaseModel):
    """Params of the ``agents`` processor (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    store: str = "agents"
    """Folder of the agent store, relative to the pipeline file."""
    start: str | None = None
    """The agent calls start with (default: the store's ``entry``)."""
    llm: dict[str, Any] | None = None
    """``{provider: azure_openai | openai | fake, ...}``; left out or without an endpoint, the
    agents run on their offline policy."""
    user_speech_timeout_ms: float = Field(default=200.0, ge=0)
    """After the caller stops speaking, wait this long for more before the turn ends."""
    dtmf_timeout_ms: float = Field(default=3000.0, gt=0)
    """Keyed digits end at ``#`` or after this long without another key; the entry is then a
    user turn ``DTMF: 1234#``, as if the caller had said the digits."""
    apology: str = DEFAULT_APOLOGY
    """Said when the LLM fails."""

    @field_validator("llm")
    @classmethod
    def _check_llm(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value:
            parse_llm(value)
        return value

    def store_path(self, base_dir: Path) -> Path:
        return (base_dir / self.store).resolve()

    def check(self, base_dir: Path) -> list[Problem]:
        """Every problem of the agent store (``voicebot validate`` calls this)."""
        folder = self.store_path(base_dir)
        store, problems = check_store(folder)
        if store is not None and self.start is not None and self.start not in store.agents:
            problems.append(
                Problem(
                    folder,
                    None,
                    "start",
                    self.start,
                    "the pipeline's start agent is not in the store",
                    f"agents: {', '.join(sorted(store.agents))}",
                )
            )
        return problems


service(
    "agents",
    consumes=["transcript", "dtmf"],
    emits=["text"],
    swallows=["transcript"],
    description="agents from a YAML store: prompts, tools, handoffs, on an LLM or offline policy",
)


@provider("agents", DEFAULT, AgentsParams)
def agents(params: AgentsParams, context: BuildContext) -> Built:
    """Agents from a store (prompts, tools, handoffs) on an LLM or their offline policy."""
    folder = params.store_path(context.base_dir)
    store = context.resources.get(
        f"agents.store:{folder}", lambda: load_store(folder, env=context.env)
    )
    start = params.start or store.entry
    llm = create_llm(params.llm, context)
    session = AgentSession(context.call_id, store, start, has_llm=llm is not None)
    # The call's stored session, opened by its endpoint (none for a pipeline run on its own):
    # a resumed call starts from its stored agent, memory and conversation.
    live = live_session(context.resources, context.call_id)
    messages: list[Any] = session.attach(live) if live is not None else []
    policy = PolicyLLMService(session)
    engine: LLMService[Any] | LLMSwitcher
    if llm is None:
        engine = policy
    elif any(a.spec.engine == "policy" for a in store.agents.values()):
        engine = LLMSwitcher([llm, policy])
    else:
        engine = llm
    timeout_secs = params.user_speech_timeout_ms / 1000
    strategies = UserTurnStrategies(
        stop=[SpeechTimeoutUserTurnStopStrategy(user_speech_timeout=timeout_secs)]
    )
    pair = LLMContextAggregatorPair(
        LLMContext(messages), user_params=LLMUserAggregatorParams(user_turn_strategies=strategies)
    )
    router = AgentRouter(session, engine, pair, llm=llm, policy=policy)
    apology = ApologyOnError(params.apology, on_error=router.llm_failed)
    keypad = DTMFAggregator(timeout=params.dtmf_timeout_ms / 1000)
    return Built([keypad, pair.user(), router, apology, engine], tail=[pair.assistant()])


class AgentRouter(FrameProcessor):
    """Runs a call's agents on a ``FlowManager``; see the module docstring.

    Attributes:
        session: the call's agents state (active agent, memory, visits).
    """

    def __init__(
        self,
        session: AgentSession,
        engine: LLMService[Any] | LLMSwitcher,
        context_aggregator: LLMContextAggregatorPair,
        *,
        llm: LLMService[Any] | None,
        policy: PolicyLLMService,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.session = session
        self._engine = engine
        self._pair = context_aggregator
        self._llm = llm
        self._policy = policy
        self._flows: FlowManager | None = None
        self._entering: asyncio.Task[None] | None = None
        self._users_seen = _user_messages(context_aggregator.user().context.get_messages())
        self._handoff_started: float | None = None
        session.on_record = self._publish

    @property
    def store(self) -> AgentStore:
        return self.session.store

    @property
    def decisions(self) -> DecisionLog:
        """Every decision of this call so far."""
        return self.session.log

    # -- frames ---------------------------------------------------------------------------------

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, StartFrame):
            await self.push_frame(frame, direction)
            self._start()
            return
        if isinstance(frame, EndFrame | CancelFrame):
            await self._stop_entering()
            self._save()
        elif isinstance(frame, LLMContextFrame) and direction == FrameDirection.DOWNSTREAM:
            await self._note_turn(frame.context)
        elif isinstance(frame, BotStoppedSpeakingFrame):
            self._save()  # the answer was played: the turn is complete
        await self.push_frame(frame, direction)

    async def cleanup(self) -> None:
        await super().cleanup()
        await self._stop_entering()
        self._save()

    def _save(self) -> None:
        """Store the call's state in the background (agents, memory, the context's messages)."""
        self.session.save(self._pair.user().context.get_messages())

    def _start(self) -> None:
        flows = FlowManager(
            llm=self._engine,
            context_aggregator=self._pair,
            worker=self.pipeline_worker,
            context_strategy=ContextStrategyConfig(strategy=ContextStrategy.APPEND),
        )
        flows.register_action("agent_settings", self._enter)
        self._flows = flows
        mode = "resumed" if self.session.resumed else "initial"
        node = self._node(self.session.active, mode)
        # Entering queues frames into the pipeline this processor is part of: not from in here.
        self._entering = self.create_task(flows.initialize(node), "enter_first_agent")

    async def _stop_entering(self) -> None:
        if self._entering is not None and not self._entering.done():
            await self.cancel_task(self._entering)
        self._entering = None

    async def _note_turn(self, context: LLMContext) -> None:
        users = _user_messages(context.get_messages())
        if users > self._users_seen:
            self._users_seen = users
            self.session.turn += 1
            await self.session.record("turn", engine=self.session.engine())
            self._save()

    async def _publish(self, record: DecisionRecord) -> None:
        await self.push_frame(AgentDecisionFrame(call_id=self.session.call_id, record=record))

    async def llm_failed(self, error: ErrorFrame) -> None:
        """The LLM reported an error (the caller hears an apology)."""
        await self.session.record("error", engine="llm", reason=str(error.error)[:200])

    # -- agents as flows nodes ------------------------------------------------------------------

    def _node(self, name: str, mode: str) -> NodeConfig:
        """The flows node that enters agent ``name`` (``mode``: initial, announced, silent, or
        resumed: a reconnected call goes on with its agent, without a greeting)."""
        session = self.session
        agent = self.store.agent(name)
        variables = template_context(session.memory, agent=name)
        role = str(render(agent.prompt, variables)) if agent.prompt else ""
        role = role or f"You are the {name} agent on a phone call. {agent.spec.description}"
        first = session.visits.get(name, 0) == 0
        greeting = agent.greeting if first else (agent.return_greeting or agent.greeting)
        text = str(render(greeting, variables) or "") if greeting is not None else ""
        # The greeting is spoken by our own pre-action (after the voice switch), not by flows'
        # `tts_say`, which renders `{{ }}` again and warns about its own handler in 1.14.
        pre_actions: list[Any] = [
            {
                "type": "agent_settings",
                "agent": name,
                "mode": mode,
                "greeting": text if mode not in ("silent", "resumed") else "",
            }
        ]
        node: NodeConfig = {
            "name": name,
            "role_message": _escape(role),
            "task_messages": [],
            "functions": self._functions(agent),
            "pre_actions": pre_actions,
            "respond_immediately": mode == "silent",
        }
        if agent.spec.context == "fresh" and mode not in ("initial", "resumed"):
            node["context_strategy"] = ContextStrategyConfig(strategy=ContextStrategy.RESET)
        return node

    def _functions(self, agent: Agent) -> list[Any]:
        functions: list[Any] = [self._tool_function(self.store.tools[t]) for t in agent.spec.tools]
        reason = {"reason": {"type": "string", "description": "Why, in a few words."}}
        for handoff in agent.spec.handoffs:
            if handoff.to == HUMAN:
                description = (
                    "Transfer the caller to a person, when they ask for one or you cannot help."
                )
            else:
                target = self.store.agent(handoff.to).spec.description
                description = f"Hand the caller over to the {handoff.to} agent: {target}"
            functions.append(
                FlowsFunctionSchema(
                    name=TRANSFER_PREFIX + handoff.to,
                    description=description,
                    properties=reason,
                    required=[],
                    handler=self._transfer_handler(handoff.to),
                    cancel_on_interruption=True,
                )
            )
        functions.append(
            FlowsFunctionSchema(
                name=END_CALL,
                description="Hang up. Say goodbye in the same reply before you call it.",
                properties=reason,
                required=[],
                handler=self._end_handler,
                cancel_on_interruption=True,
            )
        )
        return functions

    def _tool_function(self, spec: ToolSpec) -> FlowsFunctionSchema:
        async def handler(args: FlowArgs, flow_manager: FlowManager) -> tuple[Any, Any]:
            return await self._run_tool(spec, args)

        return FlowsFunctionSchema(
            name=spec.name,
            description=spec.description,
            properties=spec.properties,
            required=spec.required,
            handler=handler,
            # The LLM waits for the result (pipecat runs tools that survive interruptions as
            # "async", answering before the result arrives).
            cancel_on_interruption=True,
            # Our own timeout answers first; pipecat's is the backstop.
            timeout_secs=spec.timeout_secs + 2,
        )

    def _transfer_handler(self, target: str) -> Any:
        async def handler(args: FlowArgs, flow_manager: FlowManager) -> tuple[Any, Any]:
            reason = str(args.get("reason") or "")
            mode = args.get("mode") if args.get("mode") in ("announced", "silent") else None
            return await self._handoff(target, reason, None, mode)

        return handler

    async def _end_handler(self, args: FlowArgs, flow_manager: FlowManager) -> tuple[Any, Any]:
        return await self._end("", str(args.get("reason") or "goodbye"), None)

    # -- what tools and handoffs do -------------------------------------------------------------

    async def _run_tool(self, spec: ToolSpec, args: FlowArgs) -> tuple[Any, Any]:
        session = self.session
        outcome = await run_tool(spec, session.tool_context(), args)
        await session.record(
            "tool",
            engine=session.engine(),
            tool=spec.name,
            args=redacted(dict(args), spec.redact),
            result=redacted(outcome.result, spec.redact),
            reason=outcome.error or "",
            latency_ms=outcome.latency_ms,
        )
        action = outcome.action
        if isinstance(action, Handoff):
            reason = action.reason or spec.name
            return await self._handoff(action.to, reason, outcome.result, action.mode)
        if isinstance(action, Escalate):
            return await self._escalate(action.reason or spec.name, outcome.result)
        if isinstance(action, EndCall):
            return await self._end(action.say, action.reason or spec.name, outcome.result)
        return outcome.result, None

    async def _handoff(
        self, target: str, reason: str, result: Any, mode: str | None = None
    ) -> tuple[Any, Any]:
        session = self.session
        agent = session.agent
        if target == HUMAN and HUMAN in agent.handoffs:
            return await self._escalate(reason, result)
        if target not in agent.handoffs or target not in self.store.agents:
            allowed = ", ".join(agent.handoffs) or "none"
            message = f"{agent.name} cannot hand the call to {target!r}; allowed: {allowed}"
            await session.record("error", reason=message, target=target)
            return {"error": message}, None
        mode = mode or agent.handoffs[target].mode
        await session.record("handoff", target=target, reason=reason)
        self._save()  # what was said so far belongs to the agent handing over
        self._handoff_started = asyncio.get_running_loop().time()
        return (result if result is not None else {"handoff": target}), self._node(target, mode)

    async def _escalate(self, reason: str, result: Any) -> tuple[Any, Any]:
        store, session = self.store, self.session
        variables = template_context(session.memory, agent=session.active)
        number = store.spec.human.transfer_to
        frames: list[Frame]
        if number:
            say = str(render(store.human_say, variables))
            frames = [TTSSpeakFrame(say), TransferCallFrame(to=number, reason=reason)]
            await session.record("escalate", target=number, reason=reason)
            answer = {"status": "transferring to a person"}
        else:
            say = str(render(store.human_unavailable, variables))
            frames = [TTSSpeakFrame(say), EndFrame(reason="nobody available to take the call")]
            await session.record("escalate", reason=f"{reason}; nobody available, ending the call")
            answer = {"status": "nobody available; the call is ending"}
        await self.pipeline_worker.queue_frames(frames)
        return (result if result is not None else answer), NO_RESPONSE

    async def _end(self, say: str, reason: str, result: Any) -> tuple[Any, Any]:
        await self.session.record("end", reason=reason)
        frames: list[Frame] = [TTSSpeakFrame(say)] if say else []
        frames.append(EndFrame(reason=reason))
        await self.pipeline_worker.queue_frames(frames)
        return (result if result is not None else {"status": "call ending"}), NO_RESPONSE

    # -- entering an agent ----------------------------------------------------------------------

    async def _enter(self, action: dict[str, Any], flow_manager: FlowManager) -> None:
        """The ``agent_settings`` pre-action: make ``action["agent"]`` the active agent."""
        session = self.session
        name, mode = str(action["agent"]), str(action["mode"])
        agent = self.store.agent(name)
        session.active = name
        if mode != "resumed":
            session.visits[name] = session.visits.get(name, 0) + 1
        self._save()
        engine = session.engine(name)
        session.silent_entry = mode == "silent" and engine == "policy"
        frames: list[Frame] = []
        if isinstance(self._engine, LLMSwitcher):
            target = self._llm if engine == "llm" else self._policy
            frames.append(ManuallySwitchServiceFrame(service=target))  # type: ignore[arg-type]
        if engine == "llm" and self._llm is not None:
            model = agent.spec.model
            delta = LLMSettings()
            if model.deployment:
                delta.model = model.deployment
            if model.temperature is not None:
                delta.temperature = model.temperature
            if model.max_tokens is not None:
                delta.max_tokens = model.max_tokens
            if delta.given_fields():
                frames.append(LLMUpdateSettingsFrame(delta=delta, service=self._llm))
        voice_label = None
        if agent.spec.voice is not None:
            voice_delta, voice_label = self._voice(agent.spec.voice)
            frames.append(TTSUpdateSettingsFrame(delta=voice_delta))
        if action.get("greeting"):
            frames.append(TTSSpeakFrame(str(action["greeting"])))
        if frames:
            await flow_manager.worker.queue_frames(frames)
        latency = None
        if self._handoff_started is not None:
            latency = round((asyncio.get_running_loop().time() - self._handoff_started) * 1000, 1)
            self._handoff_started = None
        await session.record(
            "enter",
            agent=name,
            engine=engine,
            reason=mode,
            target=voice_label,
            latency_ms=latency,
        )

    def _voice(self, voice: VoiceSpec) -> tuple[TTSSettings, str]:
        """The voice as a settings delta of the pipeline's TTS's own kind (so Azure's ``style``
        and ``rate`` land in its fields; the local TTS gets the ``local:`` part), and how the
        decision log names it."""
        tts = _find_tts(self.pipeline_worker.pipeline)
        if isinstance(tts, LocalTTSService):
            name, pitch, length_scale = voice.local_request()
            settings = LocalTTSSettings(voice=name, pitch=pitch, length_scale=length_scale)
            return settings, f"{voice.name} (local: {tts.resolve(settings)})"
        values = {"voice": voice.name, "style": voice.style, "rate": voice.rate}
        given = {k: v for k, v in values.items() if v is not None}
        kind = type(tts.settings) if tts is not None else TTSSettings
        delta = kind.from_mapping(given)
        assert isinstance(delta, TTSSettings)
        return delta, voice.name


def _user_messages(messages: list[Any]) -> int:
    return sum(1 for m in messages if isinstance(m, dict) and m.get("role") == "user")


def _escape(text: str) -> str:
    return _FLOWS_PLACEHOLDER.sub(r"\\\1", text)


def _find_tts(root: FrameProcessor) -> TTSService | None:
    """The first TTS service in the pipeline (searching nested pipelines too)."""
    pending: list[FrameProcessor] = [root]
    while pending:
        candidate = pending.pop(0)
        if isinstance(candidate, TTSService):
            return candidate
        pending[:0] = [p for p in candidate.processors if p is not candidate]
    return None
