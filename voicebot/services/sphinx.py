"""``provider: sphinx`` — light offline speech-to-text with pocketsphinx, streaming partials.

::

    - vad: {provider: silero, stop_secs: 0.2}
    - stt: {provider: sphinx}          # CMU pocketsphinx, US English model shipped in its wheel

The fallback when Whisper (``provider: local``) is too heavy: ≈40 MB installed instead of
≈520 MB, interim transcripts while the caller speaks, and a final one a few tens of
milliseconds after the VAD's end of speech. It is less accurate (numbers and names suffer) and
poor on 8 kHz audio. pocketsphinx is part of the ``local`` extra and imported only when a
decoder is first created, so ``voicebot validate`` checks these params without it.

Decoding follows the VAD. While the caller is quiet nothing is decoded; the last
``preroll_ms`` of audio are kept, because the VAD reports the start of speech only after
``start_secs`` of it. At ``VADUserStartedSpeakingFrame`` the call borrows a decoder, and the
pre-roll plus every frame after it is fed in batches of ``batch_ms`` on a thread pool shared by
all calls; after each batch a changed partial hypothesis is pushed as an
``InterimTranscriptionFrame``. At ``VADUserStoppedSpeakingFrame`` the utterance ends, the
decoder's final hypothesis is pushed as a ``TranscriptionFrame`` (``finalized=True``) and the
decoder goes back to the process's pool for the next utterance of any call.

Decoders are lent per utterance, not per call, because one is not cheap: each loads its own
acoustic model and 134 000-word dictionary and builds its own search tables (≈0.35 s on a 2-core
machine); pocketsphinx's Python API cannot share those between decoders. The language model it
can share, so every decoder of the process uses one (≈30 MB). Measured while decoding: the first
decoder ≈97 MB of RSS, each further one ≈63 MB. Memory therefore grows with the number of
callers speaking at the same moment, not with the number of calls; idle decoders are kept for
reuse. Each call keeps its own cepstral mean (the decoder's running estimate of the line's
loudness and colour) and restores it on every decoder it borrows, so callers never adapt to
each other's lines.

pocketsphinx holds the GIL while it decodes. Audio is therefore fed in 20 ms slices (≈2–5 ms of
CPU each) so the event loop gets the GIL back between them, and the process decodes on at most
one core however many threads the pool has (RTF ≈0.1: about ten callers speaking at once per
process). Ending an utterance takes ≈5 ms. The optional second pass (``second_pass: true``,
pocketsphinx's flat-lexicon rescoring) fixes some words (on the bank WAVs, "like how members"
became "my account numbers") but holds the GIL for 35–90 ms of CPU per 1.5–4 s utterance, a
stall every other call of the process feels (20 ms audio frames are due meanwhile).

Sizes are set per process with an environment variable (a whole number, read when the pool is
first created):

* ``VOICEBOT_SPHINX_WORKERS`` (1): threads decoding for all calls; batches queue in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import threading
from collections import deque
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any

import numpy as np
import soxr
from loguru import logger
from pipecat.frames.frames import (
    EndFrame,
    Frame,
    InterimTranscriptionFrame,
    StartFrame,
    TranscriptionFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.settings import STTSettings
from pipecat.services.stt_service import STTService
from pipecat.transcriptions.language import Language
from pipecat.utils.time import time_now_iso8601
from pydantic import BaseModel, ConfigDict, Field, field_validator

from voicebot.build.context import BuildContext
from voicebot.build.registry import provider
from voicebot.services import kinds
from voicebot.services.local import _executor, _require
from voicebot.services.resources import SharedResources

if TYPE_CHECKING:
    from pocketsphinx import Decoder

__all__ = [
    "SPHINX_RATE",
    "DecoderPool",
    "SphinxSTTParams",
    "SphinxSTTService",
    "decoder_pool",
    "kinds",
    "sphinx_executor",
    "sphinx_stt",
]

#: The packaged en-us acoustic model hears 16 kHz mono; other input rates are resampled.
SPHINX_RATE = 16000
#: Seconds from the VAD's end of speech to the final transcript, p99, for pipecat's turn
#: strategy: the batches still queued at the VAD's stop plus ending the utterance, measured
#: at 0.1–0.25 s on a busy 2-core machine.
SPHINX_TTFS_P99 = 0.5
#: Audio handed to the decoder per call into it: small enough to give the GIL back often.
SLICE_MS = 20

DECODERS_KEY = "sphinx-stt/decoders/{second_pass}"
#: Name of the shared n-gram search in every decoder.
LM_NAME = "en-us"
POOL_KEY = "sphinx-stt/threads"


# --------------------------------------------------------------------------------------------
# Params
# --------------------------------------------------------------------------------------------


class SphinxSTTParams(BaseModel):
    """pocketsphinx on the CPU: interim transcripts while the caller speaks, a final at the end."""

    model_config = ConfigDict(extra="forbid")

    language: str = "en-US"
    """The caller's language; the packaged model knows US English only."""
    batch_ms: int = Field(default=100, ge=20, le=1000)
    """Milliseconds of speech collected before they are handed to the decoder; interim
    transcripts can change at most this often."""
    preroll_ms: int = Field(default=500, ge=0, le=2000)
    """Audio before the VAD's start of speech decoded with the utterance: at least the VAD's
    ``start_secs``, or the first word is cut."""
    interim: bool = True
    """Push ``InterimTranscriptionFrame``s while the caller speaks."""
    second_pass: bool = False
    """Rescore the whole utterance when it ends (pocketsphinx's flat-lexicon pass): some words
    better, but 35–90 ms of CPU more per utterance, during which the process's event loop
    stalls (pocketsphinx holds the GIL)."""

    @field_validator("language")
    @classmethod
    def _english_only(cls, value: str) -> str:
        if value.replace("_", "-").split("-")[0].lower() != "en":
            raise ValueError(
                "the packaged pocketsphinx model transcribes US English only: use 'en' or 'en-US'"
            )
        return value


# --------------------------------------------------------------------------------------------
# Shared resources
# --------------------------------------------------------------------------------------------


def _require_pocketsphinx() -> None:
    _require("pocketsphinx")


def sphinx_executor(resources: SharedResources) -> Executor:
    """Threads that decode for every call of the process (``VOICEBOT_SPHINX_WORKERS``)."""
    return _executor(resources, POOL_KEY, "VOICEBOT_SPHINX_WORKERS", "sphinx-stt")


class DecoderPool:
    """The process's idle pocketsphinx decoders, lent out one per utterance.

    :meth:`borrow` returns an idle decoder or creates one (it blocks, so call it in a worker
    thread); :meth:`give_back` makes it idle again. Decoders are never dropped: the pool grows
    to the most utterances ever decoded at once.

    All decoders share one language model (the packaged ``en-us.lm.bin``, ≈30 MB loaded with
    the first decoder); each still loads its own acoustic model and dictionary and builds its
    own search tables (≈63 MB while decoding, ≈0.35 s). Calls into any decoder are made under
    :attr:`lock`, so the shared model is never used by two threads at once (pocketsphinx holds
    the GIL while it decodes, so this costs no parallelism).
    """

    def __init__(self, *, second_pass: bool = False) -> None:
        """Prepare the pool; no decoder is created until :meth:`borrow` (or :meth:`fill`)."""
        self._options: dict[str, Any] = {"loglevel": "FATAL", "fwdflat": second_pass, "lm": None}
        self._idle: list[Decoder] = []
        self._lock = threading.Lock()
        self._lm: Any = None
        self.lock = threading.Lock()
        """Held around every call into a decoder of this pool."""
        self.created = 0
        """Decoders created so far."""
        self.initial_cmn = ""
        """The cepstral mean a new decoder starts from (a caller's first utterance uses it)."""

    def _create(self) -> Decoder:
        _require_pocketsphinx()
        from pocketsphinx import Config, Decoder, NGramModel

        decoder = Decoder(**self._options)
        with self.lock:
            if self._lm is None:
                path = Config()["lm"]
                self._lm = NGramModel(decoder.config, decoder.logmath, path)
            decoder.add_lm(LM_NAME, self._lm)
            decoder.activate_search(LM_NAME)
        with self._lock:
            self.created += 1
            if not self.initial_cmn:
                self.initial_cmn = decoder.get_cmn(False)
        logger.debug(f"pocketsphinx decoder {self.created} created")
        return decoder

    def borrow(self) -> Decoder:
        """An idle decoder, or a new one when all are lent out (blocks)."""
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return self._create()

    def give_back(self, decoder: Decoder) -> None:
        """Make ``decoder`` (no utterance in progress) available to the next borrower."""
        with self._lock:
            self._idle.append(decoder)

    def fill(self, count: int = 1) -> None:
        """Create decoders until ``count`` are idle (blocks): warm-up before the first call."""
        while True:
            with self._lock:
                if len(self._idle) >= count:
                    return
            self.give_back(self._create())

    @property
    def idle(self) -> int:
        """Decoders waiting to be borrowed."""
        return len(self._idle)


def decoder_pool(resources: SharedResources, *, second_pass: bool = False) -> DecoderPool:
    """The process's decoders with (or without) the second pass; cheap, creates no decoder."""
    return resources.get(
        DECODERS_KEY.format(second_pass=second_pass),
        lambda: DecoderPool(second_pass=second_pass),
    )


# --------------------------------------------------------------------------------------------
# One utterance (its methods run in the pool, one at a time)
# --------------------------------------------------------------------------------------------


class _Utterance:
    """A borrowed decoder decoding one utterance of one call.

    Audio is 16-bit mono at ``rate`` Hz, resampled to 16 kHz with a streaming soxr resampler.
    A lock keeps :meth:`feed` and :meth:`finish` from overlapping when the pool has several
    threads (and lets an abandoned utterance finish after a feed still in flight).
    """

    def __init__(self, pool: DecoderPool, rate: int) -> None:
        self._pool = pool
        self._rate = rate
        self._decoder: Decoder | None = None
        self._resampler: soxr.ResampleStream | None = None
        self._lock = threading.Lock()
        self._slice = SPHINX_RATE * SLICE_MS // 1000 * 2
        self._finished = False

    def open(self, cmn: str) -> None:
        """Borrow a decoder (blocks if one must be created) and start the utterance on it,
        from the call's cepstral mean ``cmn`` ("" for a new decoder's)."""
        with self._lock:
            if self._finished:
                return
            decoder = self._pool.borrow()
            with self._pool.lock:
                decoder.set_cmn(cmn or self._pool.initial_cmn)
                decoder.start_utt()
            self._decoder = decoder
            if self._rate != SPHINX_RATE:
                self._resampler = soxr.ResampleStream(self._rate, SPHINX_RATE, 1, "int16")

    def _decode(self, decoder: Decoder, pcm: bytes, *, last: bool = False) -> None:
        if self._resampler is not None:
            samples = np.frombuffer(pcm, dtype="<i2")
            pcm = self._resampler.resample_chunk(samples, last=last).astype("<i2").tobytes()
        for offset in range(0, len(pcm), self._slice):
            with self._pool.lock:
                decoder.process_raw(pcm[offset : offset + self._slice], False, False)

    def feed(self, pcm: bytes) -> str:
        """Decode ``pcm``; returns the partial hypothesis so far ("" for none yet)."""
        with self._lock:
            if self._decoder is None:
                return ""
            self._decode(self._decoder, pcm)
            with self._pool.lock:
                hyp = self._decoder.hyp()
            return hyp.hypstr if hyp is not None else ""

    def finish(self) -> tuple[str, str]:
        """End the utterance and return the decoder: (final text, the call's cepstral mean)."""
        with self._lock:
            decoder, self._decoder = self._decoder, None
            self._finished = True
            if decoder is None:
                return "", ""
            try:
                if self._resampler is not None:
                    self._decode(decoder, b"", last=True)
                with self._pool.lock:
                    decoder.end_utt()
                    hyp = decoder.hyp()
                    return (hyp.hypstr if hyp is not None else ""), decoder.get_cmn(False)
            finally:
                self._pool.give_back(decoder)


# --------------------------------------------------------------------------------------------
# Service
# --------------------------------------------------------------------------------------------


class _Mark(enum.Enum):
    """What the call's decoding task is told besides audio."""

    START = "start"
    END = "end"
    CLOSE = "close"


#: Seconds a graceful end waits for the last utterance to be decoded.
CLOSE_TIMEOUT_SECS = 2.0


class SphinxSTTService(STTService):
    """pocketsphinx following the VAD: interim transcripts while the caller speaks, a final one
    (``finalized=True``) at ``VADUserStoppedSpeakingFrame``; see the module docstring.

    Input is 16-bit mono at the pipeline's input rate (any rate; not 16 kHz is resampled). Audio
    passes on downstream unchanged. An utterance that yields no words gives no final frame.
    """

    caller_audio_lane = True
    """Caller audio is handled as by ``STTService`` (see :mod:`voicebot.build.lane`)."""

    def __init__(
        self,
        *,
        params: SphinxSTTParams,
        pool: DecoderPool,
        executor: Executor,
        **kwargs: Any,
    ) -> None:
        """Build the service; decoders are borrowed from ``pool`` in ``executor`` as needed.

        Args:
            params: Batching, pre-roll and decoding options.
            pool: The process's decoders.
            executor: Threads shared by every call's decoding.
            **kwargs: Forwarded to ``STTService`` (e.g. ``sample_rate``).
        """
        kwargs.setdefault("ttfs_p99_latency", SPHINX_TTFS_P99)
        kwargs.setdefault("stt_ttfb_timeout", 2 * SPHINX_TTFS_P99)
        super().__init__(
            settings=STTSettings(model="pocketsphinx-en-us", language=params.language),
            **kwargs,
        )
        self._params = params
        self._pool = pool
        self._executor = executor
        try:
            self._language: Language | None = Language(params.language)
        except ValueError:
            self._language = None
        self._speaking = False
        self._preroll: deque[bytes] = deque()
        self._preroll_bytes = 0
        self._pending = bytearray()
        self._batch_bytes = 0
        self._preroll_limit = 0
        self._items: deque[bytes | _Mark] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._cmn = ""

    def can_generate_metrics(self) -> bool:
        """Report TTFB (end of speech to final transcript)."""
        return True

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self, frame: StartFrame) -> None:
        """Start, and the call's decoding task."""
        await super().start(frame)
        self._batch_bytes = self.sample_rate * self._params.batch_ms // 1000 * 2
        self._preroll_limit = self.sample_rate * self._params.preroll_ms // 1000 * 2
        if self._task is None:
            self._task = self.create_task(self._decode_utterances(), name="sphinx-decode")

    async def stop(self, frame: EndFrame) -> None:
        """Let an utterance that already ended be decoded (bounded), then stop."""
        if self._task is not None:
            self._post(_Mark.CLOSE)
            try:
                await asyncio.wait_for(asyncio.shield(self._task), CLOSE_TIMEOUT_SECS)
            except TimeoutError:
                logger.warning(f"{self}: decoding did not finish in {CLOSE_TIMEOUT_SECS} s")
            await self._stop_task()
        await super().stop(frame)

    async def cleanup(self) -> None:
        """Stop the decoding task (cancelled calls); a borrowed decoder goes back to the pool."""
        await self._stop_task()
        await super().cleanup()

    async def _stop_task(self) -> None:
        if self._task is not None:
            task, self._task = self._task, None
            await self.cancel_task(task)

    # -- per frame (the event loop: cheap) -------------------------------------------------------

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Follow the VAD: an utterance runs from its start to its stop frame."""
        if isinstance(frame, VADUserStartedSpeakingFrame) and not self._speaking:
            self._speaking = True
            self._post(_Mark.START)
            if self._preroll:
                self._post(b"".join(self._preroll))
            self._preroll.clear()
            self._preroll_bytes = 0
        elif isinstance(frame, VADUserStoppedSpeakingFrame) and self._speaking:
            self._speaking = False
            self._flush()
            self._post(_Mark.END)
        await super().process_frame(frame, direction)

    async def run_stt(self, audio: bytes) -> AsyncGenerator[Frame | None, None]:
        """Queue one input frame: batched while the caller speaks, kept as pre-roll otherwise.

        Nothing is decoded here; transcripts are pushed by the call's decoding task.
        """
        if self._speaking:
            self._pending += audio
            if len(self._pending) >= self._batch_bytes:
                self._flush()
        else:
            self._preroll.append(audio)
            self._preroll_bytes += len(audio)
            while (
                self._preroll and self._preroll_bytes - len(self._preroll[0]) >= self._preroll_limit
            ):
                self._preroll_bytes -= len(self._preroll.popleft())
        yield None

    def _flush(self) -> None:
        if self._pending:
            self._post(bytes(self._pending))
            self._pending.clear()

    def _post(self, item: bytes | _Mark) -> None:
        self._items.append(item)
        self._wake.set()

    # -- the call's decoding task --------------------------------------------------------------

    async def _next_item(self) -> bytes | _Mark:
        while not self._items:
            self._wake.clear()
            await self._wake.wait()
        return self._items.popleft()

    async def _in_pool(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _decode_utterances(self) -> None:
        """Decode each utterance in order; batches queued meanwhile are decoded together."""
        utterance: _Utterance | None = None
        last_partial = ""
        try:
            while (item := await self._next_item()) is not _Mark.CLOSE:
                if item is _Mark.START:
                    utterance = _Utterance(self._pool, self.sample_rate)
                    last_partial = ""
                    await self._in_pool(utterance.open, self._cmn)
                elif item is _Mark.END:
                    if utterance is not None:
                        text, cmn = await self._in_pool(utterance.finish)
                        utterance = None
                        self._cmn = cmn or self._cmn
                        await self._push_final(text)
                elif utterance is not None and isinstance(item, bytes):
                    chunks = [item]
                    while self._items and isinstance(head := self._items[0], bytes):
                        chunks.append(head)
                        self._items.popleft()
                    partial = await self._in_pool(utterance.feed, b"".join(chunks))
                    if partial and partial != last_partial and self._params.interim:
                        last_partial = partial
                        await self.push_frame(
                            InterimTranscriptionFrame(
                                text=partial,
                                user_id=self._user_id,
                                timestamp=time_now_iso8601(),
                                language=self._language,
                            )
                        )
        except Exception as exc:
            await self.push_error(f"{self}: pocketsphinx decoding failed: {exc}", exception=exc)
        finally:
            if utterance is not None:
                # Work for it may still run in the pool: finish there, after that, so the
                # decoder goes back to the pool.
                # A pool already shut down (the process is ending) refuses it.
                with contextlib.suppress(RuntimeError):
                    self._executor.submit(utterance.finish)

    async def _push_final(self, text: str) -> None:
        if not text:
            return
        logger.debug(f"{self}: transcribed [{text}]")
        await self.push_frame(
            TranscriptionFrame(
                text=text,
                user_id=self._user_id,
                timestamp=time_now_iso8601(),
                language=self._language,
                finalized=True,
            )
        )


# --------------------------------------------------------------------------------------------
# Provider
# --------------------------------------------------------------------------------------------


def _warm(params: SphinxSTTParams, resources: SharedResources) -> None:
    _require_pocketsphinx()
    decoder_pool(resources, second_pass=params.second_pass).fill(1)


@provider("stt", "sphinx", SphinxSTTParams, warm=_warm)
def sphinx_stt(params: SphinxSTTParams, context: BuildContext) -> SphinxSTTService:
    """pocketsphinx (US English, packaged model) on the CPU, streaming partials; needs a vad."""
    _require_pocketsphinx()
    resources = context.resources
    return SphinxSTTService(
        params=params,
        pool=decoder_pool(resources, second_pass=params.second_pass),
        executor=sphinx_executor(resources),
    )
