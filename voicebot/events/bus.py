"""The call events bus: publish from a call without waiting, deliver to this worker's subscribers
and, through Redis pub/sub, to every other worker's.

:meth:`EventBus.publish` is synchronous and never blocks: it puts the event on a bounded queue
and returns; when the queue is full the event is dropped and counted (``dropped``). One
background task per process (started and stopped by the app lifespan) takes events off the
queue, delivers them to local subscribers and hands them to the relay. A subscriber that reads
too slowly loses events (counted on its :class:`Subscription`), never slows anyone else.

The relay is what connects workers. :class:`RedisRelay` publishes each local event on one
channel and delivers the other workers' events to local subscribers; it has its own bounded
outbound queue and task, so a slow or dead Redis never delays local delivery. When Redis is
down, local subscribers still get every local event, events meant for other workers are counted
as unsent, and the relay reconnects on its own (every ``retry_secs``) and carries on.

The bus also keeps the view a dashboard starts from: the calls it has heard start and not end
(from any worker) with their recent events (:meth:`EventBus.snapshot`). A worker that starts
after a call began elsewhere learns of that call from its next event; a call whose worker died
without ending it is forgotten after :data:`STALE_CALL_SECS` without news.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from loguru import logger
from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from voicebot.events.model import (
    CallEnded,
    CallEvent,
    CallStarted,
    Transcript,
    event_dict,
    event_from,
    worker_name,
)
from voicebot.sessions.redis_store import split_cluster_url

#: Events waiting for the publisher task, per process.
QUEUE_SIZE = 1000
#: Events waiting for one subscriber to read them.
SUBSCRIBER_QUEUE_SIZE = 500
#: Recent events kept per active call for the snapshot.
HISTORY_PER_CALL = 200
#: A call not heard of for this many seconds is dropped from the snapshot (its worker died
#: without ending it).
STALE_CALL_SECS = 1800.0
#: Events waiting to be sent to Redis.
RELAY_QUEUE_SIZE = 1000
#: Bound of one Redis operation, in seconds.
RELAY_OP_TIMEOUT_SECS = 1.0
#: Seconds between attempts to reach Redis again after it failed.
RELAY_RETRY_SECS = 1.0

Deliver = Callable[[CallEvent], None]


class Relay(Protocol):
    """Carries events between the workers' buses."""

    async def start(self, deliver: Deliver, origin: str) -> None:
        """Start relaying; other workers' events go to ``deliver``; ``origin`` names this bus."""

    def send(self, event: CallEvent) -> None:
        """Relay a local event to the other workers; never blocks, never raises."""

    async def aclose(self) -> None:
        """Stop relaying (bounded)."""

    def status(self) -> dict[str, Any]:
        """The relay's state for readiness."""


class Subscription:
    """Events for one subscriber: of one call (``call_id``) or of all calls (``call_id`` None).

    Read with ``await subscription.get()`` or ``async for event in subscription``; close it (or
    use it as a context manager) when done.

    Attributes:
        dropped: Events lost because this subscriber did not keep up.
    """

    def __init__(self, bus: EventBus, call_id: str | None, queue_size: int) -> None:
        self.call_id = call_id
        self.dropped = 0
        self._bus = bus
        self._queue: asyncio.Queue[CallEvent] = asyncio.Queue(queue_size)

    def _offer(self, event: CallEvent) -> None:
        if self.call_id is not None and event.call_id != self.call_id:
            return
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1

    async def get(self) -> CallEvent:
        """The next event (waits for it)."""
        return await self._queue.get()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> CallEvent:
        return await self._queue.get()

    def close(self) -> None:
        self._bus._unsubscribe(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@dataclass
class _ActiveCall:
    started: CallStarted | None
    worker: str
    agent: str | None = None
    last_seen: float = 0.0
    events: deque[CallEvent] = field(default_factory=lambda: deque(maxlen=HISTORY_PER_CALL))


class EventBus:
    """One per process: see the module docstring.

    Attributes:
        worker: ``hostname:pid`` stamped on events published here without one.
        published: Events accepted by :meth:`publish`.
        dropped: Events dropped because the queue was full.
    """

    def __init__(
        self,
        relay: Relay | None = None,
        *,
        worker: str | None = None,
        queue_size: int = QUEUE_SIZE,
        subscriber_queue_size: int = SUBSCRIBER_QUEUE_SIZE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """A bus; ``clock`` (seconds) tells when a call was last heard of."""
        self.worker = worker or worker_name()
        self.published = 0
        self.dropped = 0
        self.relay = relay
        self._queue: asyncio.Queue[CallEvent] | None = None
        self._queue_size = queue_size
        self._subscriber_queue_size = subscriber_queue_size
        self._subscribers: list[Subscription] = []
        self._calls: dict[str, _ActiveCall] = {}
        self._task: asyncio.Task[None] | None = None
        self._origin = f"{self.worker}/{id(self):x}"
        self._clock = clock

    # -- publishing ----------------------------------------------------------------------------

    def publish(self, event: CallEvent) -> bool:
        """Queue ``event`` for delivery; False if it was dropped (queue full). Never blocks."""
        if self._queue is None:
            self._queue = asyncio.Queue(self._queue_size)
        if not event.worker:
            event = event.model_copy(update={"worker": self.worker})
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                logger.warning(f"event bus: queue full, {self.dropped} events dropped so far")
            return False
        self.published += 1
        return True

    async def start(self) -> None:
        """Start the publisher task (and the relay). Call once, from the app lifespan."""
        if self._task is not None:
            return
        if self._queue is None:
            self._queue = asyncio.Queue(self._queue_size)
        if self.relay is not None:
            await self.relay.start(self._deliver, self._origin)
        self._task = asyncio.create_task(self._run(), name="voicebot-event-bus")

    async def aclose(self) -> None:
        """Stop the task, deliver what is still queued, stop the relay."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        while self._queue is not None and not self._queue.empty():
            event = self._queue.get_nowait()
            self._deliver(event)
            if self.relay is not None:
                self.relay.send(event)
        if self.relay is not None:
            await self.relay.aclose()

    async def _run(self) -> None:
        assert self._queue is not None
        while True:
            event = await self._queue.get()
            try:
                self._deliver(event)
                if self.relay is not None:
                    self.relay.send(event)
            except Exception:
                logger.exception(f"event bus: delivering a {event.type} event failed")

    # -- delivery ------------------------------------------------------------------------------

    def _deliver(self, event: CallEvent) -> None:
        """Give ``event`` (local or from another worker) to the subscribers and the view."""
        self._track(event)
        for subscription in list(self._subscribers):
            subscription._offer(event)

    def _track(self, event: CallEvent) -> None:
        if isinstance(event, CallEnded):
            self._calls.pop(event.call_id, None)
            return
        call = self._calls.get(event.call_id)
        if call is None:
            started = event if isinstance(event, CallStarted) else None
            call = self._calls[event.call_id] = _ActiveCall(started, event.worker)
        elif isinstance(event, CallStarted):  # the same call again (a reconnect, a resume)
            call.started, call.worker = event, event.worker
        call.last_seen = self._clock()
        if isinstance(event, Transcript) and event.agent:
            call.agent = event.agent
        elif event.type == "handoff":
            call.agent = getattr(event, "to_agent", call.agent)
        call.events.append(event)

    # -- subscribing ---------------------------------------------------------------------------

    def subscribe(
        self, call_id: str | None = None, *, queue_size: int | None = None
    ) -> Subscription:
        """Events of ``call_id`` (None: of every call) from now on."""
        subscription = Subscription(self, call_id, queue_size or self._subscriber_queue_size)
        self._subscribers.append(subscription)
        return subscription

    def _unsubscribe(self, subscription: Subscription) -> None:
        if subscription in self._subscribers:
            self._subscribers.remove(subscription)

    def snapshot(self, call_id: str | None = None) -> list[dict[str, Any]]:
        """The active calls (or just ``call_id``) with their recent events, oldest first.

        Calls not heard of for :data:`STALE_CALL_SECS` are forgotten first.
        """
        stale = self._clock() - STALE_CALL_SECS
        for cid in [cid for cid, call in self._calls.items() if call.last_seen < stale]:
            del self._calls[cid]
        calls = []
        for cid, call in self._calls.items():
            if call_id is not None and cid != call_id:
                continue
            started = call.started
            calls.append(
                {
                    "call_id": cid,
                    "worker": call.worker,
                    "started_at": started.at if started is not None else None,
                    "source": started.source if started is not None else None,
                    "pipeline": started.pipeline if started is not None else None,
                    "agent": call.agent,
                    "events": [event_dict(e) for e in call.events],
                }
            )
        return calls

    def active_call_ids(self) -> list[str]:
        return list(self._calls)

    def status(self) -> dict[str, Any]:
        """For readiness: backend, counts and the relay's state."""
        relay = self.relay.status() if self.relay is not None else None
        queued = self._queue.qsize() if self._queue is not None else 0
        running = self._task is not None and not self._task.done()
        degraded = not running or (relay is not None and relay["status"] != "ok")
        status: dict[str, Any] = {
            "status": "degraded" if degraded else "ok",
            "backend": "redis" if self.relay is not None else "memory",
            "running": running,
            "worker": self.worker,
            "published": self.published,
            "dropped": self.dropped,
            "queued": queued,
            "subscribers": len(self._subscribers),
            "active_calls": len(self._calls),
        }
        if relay is not None:
            status["relay"] = relay
        return status


class RedisRelay:
    """Relays events between workers through one Redis pub/sub channel.

    Each message is ``{"origin": <bus>, "event": {...}}``; a bus ignores its own. A cluster URL
    works too: pub/sub messages reach every node, so the relay talks to the URL's node.

    Attributes:
        sent: Events published to Redis.
        unsent: Local events other workers did not get (Redis down, or the queue full).
        received: Events received from other workers.
    """

    def __init__(
        self,
        url: str,
        channel: str,
        *,
        op_timeout_secs: float = RELAY_OP_TIMEOUT_SECS,
        retry_secs: float = RELAY_RETRY_SECS,
        queue_size: int = RELAY_QUEUE_SIZE,
    ) -> None:
        self.channel = channel
        self.sent = 0
        self.unsent = 0
        self.received = 0
        self._url = url
        self._op_timeout = op_timeout_secs
        self._retry = retry_secs
        self._queue: asyncio.Queue[CallEvent] = asyncio.Queue(queue_size)
        self._deliver: Deliver | None = None
        self._origin = ""
        self._up = False
        self._last_error: str | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._client: Redis | None = None

    async def start(self, deliver: Deliver, origin: str) -> None:
        self._deliver = deliver
        self._origin = origin
        self._client = Redis.from_url(
            split_cluster_url(self._url)[0],  # pub/sub goes to one node
            socket_connect_timeout=self._op_timeout,
            socket_timeout=self._op_timeout,
        )
        self._tasks = [
            asyncio.create_task(self._listen(), name="voicebot-event-relay-listen"),
            asyncio.create_task(self._send_loop(), name="voicebot-event-relay-send"),
        ]

    def send(self, event: CallEvent) -> None:
        if not self._up:
            self.unsent += 1
            return
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.unsent += 1

    async def aclose(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._client.aclose(), self._op_timeout)
            self._client = None
        self._up = False

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = {
            "status": "ok" if self._up else "down",
            "channel": self.channel,
            "sent": self.sent,
            "unsent": self.unsent,
            "received": self.received,
        }
        if not self._up and self._last_error:
            status["error"] = self._last_error
        return status

    def _went_down(self, exc: BaseException) -> None:
        self._last_error = f"{type(exc).__name__}: {exc}"
        if self._up:
            logger.warning(
                f"event relay: Redis unavailable ({self._last_error}); live events stay on "
                f"this worker until it is back"
            )
        self._up = False

    async def _listen(self) -> None:
        """Subscribe, deliver other workers' events; on failure wait ``retry_secs`` and redo."""
        assert self._client is not None
        while True:
            pubsub = self._client.pubsub()
            try:
                await asyncio.wait_for(pubsub.subscribe(self.channel), self._op_timeout)
                if not self._up:
                    logger.info(f"event relay: connected to Redis, channel {self.channel!r}")
                self._up = True
                while self._up:  # a failed publish marks the relay down: subscribe anew
                    message = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=self._op_timeout / 2
                    )
                    if message is not None:
                        self._received(message.get("data"))
            except (RedisError, OSError, TimeoutError) as exc:
                self._went_down(exc)
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(pubsub.aclose(), self._op_timeout)
            await asyncio.sleep(self._retry)

    def _received(self, data: Any) -> None:
        try:
            message = json.loads(data)
            if message.get("origin") == self._origin:
                return
            event = event_from(message.get("event"))
        except (ValueError, TypeError, AttributeError, ValidationError):
            logger.warning("event relay: ignored a message that is not a call event")
            return
        self.received += 1
        if self._deliver is not None:
            self._deliver(event)

    async def _send_loop(self) -> None:
        assert self._client is not None
        while True:
            event = await self._queue.get()
            if not self._up:
                self.unsent += 1
                continue
            data = json.dumps({"origin": self._origin, "event": event_dict(event)})
            for attempt in (1, 2):  # a connection Redis dropped fails once, then reconnects
                try:
                    await asyncio.wait_for(
                        self._client.publish(self.channel, data), self._op_timeout
                    )
                    self.sent += 1
                    break
                except (RedisError, OSError, TimeoutError) as exc:
                    if attempt == 2:
                        self.unsent += 1
                        self._went_down(exc)
