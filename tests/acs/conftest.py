from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from acs_support import API_KEY

from voicebot.testing.fake_call_automation import FakeCallAutomation
from voicebot.testing.tasks import no_leaked_tasks


@pytest_asyncio.fixture
async def acs() -> AsyncIterator[FakeCallAutomation]:
    async with no_leaked_tasks(), FakeCallAutomation(send_callbacks=True) as fake:
        yield fake


@pytest.fixture
def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {API_KEY}"}
