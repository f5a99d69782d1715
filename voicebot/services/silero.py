"""Silero VAD with one ONNX session for the whole process, scoring every call's audio in batches.

pipecat's ``SileroVADAnalyzer`` loads its own model (≈10 MB, ≈30 ms on the event loop), starts
its own thread for every call and hops to it with every 20 ms frame. Here every call shares the
process's ONNX session, and a :class:`SileroBatcher` scores the 32 ms windows of all calls that
fall due within a few ms of each other in one ONNX run, on a thread of the process's pool: one
thread hop per batch instead of one per frame and call, and a third of the time per window
(Silero takes a batch dimension). Each call
keeps only its recurrent state, its audio buffer and its VAD state machine, which runs on the
event loop; the thresholds, smoothing and state machine are pipecat's own.

Callers are silent most of a call, and a phone line's silence is digital: ACS sends zeros (or
frames marked ``silent``). While the caller is quiet, such a frame cannot start speech — its
volume is far below any ``min_volume`` — so the analyzer answers QUIET at once instead of
hopping to the thread pool to score it (see :data:`SILENCE_PEAK`).
"""

from __future__ import annotations

import asyncio
import copy
import os
import weakref
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from loguru import logger
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
BATCHER_KEY = "silero-vad/batcher"


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


def shared_batcher(resources: SharedResources) -> SileroBatcher:
    """The process's :class:`SileroBatcher` (on the shared model and pool).

    ``VOICEBOT_VAD_BATCH_MS`` sets how long a batch gathers windows (default 10 ms; 0: a batch
    takes what is queued when the event loop next runs its callbacks). It trades the VAD's
    reaction time for CPU; measured at 20 bench calls (one run each): 0 ms — VAD thread 15 % of
    a core, overhead p50/p95 9/15 ms; 5 ms — 11 %, 12/19 ms; 12 ms — 7 %, 14/25 ms.
    """
    gather_ms = float(os.environ.get("VOICEBOT_VAD_BATCH_MS", "10"))
    return resources.get(
        BATCHER_KEY,
        lambda: SileroBatcher(
            shared_model(resources), shared_pool(resources), gather_secs=gather_ms / 1000
        ),
    )


@dataclass(slots=True)
class _Window:
    model: SileroOnnxModel
    """The call's copy of the model: its recurrent state and audio context."""
    pcm: bytes
    sample_rate: int
    future: asyncio.Future[float]


class SileroBatcher:
    """Scores the 32 ms windows of many calls in one ONNX run per batch.

    :meth:`score` queues a call's window and waits for its speech probability. A batch starts
    ``gather_secs`` after the first window of it was queued (or at once with ``max_batch``
    waiting) and takes every window queued by then; while it runs (on a thread of
    ``executor``, releasing the GIL), the next one gathers. A window thus waits at most
    ``gather_secs`` plus one run before it is scored — against a VAD's 200 ms stop time — and
    in exchange costs a third of what it costs alone (about 90 µs in batches of 8, 240 µs
    alone, model and bookkeeping together). Each window carries its call's recurrent state and
    context, which the batch reads and writes back, so every call's stream is scored as if alone
    (up to float rounding) — calls must only never have two windows queued at once, which holds
    as each awaits its windows in order.
    One batch runs at a time per event loop; windows at 8 kHz and at 16 kHz go in separate
    batches.
    """

    def __init__(
        self,
        model: SileroOnnxModel,
        executor: ThreadPoolExecutor,
        *,
        max_batch: int = 64,
        gather_secs: float = 0.010,
    ) -> None:
        self.model = model
        """The shared model; calls score with copies of it (see :meth:`call_model`)."""
        self._session = model.session
        self._executor = executor
        self._max_batch = max_batch
        self._gather_secs = gather_secs
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopQueue] = (
            weakref.WeakKeyDictionary()
        )
        self.batches = 0
        """Batches run so far (for tests and benchmarks)."""
        self.windows = 0
        """Windows scored so far."""

    def call_model(self) -> SileroOnnxModel:
        """A call's own model: the shared session, with fresh recurrent state."""
        model = copy.copy(self.model)
        model.reset_states()
        return model

    async def score(self, model: SileroOnnxModel, pcm: bytes, sample_rate: int) -> float:
        """The speech probability of one window (512 samples at 16 kHz, 256 at 8 kHz)."""
        loop = asyncio.get_running_loop()
        queue = self._loops.get(loop)
        if queue is None:
            queue = self._loops[loop] = _LoopQueue()
        window = _Window(model, pcm, sample_rate, loop.create_future())
        queue.waiting.append(window)
        if not queue.running:
            if len(queue.waiting) >= self._max_batch:
                if queue.timer is not None:
                    queue.timer.cancel()
                self._launch(loop, queue)
            elif queue.timer is None:
                queue.timer = loop.call_later(self._gather_secs, self._launch, loop, queue)
        return await window.future

    def _launch(self, loop: asyncio.AbstractEventLoop, queue: _LoopQueue) -> None:
        queue.timer = None
        waiting = [w for w in queue.waiting if not w.future.done()]  # cancelled: call gone
        if not waiting:
            queue.waiting.clear()
            return
        rate = waiting[0].sample_rate
        batch = [w for w in waiting if w.sample_rate == rate][: self._max_batch]
        taken = {id(w) for w in batch}
        queue.waiting = [w for w in waiting if id(w) not in taken]
        queue.running = True
        try:
            job = loop.run_in_executor(self._executor, self._run, batch, rate)
        except RuntimeError as exc:  # the pool was shut down: the process is stopping
            queue.running = False
            self._fail(batch, exc)
            return
        job.add_done_callback(lambda done: self._finished(loop, queue, batch, done))

    def _finished(
        self,
        loop: asyncio.AbstractEventLoop,
        queue: _LoopQueue,
        batch: list[_Window],
        done: asyncio.Future[list[float]],
    ) -> None:
        queue.running = False
        if done.cancelled() or done.exception() is not None:
            self._fail(batch, done.exception() or RuntimeError("VAD batch cancelled"))
        else:
            for window, confidence in zip(batch, done.result(), strict=True):
                if not window.future.done():
                    window.future.set_result(confidence)
        if queue.waiting and queue.timer is None:
            # These gathered while the batch ran: go now.
            self._launch(loop, queue)

    def _fail(self, batch: list[_Window], exc: BaseException) -> None:
        # As pipecat's analyzer does with a failed window: log it and call it silence.
        logger.error(f"Silero VAD batch of {len(batch)} failed: {exc!r}")
        for window in batch:
            if not window.future.done():
                window.future.set_result(0.0)

    def _run(self, batch: list[_Window], rate: int) -> list[float]:
        """One ONNX run for ``batch`` (all at ``rate``); on a pool thread."""
        context_size = 64 if rate == 16000 else 32
        size = len(batch)
        pcm = np.frombuffer(b"".join(w.pcm for w in batch), dtype=np.int16)
        audio = pcm.reshape(size, -1).astype(np.float32) / 32768.0
        contexts = []
        states = []
        for window in batch:
            model = window.model
            if model._last_sr and model._last_sr != rate:
                model.reset_states()
            contexts.append(model._context if model._context.shape[1] else _zeros(context_size))
            states.append(model._state)
        inputs = np.concatenate((np.concatenate(contexts), audio), axis=1)
        out, state = self._session.run(
            None,
            {
                "input": inputs,
                "state": np.concatenate(states, axis=1),
                "sr": np.array(rate, dtype="int64"),
            },
        )
        for i, window in enumerate(batch):
            model = window.model
            model._state = state[:, i : i + 1, :].copy()
            model._context = inputs[i : i + 1, -context_size:].copy()
            model._last_sr = rate
            model._last_batch_size = 1
        self.batches += 1
        self.windows += size
        return [float(c) for c in out[:, 0]]


@dataclass
class _LoopQueue:
    waiting: list[_Window] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None
    running: bool = False


def _zeros(context_size: int) -> np.ndarray:
    return np.zeros((1, context_size), dtype=np.float32)


class SharedSileroVADAnalyzer(SileroVADAnalyzer):
    """A ``SileroVADAnalyzer`` whose windows the process's :class:`SileroBatcher` scores.

    The state machine, volume and smoothing run on the event loop, as pipecat's code; only the
    model runs elsewhere, in batches with the other calls' windows. A frame that completes no
    32 ms window costs no thread hop at all.
    """

    def __init__(
        self,
        batcher: SileroBatcher,
        *,
        sample_rate: int | None = None,
        params: VADParams | None = None,
        skip_silence: bool = True,
    ) -> None:
        VADAnalyzer.__init__(self, sample_rate=sample_rate, params=params)
        self._executor.shutdown(wait=False)  # pipecat's per-analyzer thread: not used
        self._batcher = batcher
        self._model = batcher.call_model()  # shares .session; state arrays are per call
        self._windows_since_reset = 0
        self._low_confidence_windows = 0
        self._scores: deque[float] = deque()
        self.skip_silence = skip_silence
        """Answer silence while quiet without scoring it (see :meth:`analyze_audio`)."""
        self.silent_frames_skipped = 0
        """Frames answered QUIET without scoring (for tests and benchmarks)."""
        self._skipping = False

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
        size = self._vad_frames_num_bytes
        due = (len(self._vad_buffer) + len(buffer)) // size
        if due:
            # Score the windows this frame completes first (the batcher), then run pipecat's
            # state machine over them, which takes their scores from voice_confidence().
            pcm = self._vad_buffer + buffer
            for i in range(due):
                window = pcm[i * size : (i + 1) * size]
                self._scores.append(
                    await self._batcher.score(self._model, window, self.sample_rate)
                )
        return self._run_analyzer(buffer)

    def voice_confidence(self, buffer: bytes) -> float:
        """The score :meth:`analyze_audio` got for this window from the batcher."""
        confidence = self._scores.popleft()
        self._maybe_reset_model(confidence)
        return confidence

    async def cleanup(self) -> None:
        """Nothing to release: the model and the batcher belong to the process."""


def is_silence(pcm: bytes) -> bool:
    """Whether every 16-bit sample of ``pcm`` lies within ±:data:`SILENCE_PEAK`."""
    if pcm.count(0) == len(pcm):  # digital zeros, the common case: no numpy needed
        return True
    samples = np.frombuffer(pcm, dtype=np.int16, count=len(pcm) // 2)
    return int(samples.min()) >= -SILENCE_PEAK and int(samples.max()) <= SILENCE_PEAK


def _warm(params: SileroParams, resources: SharedResources) -> None:
    shared_batcher(resources)


@provider("vad", "silero", SileroParams, warm=_warm, input_rates=(8000, 16000))
def silero_vad(params: SileroParams, context: BuildContext) -> Any:
    """Silero VAD (bundled with pipecat), one model shared by all calls."""
    analyzer = SharedSileroVADAnalyzer(
        shared_batcher(context.resources), params=VADParams(**params.model_dump())
    )
    return VADProcessor(vad_analyzer=analyzer)


__all__ = ["SharedSileroVADAnalyzer", "SileroBatcher", "SileroParams", "kinds", "silero_vad"]
