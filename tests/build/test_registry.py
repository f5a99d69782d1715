"""How processors get into the registry: decorator, module:Class, entry points."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from pipecat.processors.frame_processor import FrameProcessor
from pydantic import ValidationError

from voicebot.build.registry import Registry, params_from_signature, processor


def test_decorator_derives_params_from_the_constructor() -> None:
    registry = Registry()

    @processor("thing", consumes=["text"], emits=["text"], registry=registry)
    class Thing(FrameProcessor):
        def __init__(self, level: int = 3, label: str = "x", **kwargs: object) -> None:
            super().__init__()

    spec = registry.get("thing")
    model = spec.providers["default"].params
    assert model.model_validate({"level": "5"}).level == 5  # type: ignore[attr-defined]
    with pytest.raises(ValidationError):
        model.model_validate({"levle": 5})
    with pytest.raises(ValidationError):
        model.model_validate({"level": "high"})
    assert {k.value for k in spec.consumes or ()} == {"text"}


def test_plain_pipecat_class_has_no_params() -> None:
    class Plain(FrameProcessor):
        pass

    assert params_from_signature(Plain).model_fields == {}


def test_entry_point_group_registers_a_short_name(tmp_path: Path) -> None:
    (tmp_path / "acme_voice.py").write_text(
        textwrap.dedent(
            """
            from pipecat.processors.frame_processor import FrameProcessor

            class Shout(FrameProcessor):
                consumes = ["text"]
                emits = ["text"]

                def __init__(self, volume: int = 11, **kwargs):
                    super().__init__(**kwargs)
            """
        )
    )
    dist = tmp_path / "acme_voice-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-voice\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[voicebot.processors]\nshout = acme_voice:Shout\n")
    code = (
        "from voicebot.build.registry import default_registry\n"
        "spec = default_registry().get('shout')\n"
        "print(spec.origin, sorted(k.value for k in spec.emits),"
        " spec.providers['default'].params.model_validate({'volume': 3}).volume)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["entry", "point", "acme_voice:Shout", "['text']", "3"]
