"""pytest plugin (loaded automatically when voicebot is installed): fixtures for pipeline tests.

* ``call_harness`` — a factory for :class:`~voicebot.testing.CallHarness`; harnesses a test forgets
  to close are closed at its end.
* ``no_leaked_tasks`` — fails the test if it leaves asyncio tasks running.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from voicebot.testing.harness import CallHarness
from voicebot.testing.tasks import no_leaked_tasks as _no_leaked_tasks


class HarnessFactory:
    """``call_harness(pipeline, stt=..., llm=..., tts=...)`` → a :class:`CallHarness`."""

    def __init__(self) -> None:
        self.made: list[CallHarness] = []

    def __call__(self, pipeline: Any, **kwargs: Any) -> CallHarness:
        harness = CallHarness(pipeline, **kwargs)
        self.made.append(harness)
        return harness


@pytest_asyncio.fixture
async def call_harness() -> AsyncIterator[HarnessFactory]:
    """Make harnesses in a test: ``async with call_harness("p.yaml", llm=...) as call: ...``."""
    factory = HarnessFactory()
    yield factory
    for harness in factory.made:
        if harness._task is not None and not harness._task.done():
            await harness.close()


@pytest_asyncio.fixture
async def no_leaked_tasks() -> AsyncIterator[None]:
    """Fail the test if asyncio tasks it started are still running when it ends."""
    async with _no_leaked_tasks():
        yield


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: takes more than a few seconds")
