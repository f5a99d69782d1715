"""One object owns one call: builds its pipeline, runs it, and always cleans up.

When a call ends for any reason (the pipeline ends, the caller hangs up and the transport cancels,
an error, an outside cancel, the idle or duration limit), :meth:`CallRunner.run` returns only once
the call's tasks are finished, at most ``end_timeout_secs`` (2 s) after the end was asked for, and
the call is no longer listed in :class:`ActiveCalls`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Iterator, Sequence
from enum import StrEnum

from loguru import logger
from pipecat.frames.frames import CancelFrame, EndFrame, ErrorFrame, Frame
from pipecat.observers.base_observer import BaseObserver
from pipecat.pipeline.worker import PipelineWorker
from pipecat.processors.frame_processor import FrameProcessor
from pipecat.utils.asyncio.task_manager import TaskManager
from pipecat.workers.runner import WorkerRunner

from voicebot.build.builder import build_pipeline, build_worker
from voicebot.build.context import BuildContext
from voicebot.build.loader import PipelineSpec
from voicebot.services.resources import SharedResources

#: Upper bound, in seconds, between asking a call to stop and all of its tasks being done.
END_TIMEOUT_SECS = 2.0


class CallOutcome(StrEnum):
    """Why a call ended."""

    COMPLETED = "completed"
    """The pipeline ended normally (an EndFrame: goodbye, hang-up by the bot)."""
    CANCELLED = "cancelled"
    """Stopped from outside: the caller hung up, the socket closed, the server shut down."""
    IDLE = "idle"
    """Nobody spoke for the pipeline's ``idle_timeout_secs``."""
    MAX_DURATION = "max_duration"
    """The call reached the pipeline's ``max_duration_secs``."""
    ERROR = "error"
    """The pipeline failed (a fatal error frame or an exception while building or running)."""


class ActiveCalls:
    """The calls this process is running now, by call id."""

    def __init__(self) -> None:
        self._calls: dict[str, CallRunner] = {}

    def __len__(self) -> int:
        return len(self._calls)

    def __contains__(self, call_id: object) -> bool:
        return call_id in self._calls

    def __iter__(self) -> Iterator[CallRunner]:
        return iter(list(self._calls.values()))

    def get(self, call_id: str) -> CallRunner | None:
        return self._calls.get(call_id)

    def _add(self, call: CallRunner) -> None:
        if call.call_id in self._calls:
            raise ValueError(f"call {call.call_id!r} is already running in this process")
        self._calls[call.call_id] = call

    def _remove(self, call: CallRunner) -> None:
        if self._calls.get(call.call_id) is call:
            del self._calls[call.call_id]


class CallRunner:
    """Runs one call's pipeline from start to a guaranteed, bounded end.

    ``input``/``output`` are the call's transport processors (a test passes a source and a sink).
    Observers see every frame; use them for transcripts, latency and tests.
    """

    def __init__(
        self,
        spec: PipelineSpec,
        *,
        call_id: str | None = None,
        resources: SharedResources | None = None,
        input: FrameProcessor | None = None,
        output: FrameProcessor | None = None,
        active: ActiveCalls | None = None,
        observers: Sequence[BaseObserver] = (),
        end_timeout_secs: float = END_TIMEOUT_SECS,
    ) -> None:
        self.spec = spec
        self.call_id = call_id or uuid.uuid4().hex
        self._owns_resources = resources is None
        self._resources = resources or SharedResources()
        self._input = input
        self._output = output
        self._active = active if active is not None else ActiveCalls()
        self._observers = list(observers)
        self._end_timeout = end_timeout_secs
        self._worker: PipelineWorker | None = None
        self._task: asyncio.Task[None] | None = None
        self._tasks: TaskManager | None = None
        self._started = asyncio.Event()
        self._outcome: CallOutcome | None = None
        self.error: str | None = None
        self.started_at: float | None = None
        """``time.time()`` when the pipeline started, or None before."""
        self.ended_at: float | None = None

    @property
    def worker(self) -> PipelineWorker:
        """The call's pipecat worker (exists once :meth:`run` has started)."""
        if self._worker is None:
            raise RuntimeError("the call has not started")
        return self._worker

    @property
    def outcome(self) -> CallOutcome | None:
        return self._outcome

    async def wait_started(self, timeout: float = 5.0) -> None:
        """Wait until the pipeline has started (StartFrame reached its end)."""
        await asyncio.wait_for(self._started.wait(), timeout)

    async def queue_frame(self, frame: Frame) -> None:
        """Push a frame into the pipeline's start, as the transport input would."""
        await self.worker.queue_frame(frame)

    async def run(self) -> CallOutcome:
        """Run the call to its end; returns why it ended. Never leaves tasks behind."""
        try:
            self._active._add(self)
            self._worker = self._build()
            self._tasks = TaskManager(loop=asyncio.get_running_loop())
            runner = WorkerRunner(
                handle_sigint=False,
                handle_sigterm=False,
                check_dangling_tasks=False,
                task_manager=self._tasks,
            )
            await runner.add_workers(self._worker)
            self._task = asyncio.create_task(runner.run(), name=f"call-{self.call_id}")
            max_duration = self.spec.call.max_duration_secs
            try:
                await asyncio.wait_for(asyncio.shield(self._task), max_duration)
            except TimeoutError:
                self._set_outcome(CallOutcome.MAX_DURATION)
                logger.info(f"call {self.call_id}: reached max duration of {max_duration} s")
                await self._stop(graceful=False)
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is None or not current.cancelling():
                    # The pipeline's own task was cancelled (by _stop): the call is over.
                    self._set_outcome(CallOutcome.CANCELLED)
                else:
                    self._set_outcome(CallOutcome.CANCELLED)
                    await self._stop(graceful=False)
                    raise
        except Exception as exc:
            self._set_outcome(CallOutcome.ERROR)
            self.error = f"{type(exc).__name__}: {exc}"
            logger.exception(f"call {self.call_id} failed: {self.error}")
            await self._stop(graceful=False)
        finally:
            self._active._remove(self)
            self.ended_at = time.time()
            if self._owns_resources:  # a call on its own (tests, tools): nobody else shares them
                await self._resources.aclose()
        outcome = self._outcome or CallOutcome.COMPLETED
        logger.info(f"call {self.call_id} ended: {outcome.value}")
        return outcome

    async def end(self, reason: str = "call ended") -> None:
        """End the call gracefully: queued speech finishes, then the pipeline stops.

        Bounded like :meth:`cancel`: past ``end_timeout_secs`` the call is cancelled.
        """
        await self._stop(graceful=True, reason=reason)

    async def hang_up(self, reason: str = "caller hung up") -> None:
        """The far end is gone (socket closed): cancel the pipeline without waiting for it.

        Safe to call from inside the pipeline (a transport's disconnect handler); :meth:`run`
        returns once the pipeline has stopped, still within ``end_timeout_secs``.
        """
        self._set_outcome(CallOutcome.CANCELLED)
        if self._worker is not None and not self._worker.has_finished():
            logger.info(f"call {self.call_id}: {reason}")
            await self._worker.cancel(reason=reason)

    async def cancel(self, reason: str = "cancelled") -> None:
        """Stop the call now (caller hung up, socket gone, shutdown)."""
        self._set_outcome(CallOutcome.CANCELLED)
        await self._stop(graceful=False, reason=reason)

    def _build(self) -> PipelineWorker:
        context = BuildContext(
            call_id=self.call_id,
            audio=self.spec.audio,
            resources=self._resources,
            base_dir=self.spec.file.parent,
            env=self.spec.env,
        )
        pipeline = build_pipeline(self.spec, context, input=self._input, output=self._output)
        worker = build_worker(self.spec, pipeline, call_id=self.call_id, observers=self._observers)

        @worker.event_handler("on_pipeline_started")
        async def _started(_worker: PipelineWorker, _frame: Frame) -> None:
            self.started_at = time.time()
            self._started.set()

        @worker.event_handler("on_idle_timeout")
        async def _idle(_worker: PipelineWorker) -> None:
            self._set_outcome(CallOutcome.IDLE)
            logger.info(f"call {self.call_id}: idle for {self.spec.call.idle_timeout_secs} s")

        @worker.event_handler("on_pipeline_error")
        async def _error(_worker: PipelineWorker, frame: ErrorFrame) -> None:
            unusable = frame.processor is not None and not frame.processor.is_usable
            if frame.fatal or unusable:
                # The worker ends the call (processor_unusable_policy); record why.
                self._set_outcome(CallOutcome.ERROR)
                self.error = frame.error
                logger.error(f"call {self.call_id}: {frame.processor}: {frame.error}")

        @worker.event_handler("on_pipeline_finished")
        async def _finished(_worker: PipelineWorker, frame: Frame) -> None:
            if isinstance(frame, CancelFrame):
                self._set_outcome(CallOutcome.CANCELLED)
            elif isinstance(frame, EndFrame):
                self._set_outcome(CallOutcome.COMPLETED)

        return worker

    def _set_outcome(self, outcome: CallOutcome) -> None:
        if self._outcome is None:
            self._outcome = outcome

    async def _stop(self, *, graceful: bool, reason: str = "") -> None:
        """Ask the pipeline to stop, then make sure its task is gone within ``end_timeout_secs``.

        The pipeline gets 70 % of the budget to stop by itself (an EndFrame lets queued audio
        play; a cancel skips it); then its task is cancelled outright.
        """
        task, worker = self._task, self._worker
        if task is None or task.done():
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._end_timeout
        soft_budget = self._end_timeout * 0.7
        if worker is not None:
            with contextlib.suppress(Exception):
                if graceful:
                    await worker.queue_frame(EndFrame(reason=reason or None))
                else:
                    await asyncio.wait_for(worker.cancel(reason=reason or None), soft_budget)
        soft_deadline = deadline - self._end_timeout + soft_budget
        await asyncio.wait({task}, timeout=max(0.0, soft_deadline - loop.time()))
        if task.done():
            return
        logger.warning(f"call {self.call_id}: pipeline did not stop in time, cancelling its tasks")
        # pipecat's runner absorbs one cancellation to clean up, and a processor's cleanup may
        # hang (a dead SDK endpoint): cancel the call's tasks until they are all gone.
        while not task.done() and loop.time() < deadline:
            task.cancel()
            for owned in self._tasks.current_tasks() if self._tasks else ():
                owned.cancel()
            await asyncio.wait({task}, timeout=min(0.05, max(0.0, deadline - loop.time())))
        if not task.done():
            logger.error(f"call {self.call_id}: pipeline task ignores cancellation")
