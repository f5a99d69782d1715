"""Process-wide shared resources: created once, used by every call, closed at shutdown."""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

from loguru import logger

T = TypeVar("T")

#: How long closing one resource may take at shutdown, in seconds.
CLOSE_TIMEOUT_SECS = 2.0


class SharedResources:
    """A keyed cache of heavy read-only objects (ONNX sessions, SDK client pools).

    ``get(key, factory)`` creates the object on first use and returns the same instance to every
    later caller in the process. Creation is guarded by a lock, so two calls starting at once
    never build the same model twice. Objects registered with a ``close`` callback are closed by
    :meth:`aclose` in reverse order of creation.
    """

    def __init__(self) -> None:
        self._items: dict[str, Any] = {}
        self._closers: list[tuple[str, Callable[[], Awaitable[None] | None]]] = []
        self._lock = threading.Lock()  # guards the dicts, never held while creating
        self._creating: dict[str, threading.Lock] = {}

    def get(
        self,
        key: str,
        factory: Callable[[], T],
        *,
        close: Callable[[T], Awaitable[None] | None] | None = None,
    ) -> T:
        """Return the shared object for ``key``, creating it with ``factory`` the first time.

        Only callers of the same key wait while it is created; other keys are not held up.
        """
        if key in self._items:
            return cast(T, self._items[key])
        with self._lock:
            creating = self._creating.setdefault(key, threading.Lock())
        with creating:
            if key not in self._items:
                item = factory()
                with self._lock:
                    self._items[key] = item
                    if close is not None:
                        self._closers.append((key, lambda: close(item)))
        return cast(T, self._items[key])

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def keys(self) -> list[str]:
        """Keys of the resources created so far."""
        return list(self._items)

    async def aclose(self) -> None:
        """Close every resource that registered a closer; each gets CLOSE_TIMEOUT_SECS."""
        closers, self._closers = self._closers[::-1], []
        for key, closer in closers:
            try:
                result = closer()
                if inspect.isawaitable(result):
                    await asyncio.wait_for(result, CLOSE_TIMEOUT_SECS)
            except Exception as exc:  # one bad closer must not keep the others open
                logger.warning(f"closing shared resource {key!r} failed: {exc!r}")
        self._items.clear()
