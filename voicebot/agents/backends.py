"""The LLMs the ``agents`` processor can run on, chosen by ``llm: {provider: ...}``.

``fake`` is the scripted :class:`~voicebot.testing.fakes.FakeLLMService`; ``openai`` and
``azure_openai`` come from :mod:`voicebot.services.openai`. A backend whose settings name no
endpoint (e.g. ``endpoint: ${AZURE_OPENAI_ENDPOINT:-}`` with the variable unset) counts as not
configured: the agents then run on their offline policy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pipecat.services.llm_service import LLMService
from pydantic import BaseModel, ValidationError

from voicebot.build.context import BuildContext
from voicebot.services.openai import (
    AzureOpenAIParams,
    OpenAIParams,
    azure_openai_service,
    openai_service,
)
from voicebot.testing.fakes import FakeLLMParams, FakeLLMService


@dataclass(frozen=True)
class Backend:
    params: type[BaseModel]
    create: Callable[[Any, BuildContext], LLMService[Any] | None]
    """Build the call's LLM service; None when the settings name no endpoint."""


def _fake(params: FakeLLMParams, context: BuildContext) -> LLMService[Any]:
    return FakeLLMService(params=params)


BACKENDS: dict[str, Backend] = {
    "fake": Backend(FakeLLMParams, _fake),
    "openai": Backend(OpenAIParams, openai_service),
    "azure_openai": Backend(AzureOpenAIParams, azure_openai_service),
}


def parse_llm(raw: Mapping[str, Any]) -> tuple[str, BaseModel]:
    """``{provider: name, ...settings}`` → (name, validated settings); ValueError listing every
    problem otherwise."""
    values = dict(raw)
    name = values.pop("provider", None)
    if name not in BACKENDS:
        raise ValueError(
            f"llm.provider must be one of {', '.join(sorted(BACKENDS))} (got {name!r}); "
            "leave `llm` out to run on the agents' offline policy"
        )
    try:
        return name, BACKENDS[name].params.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(
            f"llm.{'.'.join(str(p) for p in e['loc'])}: "
            + ("unknown key" if e["type"] == "extra_forbidden" else e["msg"].lower())
            for e in exc.errors()
        )
        raise ValueError(problems) from None


def create_llm(raw: Mapping[str, Any] | None, context: BuildContext) -> LLMService[Any] | None:
    """The call's LLM service for ``llm:`` settings; None when there is none to use."""
    if not raw:
        return None
    name, params = parse_llm(raw)
    return BACKENDS[name].create(params, context)
