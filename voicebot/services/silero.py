"""Silero VAD with one ONNX session and one small thread pool for the whole process.

pipecat's ``SileroVADAnalyzer`` loads its own model (≈10 MB, ≈30 ms on the event loop) and starts
its own thread for every call. Here every call shares the process's ONNX session (onnxruntime
sessions are safe to run from several threads) and a pool of ``VOICEBOT_VAD_THREADS`` threads;
each call keeps only its recurrent state and audio buffer.
"""

from __future__ import annotations

import copy
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pipecat.audio.vad.silero import SileroOnnxModel, SileroVADAnalyzer
from pipecat.audio.vad.vad_analyzer import VADAnalyzer, VADParams
from pipecat.processors.audio.vad_processor import VADProcessor
from pydantic import BaseModel, ConfigDict, Field

from voicebot.build.context import BuildContext
from voicebot.build.registry import provider
from voicebot.services import kinds
from voicebot.services.resources import SharedResources

MODEL_KEY = "silero-vad/onnx"
POOL_KEY = "silero-vad/threads"


class SileroParams(BaseModel):
    """Thresholds of the VAD; times in seconds, as pipecat's ``VADParams``."""

    model_config = ConfigDict(extra="forbid")

    confidence: float = Field(default=0.7, ge=0, le=1)
    """Minimum speech probability for a 32 ms window to count as speech."""
    start_secs: float = Field(default=0.2, ge=0)
    """Speech must last this long before the caller counts as speaking."""
    stop_secs: float = Field(default=0.2, ge=0)
    """Silence must last this long before the caller counts as stopped."""
    min_volume: float = Field(default=0.6, ge=0, le=1)
    """Minimum smoothed volume for speech."""


def shared_model(resources: SharedResources) -> SileroOnnxModel:
    """The process's Silero ONNX model (loaded on first use)."""

    def load() -> SileroOnnxModel:
        probe = SileroVADAnalyzer()  # locates and loads the model bundled with pipecat
        model: SileroOnnxModel = probe._model
        probe._executor.shutdown(wait=False)
        return model

    return resources.get(MODEL_KEY, load)


def shared_pool(resources: SharedResources) -> ThreadPoolExecutor:
    """Threads that run VAD inference for every call of the process."""
    threads = int(os.environ.get("VOICEBOT_VAD_THREADS", "2"))
    return resources.get(
        POOL_KEY,
        lambda: ThreadPoolExecutor(max_workers=threads, thread_name_prefix="vad"),
        close=lambda pool: pool.shutdown(wait=False, cancel_futures=True),
    )


class SharedSileroVADAnalyzer(SileroVADAnalyzer):
    """A ``SileroVADAnalyzer`` that borrows the shared session and thread pool.

    Each call's analyzer runs its windows one at a time (pipecat awaits each before the next), so
    a shared pool keeps every stream in order while bounding the threads of the process.
    """

    def __init__(
        self,
        model: SileroOnnxModel,
        executor: ThreadPoolExecutor,
        *,
        sample_rate: int | None = None,
        params: VADParams | None = None,
    ) -> None:
        VADAnalyzer.__init__(self, sample_rate=sample_rate, params=params)
        self._executor.shutdown(wait=False)
        self._executor = executor
        self._model = copy.copy(model)  # shares .session; state arrays are per call
        self._model.reset_states()
        self._windows_since_reset = 0
        self._low_confidence_windows = 0

    async def cleanup(self) -> None:
        """Leave the shared pool running (the base class would shut it down)."""


def _warm(params: SileroParams, resources: SharedResources) -> None:
    shared_model(resources)
    shared_pool(resources)


@provider("vad", "silero", SileroParams, warm=_warm)
def silero_vad(params: SileroParams, context: BuildContext) -> Any:
    """Silero VAD (bundled with pipecat), one model shared by all calls."""
    analyzer = SharedSileroVADAnalyzer(
        shared_model(context.resources),
        shared_pool(context.resources),
        params=VADParams(**params.model_dump()),
    )
    return VADProcessor(vad_analyzer=analyzer)


__all__ = ["SharedSileroVADAnalyzer", "SileroParams", "kinds", "silero_vad"]
