"""Leaked-task checks: a test (or a call) must leave no asyncio task running behind it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class LeakedTasksError(AssertionError):
    """Tasks created inside a checked block were still running at its end."""


def _describe(task: asyncio.Task[object]) -> str:
    coro = task.get_coro()
    where = getattr(coro, "__qualname__", repr(coro))
    return f"{task.get_name()} ({where})"


@asynccontextmanager
async def no_leaked_tasks(grace_secs: float = 0.5) -> AsyncIterator[None]:
    """Fail if tasks started inside the block are still alive ``grace_secs`` after it ends.

    The grace period lets tasks that are already finishing (cancelled, returning) get there; it is
    a bound, not a sleep: the check returns as soon as they are gone.
    """
    before = set(asyncio.all_tasks())
    yield
    # The block may end in another task than it began (a pytest-asyncio fixture's finalizer).
    current = asyncio.current_task()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace_secs
    while True:
        alive = [t for t in asyncio.all_tasks() - before if t is not current and not t.done()]
        if not alive:
            return
        if loop.time() >= deadline:
            break
        await asyncio.sleep(0.01)
    names = ", ".join(sorted(_describe(t) for t in alive))
    for task in alive:
        task.cancel()
    raise LeakedTasksError(f"{len(alive)} task(s) still running: {names}")
