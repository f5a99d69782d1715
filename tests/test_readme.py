"""The README's examples work as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _python_blocks() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


async def test_readme_pipeline_test_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    (block,) = [b for b in _python_blocks() if "async def test_" in b]
    namespace: dict[str, object] = {}
    monkeypatch.chdir(REPO)
    exec(compile(block, "README.md", "exec"), namespace)
    tests = [v for k, v in namespace.items() if k.startswith("test_") and callable(v)]
    assert tests
    for test in tests:
        await test()  # type: ignore[operator]
