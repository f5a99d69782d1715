"""The agent store: loading, and every problem of a broken store in one run, with lines."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from voicebot.agents.store import check_store, load_store
from voicebot.build.loader import check_pipeline
from voicebot.build.problems import ConfigError

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).resolve().parents[2]

# Kept out of the repository's Python files (linters would choke on it); added per test.
BROKEN_TOOL = """from voicebot.agents import ToolContext, tool


@tool
async def half_written(ctx: ToolContext) -> str
    return "oops"
"""


@pytest.fixture
def broken(tmp_path: Path) -> Path:
    """A store with one mistake of every kind (a copy of data/broken_store plus a tool module
    with a syntax error)."""
    folder = tmp_path / "broken_store"
    shutil.copytree(DATA / "broken_store", folder)
    (folder / "tools" / "broken.py").write_text(BROKEN_TOOL)
    return folder


def _relative(problems: list[object], folder: Path) -> str:
    return "\n".join(str(p).replace(f"{folder.resolve()}/", "") for p in problems)


def test_bank_store_loads() -> None:
    store = load_store(REPO / "agents")
    assert store.entry == "auth"
    assert set(store.agents) == {"auth", "billing", "support"}
    assert {"verify_identity", "get_balance", "make_payment", "open_ticket"} <= set(store.tools)
    assert store.agent("auth").handoffs.keys() == {"billing", "support", "human"}
    assert store.agent("billing").spec.voice is not None


def test_broken_store_lists_every_problem_with_file_and_line(broken: Path) -> None:
    store, problems = check_store(broken)
    assert store is None
    assert _relative(problems, broken) + "\n" == (DATA / "broken_store.expected").read_text()


@pytest.mark.parametrize(
    ("kind", "where"),
    [
        ("unknown tool 'get_balanse'", "alpha.yaml:6"),
        ("unknown handoff target (got 'betaa')", "alpha.yaml:7"),
        ("Jinja template error", "alpha.yaml:3"),
        ("Jinja template error", "prompts/alpha.jinja:4"),
        ("cannot be reached from the entry agent", "gamma.yaml:1"),
        ("Python syntax error", "tools/broken.py:5"),
    ],
)
def test_each_kind_of_problem_is_placed(broken: Path, kind: str, where: str) -> None:
    _, problems = check_store(broken)
    text = _relative(problems, broken)
    assert any(line.startswith(where + ":") and kind in line for line in text.splitlines())


def test_load_store_raises_with_all_problems(broken: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_store(broken)
    assert len(info.value.problems) == len(check_store(broken)[1]) > 10


def test_missing_folder_and_store_file(tmp_path: Path) -> None:
    _, problems = check_store(tmp_path / "nowhere")
    assert [p.message for p in problems] == ["agent store folder not found"]
    (tmp_path / "solo.yaml").write_text("name: solo\n")
    _, problems = check_store(tmp_path)
    assert [(p.file.name, p.message) for p in problems] == [("store.yaml", "file not found")]


def test_entry_agent_must_exist(tmp_path: Path) -> None:
    (tmp_path / "store.yaml").write_text("entry: greeter\n")
    (tmp_path / "welcome.yaml").write_text("name: welcome\n")
    _, problems = check_store(tmp_path)
    (problem,) = problems
    assert (problem.file.name, problem.line, problem.key, problem.value) == (
        "store.yaml",
        1,
        "entry",
        "greeter",
    )
    assert "welcome" in problem.hint


def test_a_tool_that_is_not_async_is_reported(tmp_path: Path) -> None:
    (tmp_path / "store.yaml").write_text("entry: solo\n")
    (tmp_path / "solo.yaml").write_text("name: solo\ntools: [sync_tool]\n")
    (tmp_path / "tools").mkdir()
    (tmp_path / "tools" / "sync.py").write_text(
        "from voicebot.agents import tool\n\n\n@tool\ndef sync_tool(ctx):\n    return 1\n"
    )
    _, problems = check_store(tmp_path)
    messages = [(p.file.name, p.line, p.message) for p in problems]
    assert messages[0][:2] == ("solo.yaml", 2)
    assert "unknown tool 'sync_tool'" in messages[0][2]
    assert messages[1][:2] == ("sync.py", 4)
    assert "must be an async function" in messages[1][2]


def test_validate_reports_the_store_a_pipeline_names(tmp_path: Path, broken: Path) -> None:
    pipeline = tmp_path / "bank.yaml"
    pipeline.write_text(
        "name: broken-bank\ntransport: acs\nprocessors:\n"
        "  - stt: {provider: fake}\n"
        f"  - agents: {{store: {broken}}}\n"
        "  - tts: {provider: fake}\n"
    )
    env = {**os.environ, "VOICEBOT_TRANSPORTS_DIR": str(REPO / "transports")}
    result = subprocess.run(
        [sys.executable, "-m", "voicebot.cli", "validate", str(pipeline)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    expected = (DATA / "broken_store.expected").read_text()
    assert _relative([result.stdout.rstrip("\n")], broken) + "\n" == expected
    assert f"{len(check_store(broken)[1])} problems found." in result.stderr


def test_validate_accepts_the_bank_pipeline() -> None:
    spec, problems = check_pipeline(REPO / "pipelines" / "bank.yaml", env={})
    assert problems == []
    assert spec is not None and spec.step("agents")


def test_bad_llm_settings_are_a_pipeline_problem(tmp_path: Path) -> None:
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(
        "name: p\ntransport: acs\nprocessors:\n"
        "  - stt: {provider: fake}\n"
        f"  - agents:\n      store: {REPO / 'agents'}\n"
        "      llm: {provider: azure_openai, deploymnet: gpt-4o}\n"
        "  - tts: {provider: fake}\n"
    )
    os.environ.setdefault("VOICEBOT_TRANSPORTS_DIR", str(REPO / "transports"))
    _, problems = check_pipeline(pipeline, env={})
    (problem,) = problems
    assert problem.line == 7
    assert problem.key == "processors[1].agents.llm"
    assert "llm.deploymnet: unknown key" in problem.message
