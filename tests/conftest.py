from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from voicebot.build.loader import TRANSPORTS_DIR_ENV

REPO = Path(__file__).resolve().parents[1]

# The real-Redis fixtures (``redis_url``, ``redis_servers``) for every test that needs Redis.
sys.path.insert(0, str(REPO / "tests" / "sessions"))
from session_support import redis_servers, redis_url  # noqa: E402


@pytest.fixture
def pipeline_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], Path]:
    """Write pipeline YAML to a temporary file that finds the repository's transport profiles."""
    monkeypatch.setenv(TRANSPORTS_DIR_ENV, str(REPO / "transports"))

    def write(text: str, name: str = "pipeline.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return write


@pytest.fixture(autouse=True)
def _no_redis_from_the_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    """Servers under test keep sessions and events in memory unless a test points them at Redis.

    A ``REDIS_URL`` exported in a developer's shell would otherwise give every in-process server
    the same Redis, and tests that reuse a call id would resume each other's calls. The Redis
    fixtures (``redis_url``) still read it: they are set up before this runs.
    """
    for name in ("REDIS_URL", "VOICEBOT_REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
