"""The observer on a real call: ACS played by the simulator over a socket, the FastAPI transport.

The turn is answered by the output transport's ``BotStartedSpeakingFrame``, and the server's
voice-to-voice latency agrees with what the caller measured from the audio. Times are real.
"""

from __future__ import annotations

import asyncio

import pytest
from telemetry_support import by_name, server_app, serving, state

from voicebot.acs.tokens import media_url
from voicebot.runner import CallRunner
from voicebot.server import media
from voicebot.telemetry import CallObserver, Telemetry, Tracing
from voicebot.testing import no_leaked_tasks, sample
from voicebot.testing.acs_simulator import ACSCallSimulator, Turn


@pytest.mark.slow
async def test_server_latency_matches_the_callers(
    monkeypatch: pytest.MonkeyPatch, exporter
) -> None:  # type: ignore[no-untyped-def]
    telemetry = Telemetry(tracing=Tracing.to(exporter))
    observers: list[CallObserver] = []

    def observed_runner(spec, **kwargs):  # type: ignore[no-untyped-def]
        observer = telemetry.call(kwargs["call_id"], correlation_id="corr", pipeline=spec.name)
        observers.append(observer)
        kwargs["observers"] = [*kwargs.get("observers", ()), observer]
        return CallRunner(spec, **kwargs)

    monkeypatch.setattr(media, "CallRunner", observed_runner)
    app = server_app()
    async with no_leaked_tasks(grace_secs=2.0), serving(app) as url:
        ws = url.replace("http://", "ws://")
        signed = media_url(ws, state(app).signing_key, "socket-call", 60)
        async with ACSCallSimulator(signed, call_connection_id="socket-call") as caller:
            await caller.play([Turn(sample("balance"), pause_after_ms=2500)])
        report = caller.report()
        for _ in range(100):
            if not state(app).active:
                break
            await asyncio.sleep(0.05)
    (observer,) = observers
    observer.finish("cancelled")

    (heard,) = report.turns
    (turn,) = observer.turns
    assert heard.latency_ms is not None
    # The caller's end of speech is its last voiced frame, the VAD's is stop_secs before its
    # stop (to a 32 ms window); the caller hears the bot once its first chunk crosses the socket.
    assert turn.voice_to_voice_ms == pytest.approx(heard.latency_ms, abs=150)
    assert turn.voice_to_voice_ms == pytest.approx(sum(turn.stages_ms.values()), abs=1e-6)
    assert (turn.stt_ms, turn.llm_ms) == (pytest.approx(150, abs=15), pytest.approx(300, abs=15))
    # the TTS's first byte reaches the observer through its push gate (the rest of the answer's
    # chunks do not)
    assert turn.tts_ms == pytest.approx(150, abs=15)
    (turn_span,) = by_name(exporter.get_finished_spans(), "turn")
    assert turn_span.attributes["voicebot.latency.voice_to_voice_ms"] == turn.voice_to_voice_ms  # type: ignore[index]
