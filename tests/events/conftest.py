"""Real Redis for the event bus tests (the session tests' helpers; nothing here mocks Redis)."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sessions"))

from session_support import redis_servers, redis_url


@pytest.fixture
def channel() -> str:
    """A pub/sub channel of this test alone."""
    return f"voicebot:test-{uuid.uuid4().hex[:12]}:events"
