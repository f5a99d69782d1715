"""Fresh processors per call; heavy read-only resources once per process."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from voicebot.build.builder import build_processors
from voicebot.build.context import BuildContext
from voicebot.build.loader import load_pipeline
from voicebot.services.resources import SharedResources
from voicebot.services.silero import MODEL_KEY, SharedSileroVADAnalyzer

PIPELINE = """
name: p
transport: acs
processors:
  - vad: {provider: silero}
  - echo
"""


def test_calls_get_fresh_processors_but_share_the_vad_model(
    pipeline_file: Callable[[str], Path],
) -> None:
    spec = load_pipeline(pipeline_file(PIPELINE))
    resources = SharedResources()
    built = [
        build_processors(spec, BuildContext(call_id=f"c{i}", audio=spec.audio, resources=resources))
        for i in range(3)
    ]
    vads = [b.processors[0] for b in built]
    echoes = [b.processors[1] for b in built]
    assert len({id(p) for p in vads}) == 3 and len({id(p) for p in echoes}) == 3

    analyzers = [v._vad_controller._vad_analyzer for v in vads]
    assert all(isinstance(a, SharedSileroVADAnalyzer) for a in analyzers)
    sessions = {id(a._model.session) for a in analyzers}
    assert sessions == {id(resources.get(MODEL_KEY, lambda: None).session)}
    # each call keeps its own recurrent state
    assert len({id(a._model._state) for a in analyzers}) == 3
    assert len({id(a._batcher) for a in analyzers}) == 1


async def test_shared_resources_close_once() -> None:
    closed: list[str] = []
    resources = SharedResources()
    resources.get("a", lambda: "A", close=lambda item: closed.append(item))
    assert resources.get("a", lambda: "other") == "A"
    await resources.aclose()
    assert closed == ["A"]
    assert resources.keys() == []
