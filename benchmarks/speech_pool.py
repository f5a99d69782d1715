"""First audio of a call's greeting with a pre-warmed synthesizer pool and without, in one run.

    python benchmarks/speech_pool.py [--calls 25] [--rtt-ms 0,20] [--rate 16000]

Each call is a real pipeline built from YAML (``llm: fake`` with a greeting, ``tts: azure``)
whose Azure TTS talks, through the real Speech SDK over a real WebSocket, to the local
:class:`~voicebot.testing.azure_speech.AzureSpeechFake` (first byte delay 0, so only connection
and protocol costs remain). A call's *first audio* is the time from the call starting (its
pipeline being built) to the greeting's first audio frame leaving the pipeline.

* ``warm``: the process's pool was filled at start-up (``warm_up``), so each call takes a
  synthesizer whose connection is already open;
* ``cold``: no pool (``VOICEBOT_TTS_POOL_SIZE=0``), as pipecat's ``AzureTTSService`` works: each
  call makes a synthesizer and its first sentence opens the connection.

Calls alternate warm and cold. The fake answers on loopback, where a TCP + WebSocket handshake
costs well under a millisecond; ``--rtt-ms`` also runs the calls through a local relay that
delays every packet by half the given round-trip time each way, as a network would (real Azure
adds a TLS handshake on top, so the gap measured here is a lower bound). Prints JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from loguru import logger
from pipecat.frames.frames import OutputAudioRawFrame

from voicebot.build.builder import warm_up
from voicebot.build.loader import load_pipeline
from voicebot.services import azure
from voicebot.services.resources import SharedResources
from voicebot.testing import CallHarness
from voicebot.testing.azure_speech import AzureSpeechFake, ToneSynthesizer

GREETING = "Hello, thanks for calling Contoso Bank. How can I help you today?"

PIPELINE = """
name: greeting
transport: acs
audio: {{in_rate: 16000, out_rate: {rate}}}
processors:
  - stt: {{provider: fake}}
  - llm: {{provider: fake, greeting: "{greeting}", replies: []}}
  - tts: {{provider: azure, voice: en-US-JennyNeural}}
"""


class DelayRelay:
    """A TCP relay on 127.0.0.1 that delays every chunk by ``one_way_ms`` in each direction,
    keeping order: a network with a round-trip time of twice that. Runs on its own thread."""

    def __init__(self, target_port: int, one_way_ms: float) -> None:
        self.target_port = target_port
        self.delay = one_way_ms / 1000
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(),), daemon=True)

    def __enter__(self) -> DelayRelay:
        self._thread.start()
        if not self._ready.wait(5):
            raise RuntimeError("relay did not start")
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(5)

    async def _serve(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            await self._stop.wait()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(self.delay)  # the SYN's way there; the SYN-ACK's way back is below
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        await asyncio.sleep(self.delay)
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        async def send() -> None:
            while True:
                due, data = await queue.get()
                if (wait := due - loop.time()) > 0:
                    await asyncio.sleep(wait)
                if not data:
                    writer.close()
                    return
                writer.write(data)
                await writer.drain()

        sender = asyncio.create_task(send())
        try:
            while data := await reader.read(65536):
                queue.put_nowait((loop.time() + self.delay, data))
        finally:
            queue.put_nowait((loop.time() + self.delay, b""))
            with contextlib.suppress(Exception):
                await sender


@contextlib.contextmanager
def endpoint(fake: AzureSpeechFake, rtt_ms: float) -> Iterator[str]:
    """The fake's URL, behind a relay with ``rtt_ms`` round-trip time if it is not 0."""
    if rtt_ms <= 0:
        yield fake.url
        return
    with DelayRelay(fake.port, rtt_ms / 2) as relay:
        yield f"ws://127.0.0.1:{relay.port}"


@contextlib.asynccontextmanager
async def process(pool_size: int) -> AsyncIterator[SharedResources]:
    """What one server process shares, with a synthesizer pool of ``pool_size``."""
    resources = SharedResources()
    settings = azure.SynthesizerPoolSettings(size=pool_size, rates=(16000, 24000))
    resources.get(
        azure.RESOURCE_KEY,
        lambda: azure.AzureSpeech(settings),
        close=lambda speech: speech.aclose(),
    )
    try:
        yield resources
    finally:
        await resources.aclose()


async def first_audio_ms(spec: Any, resources: SharedResources) -> tuple[float, bool]:
    """One call: ms from its start to the greeting's first audio; whether it started warm."""
    async with CallHarness(
        spec, resources=resources, virtual_clock=False, check_tasks=False
    ) as call:
        first = await call.wait_for(OutputAudioRawFrame, timeout=10)
        tts = call.processor(azure.PooledAzureTTSService)
        return first.at * 1000, bool(tts.warm_start)


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "median_ms": round(statistics.median(ordered), 2),
        "p90_ms": round(ordered[int(0.9 * (len(ordered) - 1))], 2),
        "min_ms": round(ordered[0], 2),
        "max_ms": round(ordered[-1], 2),
    }


async def scenario(spec: Any, calls: int, pool_size: int) -> dict[str, Any]:
    warm_times: list[float] = []
    cold_times: list[float] = []
    warm_starts = 0
    async with process(pool_size) as warm_process, process(0) as cold_process:
        await warm_up(spec, warm_process)
        await first_audio_ms(spec, cold_process)  # first use of each path not counted
        await first_audio_ms(spec, warm_process)
        for _ in range(calls):
            ms, warm = await first_audio_ms(spec, warm_process)
            warm_times.append(ms)
            warm_starts += warm
            cold_times.append((await first_audio_ms(spec, cold_process))[0])
            await asyncio.sleep(0.05)  # the pool refills between calls, as between real ones
    warm, cold = summary(warm_times), summary(cold_times)
    return {
        "warm": warm | {"calls": calls, "served_from_pool": warm_starts},
        "cold": cold | {"calls": calls},
        "ratio_cold_to_warm_median": round(cold["median_ms"] / warm["median_ms"], 2),
        "saved_median_ms": round(cold["median_ms"] - warm["median_ms"], 2),
    }


async def main(calls: int, rtts: list[float], rate: int, pool_size: int) -> dict[str, Any]:
    results: dict[str, Any] = {
        "what": "ms from call start to the greeting's first audio frame, Azure TTS via the "
        "Speech SDK against the local fake service (first_byte_delay_ms=0)",
        "greeting": GREETING,
        "rate_hz": rate,
        "pool_size": pool_size,
        "scenarios": [],
    }
    with (
        tempfile.TemporaryDirectory() as folder,
        AzureSpeechFake(synthesizer=ToneSynthesizer(ms_per_char=60), first_byte_delay_ms=0) as fake,
    ):
        path = Path(folder) / "greeting.yaml"
        path.write_text(PIPELINE.format(rate=rate, greeting=GREETING), encoding="utf-8")
        for rtt in rtts:
            with endpoint(fake, rtt) as url:
                os.environ["AZURE_SPEECH_KEY"] = "benchmark"
                os.environ["AZURE_SPEECH_ENDPOINT"] = url
                os.environ.pop("AZURE_SPEECH_REGION", None)
                spec = load_pipeline(path)
                result = await scenario(spec, calls, pool_size)
            results["scenarios"].append({"rtt_ms": rtt, **result})
    return results


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=25, help="calls per mode (>= 20)")
    parser.add_argument(
        "--rtt-ms", default="0,20", help="network round-trip times to emulate, comma-separated"
    )
    parser.add_argument("--rate", type=int, default=16000, choices=azure.OUTPUT_RATES)
    parser.add_argument("--pool-size", type=int, default=2)
    args = parser.parse_args()
    if args.calls < 20:
        parser.error("--calls must be at least 20")
    return args


if __name__ == "__main__":
    arguments = parse()
    os.environ.setdefault(
        "VOICEBOT_TRANSPORTS_DIR", str(Path(__file__).resolve().parents[1] / "transports")
    )
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    rtts = [float(value) for value in arguments.rtt_ms.split(",") if value.strip()]
    started = time.monotonic()
    report = asyncio.run(main(arguments.calls, rtts, arguments.rate, arguments.pool_size))
    report["took_secs"] = round(time.monotonic() - started, 1)
    print(json.dumps(report, indent=2))
