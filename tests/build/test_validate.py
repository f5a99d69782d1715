"""`voicebot validate`: every problem in one run, each with file, line, key, value and a hint."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from voicebot.build.loader import check_pipeline

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).resolve().parents[2]


def test_broken_pipeline_lists_all_four_problems() -> None:
    # A fresh process: the registry holds voicebot's processors only, as for a user.
    env = {k: v for k, v in os.environ.items() if k != "VOICEBOT_TEST_UNSET_GAIN"}
    env["VOICEBOT_TRANSPORTS_DIR"] = str(REPO / "transports")
    result = subprocess.run(
        [sys.executable, "-m", "voicebot.cli", "validate", "broken.yaml"],
        cwd=DATA,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stdout == (DATA / "broken.expected").read_text()
    assert "4 problems found." in result.stderr


@pytest.mark.parametrize("path", sorted((REPO / "pipelines").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_pipelines_validate(path: Path) -> None:
    spec, problems = check_pipeline(path)
    assert problems == []
    assert spec is not None and spec.steps


def test_cli_entry_point_exit_codes() -> None:
    ok = subprocess.run(
        [sys.executable, "-m", "voicebot.cli", "validate", str(REPO / "pipelines" / "echo.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    assert "ok" in ok.stdout


def test_set_env_value_is_typed(pipeline_file: Callable[[str], Path]) -> None:
    path = pipeline_file(
        "name: p\ntransport: acs\nprocessors:\n  - vad:\n      stop_secs: ${STOP:-0.35}\n  - echo\n"
    )
    spec, problems = check_pipeline(path, env={})
    assert problems == [] and spec is not None
    assert spec.step("vad").params.stop_secs == 0.35  # type: ignore[attr-defined]
    spec, _ = check_pipeline(path, env={"STOP": "0.5"})
    assert spec is not None and spec.step("vad").params.stop_secs == 0.5  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("yaml_text", "line", "message"),
    [
        (
            "name: p\ntransport: acs\nprocessors:\n  - tts: {provider: fake}\n",
            4,
            "tts consumes text but nothing before it produces that",
        ),
        (
            "name: p\ntransport: acs\nprocessors:\n  - vad: {}\n",
            4,
            "transport 'acs' sends audio_out but no processor produces it",
        ),
        (
            "name: p\ntransport: nowhere\nprocessors:\n  - echo\n",
            2,
            "no transport profile 'nowhere'",
        ),
        (
            "name: p\ntransport: acs\naudio: {in_rate: 8000}\nprocessors:\n  - echo\n",
            3,
            "does not carry 8000 Hz audio",
        ),
        (
            "name: p\ntransport: acs\naudio: {in_rate: 24000, out_rate: 24000}\n"
            "processors:\n  - vad: {provider: silero}\n  - echo\n",
            5,
            "vad 'silero' runs at 8000 or 16000 Hz, not audio.in_rate 24000",
        ),
        (
            "name: p\ntransport: acs\nprocessors:\n  - stt: {language: en-US}\n",
            4,
            "stt needs a provider",
        ),
        (
            "name: p\ntransport: acs\nprocessors:\n  - stt: {provider: watson}\n",
            4,
            "unknown provider for stt",
        ),
        ("name: p\ntransport: acs\nprocessors:\n  - echo\n  - echo\nname: q\n", 6, "duplicate key"),
        ("name: p\ntransport: acs\nprocessors:\n  - echo: [1\n", 5, "YAML syntax error"),
        ("name: p\ntransport: acs\nprocesors:\n  - echo\n", 3, "unknown key"),
        (
            "name: p\ntransport: acs\nprocessors:\n  - voicebot.nosuch:Thing\n",
            4,
            "cannot import module",
        ),
        (
            "name: p\ntransport: acs\nprocessors:\n  - pathlib:Path\n",
            4,
            "is not a FrameProcessor class",
        ),
    ],
)
def test_each_layer_reports_with_a_line(
    pipeline_file: Callable[[str], Path], yaml_text: str, line: int, message: str
) -> None:
    _, problems = check_pipeline(pipeline_file(yaml_text), env={})
    assert any(p.line == line and message in p.message for p in problems), problems
    assert all(p.hint or "syntax" in p.message for p in problems)


def test_user_class_by_import_path(pipeline_file: Callable[[str], Path]) -> None:
    path = pipeline_file(
        "name: p\ntransport: acs\nprocessors:\n"
        "  - voicebot.processors.echo:EchoProcessor: {gain: 0.5}\n"
    )
    spec, problems = check_pipeline(path, env={})
    assert problems == [] and spec is not None
    assert spec.steps[0].params.gain == 0.5  # type: ignore[attr-defined]
