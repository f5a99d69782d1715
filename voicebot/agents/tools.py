"""Tools: async Python functions an agent may call, declared with :func:`tool`.

::

    from voicebot.agents import ToolContext, tool

    @tool(timeout_secs=3, redact=["pin"])
    async def verify_identity(ctx: ToolContext, account_number: str, pin: str) -> dict:
        '''Check the caller's identity against the bank's records.

        Args:
            account_number: The caller's account number, digits only.
            pin: The caller's four-digit PIN.
        '''
        ...
        return ctx.handoff("billing", result={"verified": True}, reason="identity verified")

The first parameter is the :class:`ToolContext` (the call's memory and the way to hand off,
escalate or end the call); the others are the tool's arguments. Their type hints and the
docstring's ``Args:`` section become the JSON schema the LLM sees (pipecat's direct-function
schema extraction, plus ``Literal`` choices). A tool returns JSON-ready data, or one of
:class:`Handoff`, :class:`Escalate`, :class:`EndCall` (made with the context's methods).

A tool never crashes a call: arguments are checked against the signature first, every call has a
timeout (``timeout_secs``, 5 s by default), and a raising, hanging or badly-called tool gives the
LLM an ``{"error": ...}`` result it can talk about.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import time
import types
import typing
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

from loguru import logger
from pipecat.adapters.llm.schemas.direct_function import BaseDirectFunctionWrapper
from pipecat.adapters.llm.schemas.function_schema import FunctionSchema
from pydantic import BaseModel, ConfigDict, ValidationError, create_model

#: Seconds a tool may run unless its decorator says otherwise.
DEFAULT_TIMEOUT_SECS = 5.0

#: Argument and result keys masked in logs whatever the tool says (compared lower-case).
SENSITIVE_KEYS = frozenset(
    {
        "pin",
        "password",
        "passcode",
        "date_of_birth",
        "dob",
        "ssn",
        "card_number",
        "cvv",
        "account_number",
        "security_answer",
    }
)

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


# --------------------------------------------------------------------------------------------
# What a tool may return besides data
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Handoff:
    """Hand the call to another agent (one the current agent lists in ``handoffs``)."""

    to: str
    result: Any = None
    """What the LLM is told (default: ``{"handoff": to}``)."""
    reason: str = ""
    mode: Literal["announced", "silent"] | None = None
    """Override of the handoff's mode in the agent's ``handoffs:``."""


@dataclass(frozen=True)
class Escalate:
    """Transfer the call to a human, or end it with the store's message if none is available."""

    reason: str = ""
    result: Any = None


@dataclass(frozen=True)
class EndCall:
    """Say ``say`` (if any), then hang up."""

    say: str = ""
    reason: str = ""
    result: Any = None


Action = Handoff | Escalate | EndCall


@dataclass
class ToolContext:
    """What a tool gets besides its arguments: the call it runs in.

    ``memory`` is the call's session memory, shared by all agents of the call and rendered into
    their prompts and greetings; a tool may read and write it.
    """

    call_id: str
    agent: str
    memory: dict[str, Any]
    store_dir: Path

    def handoff(
        self,
        to: str,
        *,
        result: Any = None,
        reason: str = "",
        mode: Literal["announced", "silent"] | None = None,
    ) -> Handoff:
        """Return this from a tool to hand the call to agent ``to`` (``mode``: override the
        announced/silent of the agent's ``handoffs:``)."""
        return Handoff(to, result, reason, mode)

    def escalate(self, reason: str = "", *, result: Any = None) -> Escalate:
        """Return this from a tool to transfer the call to a human."""
        return Escalate(reason, result)

    def end_call(self, say: str = "", *, reason: str = "", result: Any = None) -> EndCall:
        """Return this from a tool to say goodbye (``say``) and hang up."""
        return EndCall(say, reason, result)


# --------------------------------------------------------------------------------------------
# Declaring tools
# --------------------------------------------------------------------------------------------


class _SchemaExtractor(BaseDirectFunctionWrapper):
    """pipecat's direct-function schema extraction, with ``ctx`` as the special first
    parameter and ``Literal`` choices as JSON-schema enums."""

    @classmethod
    def special_first_param_name(cls) -> str:
        return "ctx"

    def _typehint_to_jsonschema(self, type_hint: Any) -> dict[str, Any]:
        origin = get_origin(type_hint)
        if origin is Literal:
            choices = list(get_args(type_hint))
            kinds = {type(c) for c in choices}
            schema: dict[str, Any] = {"enum": choices}
            if kinds == {str}:
                schema["type"] = "string"
            elif kinds <= {int}:
                schema["type"] = "integer"
            return schema
        args = get_args(type_hint)
        if origin is typing.Union or origin is types.UnionType:
            others = [a for a in args if a is not type(None)]
            if len(others) == 1:  # Optional[X]: the LLM may leave it out (it has a default)
                return self._typehint_to_jsonschema(others[0])
        return super()._typehint_to_jsonschema(type_hint)


@dataclass(frozen=True)
class ToolSpec:
    """A declared tool: its name, schema, limits and the function behind it."""

    name: str
    function: Callable[..., Awaitable[Any]]
    description: str
    properties: dict[str, Any]
    required: list[str]
    timeout_secs: float
    redact: frozenset[str]
    arguments: type[BaseModel] = field(repr=False)
    """Validates the LLM's arguments (types coerced, unknown keys dropped)."""

    def schema(self) -> FunctionSchema:
        """The function schema the LLM sees."""
        return FunctionSchema(
            name=self.name,
            description=self.description,
            properties=self.properties,
            required=self.required,
        )

    @property
    def module(self) -> str:
        return getattr(self.function, "__module__", "")


def tool(
    fn: F | None = None,
    *,
    name: str | None = None,
    timeout_secs: float = DEFAULT_TIMEOUT_SECS,
    redact: Iterable[str] = (),
) -> Any:
    """Declare an async function as a tool an agent can name in its ``tools:`` list.

    Usable bare (``@tool``) or with options: ``name`` (default: the function's name),
    ``timeout_secs`` (default 5 s), ``redact`` (argument and result keys masked in the decision
    log, on top of :data:`SENSITIVE_KEYS`). The function is returned unchanged, with its
    :class:`ToolSpec` attached; the agent store collects decorated functions from the modules in
    its ``tools/`` folder.
    """

    def decorate(function: F) -> F:
        spec = make_spec(function, name=name, timeout_secs=timeout_secs, redact=redact)
        function.__voicebot_tool__ = spec  # type: ignore[attr-defined]
        return function

    return decorate(fn) if fn is not None else decorate


def make_spec(
    function: Callable[..., Awaitable[Any]],
    *,
    name: str | None = None,
    timeout_secs: float = DEFAULT_TIMEOUT_SECS,
    redact: Iterable[str] = (),
) -> ToolSpec:
    """Build the :class:`ToolSpec` of ``function``; raises TypeError with what is wrong."""
    if not inspect.iscoroutinefunction(function):
        raise TypeError(f"tool {function.__name__} must be an async function (async def)")
    if timeout_secs <= 0:
        raise TypeError(f"tool {function.__name__}: timeout_secs must be positive")
    try:
        extracted = _SchemaExtractor(function)
    except Exception as exc:  # pipecat raises a bare Exception naming the problem
        raise TypeError(
            f"tool {function.__name__}: {exc}; write `async def {function.__name__}"
            "(ctx: ToolContext, ...)`"
        ) from None
    return ToolSpec(
        name=name or function.__name__,
        function=function,
        description=extracted.description,
        properties=extracted.properties,
        required=extracted.required,
        timeout_secs=timeout_secs,
        redact=frozenset(k.lower() for k in redact),
        arguments=_arguments_model(function),
    )


def _arguments_model(function: Callable[..., Any]) -> type[BaseModel]:
    try:
        hints = typing.get_type_hints(function)
    except Exception:
        hints = {}
    fields: dict[str, Any] = {}
    for index, (pname, param) in enumerate(inspect.signature(function).parameters.items()):
        if index == 0 or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        default = ... if param.default is param.empty else param.default
        fields[pname] = (hints.get(pname, Any), default)
    config = ConfigDict(extra="ignore", arbitrary_types_allowed=True, coerce_numbers_to_str=True)
    model: type[BaseModel] = create_model(
        f"{function.__name__}_arguments", __config__=config, **fields
    )
    return model


def tools_in(namespace: object) -> list[ToolSpec]:
    """The tools declared in a module (or any object with attributes), in definition order."""
    found: list[ToolSpec] = []
    for value in vars(namespace).values():
        spec = getattr(value, "__voicebot_tool__", None)
        if isinstance(spec, ToolSpec) and spec not in found:
            found.append(spec)
    return found


# --------------------------------------------------------------------------------------------
# Running tools
# --------------------------------------------------------------------------------------------


@dataclass
class ToolOutcome:
    """What one tool call came to: the LLM's result, an action, an error, and how long it took."""

    result: Any
    action: Action | None = None
    error: str | None = None
    latency_ms: float = 0.0


async def run_tool(spec: ToolSpec, ctx: ToolContext, arguments: Mapping[str, Any]) -> ToolOutcome:
    """Call ``spec`` with ``arguments`` from the LLM, within its timeout; never raises.

    Bad arguments, an exception and a timeout all come back as an ``{"error": ...}`` result.
    """
    started = time.perf_counter()

    def done(result: Any, action: Action | None = None, error: str | None = None) -> ToolOutcome:
        return ToolOutcome(result, action, error, round((time.perf_counter() - started) * 1000, 1))

    try:
        checked = spec.arguments.model_validate(dict(arguments))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'arguments'}: {e['msg'].lower()}"
            for e in exc.errors()
        )
        message = f"invalid arguments for {spec.name}: {problems}"
        return done({"error": message}, error=message)
    kwargs = {k: getattr(checked, k) for k in type(checked).model_fields}
    try:
        async with asyncio.timeout(spec.timeout_secs):
            value = await spec.function(ctx, **kwargs)
    except TimeoutError:
        message = f"{spec.name} did not answer within {spec.timeout_secs:g} s"
        logger.warning(f"call {ctx.call_id}: tool {message}")
        return done({"error": message + "; tell the caller and offer to try again"}, error=message)
    except Exception as exc:
        message = f"{spec.name} failed: {type(exc).__name__}: {exc}"
        logger.opt(exception=exc).warning(f"call {ctx.call_id}: tool {message}")
        apology = f"{spec.name} failed; apologise and offer another way"
        return done({"error": apology}, error=message)
    if isinstance(value, Handoff):
        return done(jsonable(value.result) if value.result is not None else None, value)
    if isinstance(value, Escalate | EndCall):
        return done(jsonable(value.result) if value.result is not None else None, value)
    return done(jsonable(value))


def jsonable(value: Any) -> Any:
    """``value`` as JSON-ready data (pydantic models and dataclasses become dicts)."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def redacted(value: Any, extra: frozenset[str] = frozenset()) -> Any:
    """A copy of ``value`` with sensitive keys masked (for logs; the LLM sees the real data).

    Keys in :data:`SENSITIVE_KEYS` or ``extra`` are masked: long values (8+ characters) keep
    their last four characters (``****5678``), short ones are masked entirely.
    """
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if str(key).lower() in SENSITIVE_KEYS or str(key).lower() in extra:
                out[str(key)] = _mask(item)
            else:
                out[str(key)] = redacted(item, extra)
        return out
    if isinstance(value, list | tuple):
        return [redacted(v, extra) for v in value]
    return value


def _mask(value: Any) -> str:
    if value is None or value == "":
        return ""
    text = str(value)
    return "****" + text[-4:] if len(text) >= 8 else "****"
