"""Silero VAD with one ONNX session and one small thread pool for the whole process.

pipecat's ``SileroVADAnalyzer`` loads its own model (≈10 MB, ≈30 ms on the event loop) and starts
its own thread for every call. Here every call shares the process's ONNX session (onnxruntime
sessions are safe to run from several threads) and a pool of ``VOICEBOT_VAD_THREADS`` threads;
each call keeps only its recurrent state and audio buffer.

Callers are silent most of a call, and a phone line's silence is digital: ACS sends zeros (or
frames marked ``silent``). While the caller is quiet, such a frame cannot start speech — its
volume is far below any ``min_volume`` — so the analyzer answers QUIET at once instead of
hopping to the thread pool to score it (see :data:`SILENCE_PEAK`).
"""

from __future__ import annotations

import copy
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from pipecat.audio.vad.silero import SileroOnnxModel, SileroVADAnalyzer
from pipecat.audio.vad.vad_analyzer import VADAnalyzer, VADParams, VADState
from pipecat.processors.audio.vad_processor import VADProcessor
from pydantic import BaseModel, ConfigDict, Field

from voicebot.build.context import BuildContext
from voicebot.build.registry import provider
from voicebot.services import kinds
from voicebot.services.resources import SharedResources

MODEL_KEY = "silero-vad/onnx"
#: A frame whose samples all stay within ±SILENCE_PEAK (about -66 dBFS) is silence: while the
#: caller is quiet it is answered without running the model.
SILENCE_PEAK = 16
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
        skip_silence: bool = True,
    ) -> None:
        VADAnalyzer.__init__(self, sample_rate=sample_rate, params=params)
        self._executor.shutdown(wait=False)
        self._executor = executor
        self._model = copy.copy(model)  # shares .session; state arrays are per call
        self._model.reset_states()
        self._windows_since_reset = 0
        self._low_confidence_windows = 0
        self.skip_silence = skip_silence
        """Answer silence while quiet without scoring it (see :meth:`analyze_audio`)."""
        self.silent_frames_skipped = 0
        self._skipping = False
        """Frames answered QUIET without scoring (for tests and benchmarks)."""

    async def analyze_audio(self, buffer: bytes) -> VADState:
        """The VAD state after ``buffer``; silence while quiet is answered without the model.

        A skipped frame still enters the rolling volume window (a cheap append: loudness is
        measured only when read), and the smoothed volume decays as scoring silence would
        decay it; the partial window buffered before it (under 32 ms of near-silence) is
        dropped. Speech onset is scored from the first frame that is not silence.
        """
        if self.skip_silence and self._vad_state == VADState.QUIET and is_silence(buffer):
            if not self._skipping:
                # Silence left unscored would leave the model's recurrent state where the
                # last words left it, and the next utterance would be heard differently (its
                # end found up to 60 ms later). Start the next one from a fresh state instead,
                # as pipecat's own periodic reset in quiet stretches does.
                self._model.reset_states()
                self._windows_since_reset = 0
                self._low_confidence_windows = 0
                self._skipping = True
            self._vad_buffer = b""
            self._volume_tracker.update(buffer, self.sample_rate)
            windows = len(buffer) / self._vad_frames_num_bytes
            self._prev_volume *= (1.0 - self._smoothing_factor) ** windows
            self.silent_frames_skipped += 1
            return VADState.QUIET
        self._skipping = False
        return await super().analyze_audio(buffer)

    async def cleanup(self) -> None:
        """Leave the shared pool running (the base class would shut it down)."""


def is_silence(pcm: bytes) -> bool:
    """Whether every 16-bit sample of ``pcm`` lies within ±:data:`SILENCE_PEAK`."""
    if pcm.count(0) == len(pcm):  # digital zeros, the common case: no numpy needed
        return True
    samples = np.frombuffer(pcm, dtype=np.int16, count=len(pcm) // 2)
    return int(samples.min()) >= -SILENCE_PEAK and int(samples.max()) <= SILENCE_PEAK


def _warm(params: SileroParams, resources: SharedResources) -> None:
    shared_model(resources)
    shared_pool(resources)


@provider("vad", "silero", SileroParams, warm=_warm, input_rates=(8000, 16000))
def silero_vad(params: SileroParams, context: BuildContext) -> Any:
    """Silero VAD (bundled with pipecat), one model shared by all calls."""
    analyzer = SharedSileroVADAnalyzer(
        shared_model(context.resources),
        shared_pool(context.resources),
        params=VADParams(**params.model_dump()),
    )
    return VADProcessor(vad_analyzer=analyzer)


__all__ = ["SharedSileroVADAnalyzer", "SileroParams", "kinds", "silero_vad"]
