"""Event bus tests: real Redis (``redis_url``, ``redis_servers`` from tests/conftest.py)."""

from __future__ import annotations

import uuid

import pytest


@pytest.fixture
def channel() -> str:
    """A pub/sub channel of this test alone."""
    return f"voicebot:test-{uuid.uuid4().hex[:12]}:events"
