"""``llm`` providers ``azure_openai`` and ``openai``: chat completions, streaming, with tools.

::

    - llm:
        provider: azure_openai
        endpoint: ${AZURE_OPENAI_ENDPOINT}       # https://<resource>.openai.azure.com
        api_key: ${AZURE_OPENAI_API_KEY:-}       # empty: a Microsoft Entra ID token
        deployment: ${AZURE_OPENAI_DEPLOYMENT:-gpt-4o-mini}
    - llm:
        provider: openai                         # any OpenAI-compatible server
        base_url: http://127.0.0.1:8080/v1       # llama.cpp; Ollama: http://127.0.0.1:11434/v1
        model: llama3.1

The services are pipecat's ``AzureLLMService`` and ``OpenAILLMService``; what voicebot adds:

* one HTTP client per endpoint and key for the whole process (a
  :class:`~voicebot.services.resources.SharedResources` entry, closed at shutdown), where pipecat
  would open a connection pool per call;
* a timeout on every request (``timeout_secs``) and retries with exponential backoff on 429 and
  5xx answers, honouring ``retry-after`` (``max_retries``; the ``openai`` SDK's own retry loop);
* a spoken apology when the LLM fails (:class:`ApologyOnError`), so the caller never waits in
  silence.

An endpoint left empty (``endpoint: ${AZURE_OPENAI_ENDPOINT:-}`` with the variable unset) means
"no LLM configured": the ``agents`` processor then runs its offline policy; the plain ``llm``
processor refuses to build, naming the setting.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

from loguru import logger
from openai import AsyncAzureOpenAI, AsyncOpenAI
from pipecat.frames.frames import (
    ErrorFrame,
    Frame,
    LLMContextFrame,
    TTSSpeakFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.services.azure.llm import AzureLLMService
from pipecat.services.llm_service import LLMService
from pipecat.services.openai.llm import OpenAILLMService
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from voicebot.build.context import BuildContext, Built
from voicebot.build.registry import provider
from voicebot.services import kinds
from voicebot.services.conversation import ConversationParams, conversation
from voicebot.services.resources import SharedResources

#: What the caller hears when the LLM fails (a timeout, an error answer, a cut stream).
DEFAULT_APOLOGY = "Sorry, I'm having trouble right now. Could you say that again?"
#: Scope of a Microsoft Entra ID token for Azure OpenAI.
ENTRA_SCOPE = "https://cognitiveservices.azure.com/.default"


class _ClientParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, gt=0)
    timeout_secs: float = Field(default=15.0, gt=0)
    """Longest wait for one request (connecting, then each read of the stream), in seconds."""
    max_retries: int = Field(default=2, ge=0, le=10)
    """Retries of a request answered 429 or 5xx (or failing to connect), with backoff."""
    apology: str = DEFAULT_APOLOGY


class OpenAIParams(_ClientParams):
    """An OpenAI-compatible server: OpenAI itself, llama.cpp, Ollama, vLLM, ..."""

    base_url: str = ""
    """e.g. ``https://api.openai.com/v1`` or ``http://127.0.0.1:8080/v1``; empty: none."""
    api_key: SecretStr = SecretStr("")
    """Sent as ``Authorization: Bearer``; local servers usually accept anything."""
    model: str = "gpt-4o-mini"

    def configured(self) -> bool:
        return bool(self.base_url.strip())


class AzureOpenAIParams(_ClientParams):
    """An Azure OpenAI resource (``AsyncAzureOpenAI``)."""

    endpoint: str = ""
    """``https://<resource>.openai.azure.com`` (or ending in ``/openai/v1`` for the v1 API)."""
    api_key: SecretStr = SecretStr("")
    """Empty: authenticate with a Microsoft Entra ID token (needs ``azure-identity``)."""
    deployment: str = "gpt-4o-mini"
    api_version: str = "2024-10-21"

    def configured(self) -> bool:
        return bool(self.endpoint.strip())


# --------------------------------------------------------------------------------------------
# Shared clients
# --------------------------------------------------------------------------------------------


def _key_digest(secret: SecretStr) -> str:
    return hashlib.sha256(secret.get_secret_value().encode()).hexdigest()[:12]


async def _close(client: AsyncOpenAI) -> None:
    await client.close()


def openai_client(params: OpenAIParams, resources: SharedResources) -> AsyncOpenAI:
    """The process's client for this base URL and key (created on first use)."""
    key = f"openai-client:{params.base_url}:{_key_digest(params.api_key)}:{params.timeout_secs}"

    def create() -> AsyncOpenAI:
        return AsyncOpenAI(
            base_url=params.base_url,
            api_key=params.api_key.get_secret_value() or "not-needed",
            timeout=params.timeout_secs,
            max_retries=params.max_retries,
        )

    return resources.get(key, create, close=_close)


def _entra_token_provider() -> Callable[[], Awaitable[str]]:
    try:
        from azure.identity.aio import DefaultAzureCredential, get_bearer_token_provider
    except ImportError:
        raise ValueError(
            "azure_openai: api_key is empty and azure-identity is not installed; "
            "set api_key, or `pip install azure-identity` to use a Microsoft Entra ID token"
        ) from None
    provider: Callable[[], Awaitable[str]] = get_bearer_token_provider(
        DefaultAzureCredential(), ENTRA_SCOPE
    )
    return provider


def azure_openai_client(params: AzureOpenAIParams, resources: SharedResources) -> AsyncOpenAI:
    """The process's client for this Azure resource and key (created on first use)."""
    key = (
        f"azure-openai-client:{params.endpoint}:{params.api_version}:"
        f"{_key_digest(params.api_key)}:{params.timeout_secs}"
    )

    def create() -> AsyncOpenAI:
        api_key = params.api_key.get_secret_value() or None
        token_provider = None if api_key else _entra_token_provider()
        endpoint = params.endpoint.rstrip("/")
        if endpoint.endswith("/openai/v1"):
            return AsyncOpenAI(
                base_url=endpoint + "/",
                api_key=api_key or token_provider,
                timeout=params.timeout_secs,
                max_retries=params.max_retries,
            )
        return AsyncAzureOpenAI(
            azure_endpoint=endpoint,
            api_key=api_key,
            azure_ad_token_provider=token_provider,
            api_version=params.api_version,
            timeout=params.timeout_secs,
            max_retries=params.max_retries,
        )

    return resources.get(key, create, close=_close)


# --------------------------------------------------------------------------------------------
# Services
# --------------------------------------------------------------------------------------------


class _SharedClient:
    """Makes a pipecat OpenAI-family service use the process's client instead of its own."""

    _shared_client: AsyncOpenAI

    def create_client(
        self,
        api_key: Any = None,
        base_url: Any = None,
        organization: Any = None,
        project: Any = None,
        default_headers: Any = None,
        **kwargs: Any,
    ) -> Any:
        return self._shared_client


class SharedClientOpenAILLMService(_SharedClient, OpenAILLMService):
    """pipecat's ``OpenAILLMService`` on a client shared by every call of the process."""

    def __init__(self, *, client: AsyncOpenAI, **kwargs: Any) -> None:
        self._shared_client = client
        super().__init__(api_key="unused", **kwargs)


class SharedClientAzureLLMService(_SharedClient, AzureLLMService):
    """pipecat's ``AzureLLMService`` on a client shared by every call of the process."""

    def __init__(self, *, client: AsyncOpenAI, endpoint: str, **kwargs: Any) -> None:
        self._shared_client = client
        super().__init__(endpoint=endpoint, api_key="unused", **kwargs)


def _settings(cls: type[OpenAILLMService], model: str, params: _ClientParams) -> Any:
    settings = cls.Settings(model=model)
    if params.temperature is not None:
        settings.temperature = params.temperature
    if params.max_tokens is not None:
        settings.max_tokens = params.max_tokens
    return settings


def openai_service(params: OpenAIParams, context: BuildContext) -> LLMService[Any] | None:
    """The call's LLM service on an OpenAI-compatible server; None if ``base_url`` is empty."""
    if not params.configured():
        return None
    return SharedClientOpenAILLMService(
        client=openai_client(params, context.resources),
        settings=_settings(OpenAILLMService, params.model, params),
    )


def azure_openai_service(
    params: AzureOpenAIParams, context: BuildContext
) -> LLMService[Any] | None:
    """The call's LLM service on Azure OpenAI; None if ``endpoint`` is empty."""
    if not params.configured():
        return None
    return SharedClientAzureLLMService(
        client=azure_openai_client(params, context.resources),
        endpoint=params.endpoint,
        settings=_settings(AzureLLMService, params.deployment, params),
    )


class ApologyOnError(FrameProcessor):
    """Put just before an LLM: when it reports an error, the caller hears ``text``.

    Once per LLM request (a second error of the same request stays silent); the error itself
    goes on upstream. ``on_error`` (if given) is told about each error first.
    """

    def __init__(
        self,
        text: str = DEFAULT_APOLOGY,
        *,
        on_error: Callable[[ErrorFrame], Awaitable[None]] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._text = text
        self._on_error = on_error
        self._apologised = False

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, LLMContextFrame):
            self._apologised = False
        elif (
            isinstance(frame, ErrorFrame)
            and direction == FrameDirection.UPSTREAM
            and isinstance(frame.processor, LLMService)
        ):
            logger.warning(f"{self}: the LLM failed: {frame.error}")
            if self._on_error is not None:
                await self._on_error(frame)
            if not self._apologised and self._text:
                self._apologised = True
                await self.push_frame(TTSSpeakFrame(self._text), FrameDirection.DOWNSTREAM)
        await self.push_frame(frame, direction)


# --------------------------------------------------------------------------------------------
# The plain `llm` processor's providers
# --------------------------------------------------------------------------------------------


class OpenAIProviderParams(ConversationParams, OpenAIParams):
    """An OpenAI-compatible server plus the conversation settings every LLM provider has."""


class AzureOpenAIProviderParams(ConversationParams, AzureOpenAIParams):
    """Azure OpenAI plus the conversation settings every LLM provider has."""


def _with_apology(built: Built, text: str) -> Built:
    """``built`` with an :class:`ApologyOnError` just before its LLM service."""
    processors = list(built.processors)
    index = next(i for i, p in enumerate(processors) if isinstance(p, LLMService))
    processors.insert(index, ApologyOnError(text))
    return Built(processors, tail=built.tail)


@provider("llm", "openai", OpenAIProviderParams)
def openai_llm(params: OpenAIProviderParams, context: BuildContext) -> Built:
    """An OpenAI-compatible chat-completions server (OpenAI, llama.cpp, Ollama, ...)."""
    service = openai_service(params, context)
    if service is None:
        raise ValueError("llm provider openai: base_url is empty; set it to the server's URL")
    return _with_apology(conversation(service, params), params.apology)


@provider("llm", "azure_openai", AzureOpenAIProviderParams)
def azure_openai_llm(params: AzureOpenAIProviderParams, context: BuildContext) -> Built:
    """Azure OpenAI chat completions (key or Microsoft Entra ID)."""
    service = azure_openai_service(params, context)
    if service is None:
        raise ValueError("llm provider azure_openai: endpoint is empty; set it to the resource URL")
    return _with_apology(conversation(service, params), params.apology)


__all__ = [
    "ApologyOnError",
    "AzureOpenAIParams",
    "OpenAIParams",
    "azure_openai_llm",
    "azure_openai_service",
    "kinds",
    "openai_llm",
    "openai_service",
]
