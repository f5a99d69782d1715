"""The shape of agent-store files (pydantic models, unknown keys rejected).

A store is a folder::

    agents/
      store.yaml          # StoreFile: entry agent, shared memory, human escalation, shared rules
      auth.yaml           # AgentFile, one per agent
      billing.yaml
      prompts/auth.jinja  # prompt templates, rendered with the call's memory on entry
      tools/bank.py       # @tool functions

See ``agents/README.md`` for every key with an example.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

#: The handoff target that means "a person", not an agent of the store.
HUMAN = "human"

_NAME = r"^[a-z][a-z0-9_]*$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class LocalVoiceSpec(_Strict):
    """How the agent sounds on the offline TTS (``tts: {provider: local}``, piper).

    Unset fields: ``length_scale`` is the pipeline's; with ``voice`` set, ``pitch`` is that
    voice's own (1.0); with neither ``voice`` nor ``pitch`` (or no ``local:`` part at all), the
    local TTS derives a pitch from the voice ``name`` (see
    :func:`voicebot.services.local.resolve_voice`).
    """

    voice: str | None = None
    """A packaged piper voice (``joe``)."""
    pitch: float | None = Field(default=None, ge=0.5, le=2.0)
    """Pitch factor, duration kept: 0.9 is 10 % lower, 1.1 10 % higher."""
    length_scale: float | None = Field(default=None, ge=0.5, le=2.0)
    """piper's length scale: 1.1 speaks 10 % slower, 0.9 faster."""

    @field_validator("voice")
    @classmethod
    def _packaged(cls, value: str | None) -> str | None:
        from voicebot.services.local import VOICES

        if value is not None and value not in VOICES:
            raise ValueError(f"not a packaged local voice; packaged: {', '.join(sorted(VOICES))}")
        return value


class VoiceSpec(_Strict):
    """The TTS voice an agent speaks with; sent to the TTS as settings on entry."""

    name: str = Field(min_length=1)
    """Voice name, e.g. ``en-US-AvaMultilingualNeural`` (Azure) or a local voice."""
    style: str | None = None
    """Speaking style where the TTS supports it (Azure: ``cheerful``, ``customerservice``)."""
    rate: str | None = None
    """Speaking rate where the TTS supports it (Azure: ``1.1``, ``+10%``, ``fast``)."""
    local: LocalVoiceSpec | None = None
    """The voice on the offline TTS; the Azure fields above do not apply there."""

    @field_validator("rate", mode="before")
    @classmethod
    def _rate_as_text(cls, value: object) -> object:
        return str(value) if isinstance(value, int | float) else value

    def local_request(self) -> tuple[str, float | None, float | None]:
        """What the local TTS is asked for: ``(voice, pitch, length_scale)``, the voice being
        ``local.voice`` or else :attr:`name`; what is None is filled in by
        :func:`voicebot.services.local.resolve_voice` (a pitch derived from a name that is not a
        packaged voice)."""
        local = self.local or LocalVoiceSpec()
        return local.voice or self.name, local.pitch, local.length_scale


class ModelSpec(_Strict):
    """LLM settings for an agent's turns; unset fields keep the pipeline's ``llm`` settings."""

    deployment: str | None = None
    """Azure OpenAI deployment (or model name on other OpenAI-compatible servers)."""
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, gt=0)


class HandoffSpec(_Strict):
    """One agent (or ``human``) this agent may hand the call to."""

    to: str = Field(pattern=_NAME)
    mode: Literal["announced", "silent"] = "announced"
    """``announced``: the target greets the caller; ``silent``: it answers the pending request."""


class SlotSpec(_Strict):
    """A value the offline policy extracts from what the caller says into memory.

    ``digits``: a run of digits (spoken digits count: "one two three four"), ``min``–``max``
    long; ``date``: a date (``1985-03-14``, ``03/14/1985``, ``March 14th 1985``) as ISO text;
    ``amount``: money ("50 dollars", "$12.50") as a number; ``regex``: the first group of
    ``pattern`` (or the whole match).
    """

    extract: Literal["digits", "date", "amount", "regex"]
    min: int | None = Field(default=None, ge=1)
    max: int | None = Field(default=None, ge=1)
    pattern: str | None = None

    @model_validator(mode="after")
    def _check(self) -> SlotSpec:
        if self.extract == "regex":
            if not self.pattern:
                raise ValueError("a regex slot needs `pattern:`")
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"pattern is not a valid regular expression: {exc}") from None
        elif self.pattern is not None:
            raise ValueError(f"`pattern:` is only for regex slots, not {self.extract}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is larger than max ({self.max})")
        return self


class RuleSpec(_Strict):
    """One rule of the offline policy: when it applies, and what the bot does.

    A rule applies when every condition it has holds: ``when`` (one of the phrases occurs in
    what the caller said; ``re:`` starts a regular expression, a trailing ``*`` matches any
    word ending), ``heard`` (these slots were found in this utterance) and ``if`` (a Jinja
    expression over memory). The first rule that applies answers the turn: it updates memory
    (``remember``, ``forget``) and then says ``say``, calls ``tool`` (arguments from memory by
    name, or ``args``; ``say`` is then rendered with the tool's ``result``), hands off to
    ``handoff`` (after saying ``say``; ``mode`` overrides the handoff's announced/silent), or says
    ``say`` and ends the call (``end: true``).
    """

    name: str = ""
    when: list[str] = []
    heard: list[str] = []
    if_: str | None = Field(default=None, alias="if")
    remember: dict[str, Any] = {}
    forget: list[str] = []
    say: str | None = None
    tool: str | None = None
    args: dict[str, Any] = {}
    handoff: str | None = None
    mode: Literal["announced", "silent"] | None = None
    """How this rule hands off (default: the agent's ``handoffs:`` entry for the target)."""
    end: bool = False

    @model_validator(mode="after")
    def _check(self) -> RuleSpec:
        actions = [k for k in ("tool", "handoff", "end") if getattr(self, k)]
        if len(actions) > 1:
            raise ValueError(f"a rule does one of tool, handoff, end; this one has {actions}")
        if not (actions or self.say or self.remember or self.forget):
            raise ValueError("a rule needs something to do: say, tool, handoff, end or remember")
        if self.args and not self.tool:
            raise ValueError("`args:` belong to a rule with `tool:`")
        if self.mode and not self.handoff:
            raise ValueError("`mode:` belongs to a rule with `handoff:`")
        for phrase in self.when:
            if phrase.startswith("re:"):
                try:
                    re.compile(phrase[3:])
                except re.error as exc:
                    message = f"{phrase!r} is not a valid regular expression: {exc}"
                    raise ValueError(message) from None
        return self


class PolicySpec(_Strict):
    """The offline, deterministic policy of an agent (or the store's shared rules)."""

    slots: dict[str, SlotSpec] = {}
    rules: list[RuleSpec] = []
    fallback: str | None = None
    """Said when no rule applies (default: the store's fallback)."""


class AgentFile(_Strict):
    """One agent: ``agents/<name>.yaml``."""

    name: str = Field(pattern=_NAME)
    description: str = ""
    """What the agent is for; other agents' LLMs see it on the tool that hands off to it."""
    greeting: str = ""
    """Jinja, said when the agent is entered for the first time in a call (announced handoffs)."""
    return_greeting: str = ""
    """Jinja, said on later entries (default: the greeting)."""
    voice: VoiceSpec | None = None
    model: ModelSpec = ModelSpec()
    prompt: str | None = None
    """Path of a Jinja template relative to the store (``prompts/billing.jinja``)."""
    tools: list[str] = []
    handoffs: list[HandoffSpec] = []
    context: Literal["shared", "fresh"] = "shared"
    """``shared``: the conversation so far stays in the LLM context; ``fresh``: it is reset."""
    engine: Literal["auto", "policy"] = "auto"
    """``auto``: the LLM when one is configured, else the policy; ``policy``: always the policy
    (strict LLM-free steps, such as identity checks)."""
    policy: PolicySpec = PolicySpec()

    @field_validator("handoffs", mode="before")
    @classmethod
    def _short_handoffs(cls, value: object) -> object:
        if isinstance(value, list):
            return [{"to": v} if isinstance(v, str) else v for v in value]
        return value


class HumanSpec(_Strict):
    """Escalation to a person."""

    transfer_to: str = ""
    """Phone number (E.164) or ACS identity to transfer to; empty: nobody is available."""
    say: str = "Let me connect you with one of my colleagues. Please hold."
    unavailable: str = (
        "I'm sorry, there is nobody available to take your call right now. "
        "Please call back later. Goodbye."
    )


class StoreFile(_Strict):
    """``agents/store.yaml``: what the whole store shares."""

    entry: str = Field(pattern=_NAME)
    """The agent every call starts with (a pipeline may override it with ``start:``)."""
    description: str = ""
    memory: dict[str, Any] = {}
    """Initial session memory of every call."""
    imports: list[str] = []
    """Python modules with ``@tool`` functions, besides those in the store's ``tools/`` folder."""
    human: HumanSpec = HumanSpec()
    policy: PolicySpec = PolicySpec()
    """Rules every agent falls back to after its own (goodbye, asking for a person, ...)."""
