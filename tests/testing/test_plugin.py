"""voicebot's pytest plugin, used from a user's own project."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[2]


def test_user_project_tests_a_pipeline_with_the_fixtures(pytester: pytest.Pytester) -> None:
    (pytester.path / "transports").mkdir()
    (pytester.path / "transports" / "acs.yaml").write_text(
        (REPO / "transports" / "acs.yaml").read_text()
    )
    (pytester.path / "bot.yaml").write_text(
        "name: bot\ntransport: acs\nprocessors:\n"
        "  - vad: {provider: silero}\n"
        "  - stt: {provider: fake, transcripts: [hi]}\n"
        "  - llm: {provider: fake, replies: ['Hello there.']}\n"
        "  - tts: {provider: fake}\n"
    )
    pytester.makeini(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
    )
    pytester.makepyfile(
        test_bot="""
from pipecat.frames.frames import TTSStartedFrame

async def test_bot(call_harness, no_leaked_tasks):
    async with call_harness("bot.yaml") as call:
        await call.say("hi")
        await call.wait_for(TTSStartedFrame)
    assert call.replies == ["Hello there."]

async def test_leak_is_caught(no_leaked_tasks):
    import asyncio
    asyncio.get_running_loop().create_task(asyncio.sleep(60))
"""
    )
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    # the leaking test itself passes; its teardown reports the leak as an error
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*LeakedTasksError*1 task(s) still running*"])
