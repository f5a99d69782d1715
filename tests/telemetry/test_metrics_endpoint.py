"""``GET /api/v1/metrics`` scraped over a real socket from a server app (uvicorn, a free port)."""

from __future__ import annotations

from pathlib import Path

import httpx
from telemetry_support import observe, server_app, serving, speak, state

from voicebot.telemetry import Telemetry, telemetry_for
from voicebot.testing import CallHarness, FakeLLMParams, FakeSTTParams, no_leaked_tasks


async def place_call(telemetry: Telemetry, pipeline: Path) -> None:
    """One simulated call, counted in ``telemetry``: a question and its answer."""
    harness = CallHarness(
        pipeline,
        stt=FakeSTTParams(transcripts=["What is my balance?"]),
        llm=FakeLLMParams(replies=["It is 42 dollars."]),
        call_id="metrics-call",
    )
    observer = observe(harness, telemetry)
    async with harness as call:
        await speak(call)
        await call.wait(3)
    observer.finish(call.call.outcome)


async def test_metrics_are_served_in_prometheus_text_format_after_a_call(scripted: Path) -> None:
    app = server_app()
    telemetry = telemetry_for(state(app).resources)
    await place_call(telemetry, scripted)
    telemetry.record_bad_input("invalid_json")
    telemetry.record_bad_input("invalid_json")
    telemetry.record_error("transport", "connectivity")
    telemetry.register_pool("azure-tts", lambda: {"idle": 3, "in_use": 1})
    telemetry.register_pool("broken", lambda: 1 / 0)

    async with no_leaked_tasks(grace_secs=2.0), serving(app) as url, httpx.AsyncClient() as client:
        response = await client.get(f"{url}/api/v1/metrics", timeout=10)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    lines = response.text.splitlines()
    for line in [
        "voicebot_active_calls 0.0",
        'voicebot_calls_total{outcome="cancelled"} 1.0',
        'voicebot_turns_total{answered="true"} 1.0',
        "voicebot_voice_to_voice_seconds_count 1.0",
        'voicebot_voice_to_voice_seconds_bucket{le="1.0"} 1.0',
        'voicebot_turn_stage_seconds_sum{stage="llm"} 0.3',
        'voicebot_turn_stage_seconds_sum{stage="tts"} 0.15',
        "voicebot_barge_ins_total 0.0",
        'voicebot_errors_total{category="connectivity",source="transport"} 1.0',
        'voicebot_bad_input_total{kind="invalid_json"} 2.0',
        'voicebot_pool_size{pool="azure-tts",state="idle"} 3.0',
        'voicebot_pool_size{pool="azure-tts",state="in_use"} 1.0',
    ]:
        assert line in lines, line
    assert 'pool="broken"' not in response.text


async def test_each_app_has_its_own_registry() -> None:
    first, second = server_app(), server_app()
    telemetry_for(state(first).resources).record_bad_input("oversize")
    async with serving(second) as url, httpx.AsyncClient() as client:
        text = (await client.get(f"{url}/api/v1/metrics", timeout=10)).text
    assert "# TYPE voicebot_bad_input_total counter" in text
    assert 'kind="oversize"' not in text
