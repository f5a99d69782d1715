from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from voicebot.build.loader import TRANSPORTS_DIR_ENV

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def pipeline_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], Path]:
    """Write pipeline YAML to a temporary file that finds the repository's transport profiles."""
    monkeypatch.setenv(TRANSPORTS_DIR_ENV, str(REPO / "transports"))

    def write(text: str, name: str = "pipeline.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return write
