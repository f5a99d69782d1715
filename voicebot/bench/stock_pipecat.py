"""Stock pipecat behind the ACS wire format: what ``voicebot bench`` compares voicebot against.

One pipecat pipeline per WebSocket call, built as pipecat's telephony examples build one, with
pipecat's defaults wherever the comparison allows:

- ``FastAPIWebsocketTransport`` with a JSON/base64 serializer for ACS media (voicebot's
  ``ACSMediaSerializer``: the serializer is not what is compared) and 20 ms output chunks, the
  frame size ACS expects (pipecat's default is 40 ms);
- a ``SileroVADAnalyzer`` of its own per call (its own model and inference thread), in the user
  aggregator (``LLMUserAggregatorParams(vad_analyzer=...)``);
- pipecat's default user-turn strategies: start on VAD or transcript, stop when the smart-turn v3
  model says the turn is complete (the model ships in the pipecat wheel, so it loads offline;
  one ONNX session per call) and the final transcript is in;
- ``LLMContextAggregatorPair`` and a ``PipelineWorker`` with its defaults (RTVI, turn tracking,
  no metrics, 300 s idle timeout), one ``WorkerRunner`` per call;
- the scripted STT, LLM and TTS services of :mod:`voicebot.testing.fakes`, used directly, with the
  params the bench pipeline YAML declares (read with voicebot's loader), and the VAD thresholds
  of its ``vad`` step.

Served by uvicorn with the same WebSocket implementation as ``voicebot serve``, logging at
WARNING like it, so the frameworks are what differs. Run::

    python -m voicebot.bench.stock_pipecat --pipeline benchmarks/pipelines/bench.yaml --port 8766

``GET /health`` answers once the app is up; ``WS /ws`` takes one ACS call per connection.
"""

from __future__ import annotations

import argparse
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path

from fastapi import FastAPI, WebSocket
from loguru import logger
from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.audio.vad.vad_analyzer import VADParams
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import (
    LLMContextAggregatorPair,
    LLMUserAggregatorParams,
)
from pipecat.transports.websocket.fastapi import FastAPIWebsocketParams, FastAPIWebsocketTransport
from pipecat.workers.runner import WorkerRunner

from voicebot.build.loader import PipelineSpec, load_pipeline
from voicebot.services.fake import FakeLLMProviderParams
from voicebot.services.silero import SileroParams
from voicebot.testing.fakes import (
    FakeLLMParams,
    FakeLLMService,
    FakeSTTParams,
    FakeSTTService,
    FakeTTSParams,
    FakeTTSService,
)
from voicebot.transports.acs import ACSMediaSerializer


def build_worker(spec: PipelineSpec, websocket: WebSocket, call_id: str) -> PipelineWorker:
    """One stock pipecat pipeline for the call on ``websocket``."""
    vad, stt, llm, tts = (spec.step(name).params for name in ("vad", "stt", "llm", "tts"))
    assert isinstance(vad, SileroParams) and isinstance(stt, FakeSTTParams)
    assert isinstance(llm, FakeLLMProviderParams) and isinstance(tts, FakeTTSParams)
    transport = FastAPIWebsocketTransport(
        websocket,
        FastAPIWebsocketParams(
            serializer=ACSMediaSerializer(
                call_id, ACSMediaSerializer.InputParams(sample_rate=spec.audio.in_rate)
            ),
            audio_in_enabled=True,
            audio_out_enabled=True,
            add_wav_header=False,
            audio_out_10ms_chunks=2,
        ),
    )
    script = FakeLLMParams.model_validate(llm.model_dump(include=set(FakeLLMParams.model_fields)))
    context = LLMContext(messages=[{"role": "system", "content": llm.system_prompt}])
    aggregators = LLMContextAggregatorPair(
        context,
        user_params=LLMUserAggregatorParams(
            vad_analyzer=SileroVADAnalyzer(params=VADParams(**vad.model_dump()))
        ),
    )
    pipeline = Pipeline(
        [
            transport.input(),
            FakeSTTService(params=stt),
            aggregators.user(),
            FakeLLMService(params=script),
            FakeTTSService(params=tts),
            transport.output(),
            aggregators.assistant(),
        ]
    )
    worker = PipelineWorker(
        pipeline,
        params=PipelineParams(
            audio_in_sample_rate=spec.audio.in_rate, audio_out_sample_rate=spec.audio.out_rate
        ),
    )

    @transport.event_handler("on_client_disconnected")
    async def _gone(_transport: FastAPIWebsocketTransport, _ws: WebSocket) -> None:
        await worker.cancel()

    return worker


def create_app(spec: PipelineSpec) -> FastAPI:
    """The stock server: ``GET /health`` and ``WS /ws``."""
    app = FastAPI(title="stock pipecat (voicebot bench)")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.websocket("/ws")
    async def call(websocket: WebSocket) -> None:
        await websocket.accept()
        call_id = websocket.headers.get("x-ms-call-connection-id") or uuid.uuid4().hex
        worker = build_worker(spec, websocket, call_id)
        runner = WorkerRunner(handle_sigint=False)
        await runner.add_workers(worker)
        await runner.run()

    return app


def main(argv: Sequence[str] | None = None) -> int:
    """Serve stock pipecat pipelines for the bench pipeline until SIGTERM/SIGINT."""
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m voicebot.bench.stock_pipecat")
    parser.add_argument("--pipeline", type=Path, default=Path("benchmarks/pipelines/bench.yaml"))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8766)
    args = parser.parse_args(argv)
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    app = create_app(load_pipeline(args.pipeline))
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", ws="websockets-sansio")
    return 0


if __name__ == "__main__":
    sys.exit(main())
