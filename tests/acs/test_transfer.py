"""An agent's escalation reaches call control as a transfer of the call."""

from __future__ import annotations

from pipecat.frames.frames import TTSSpeakFrame
from pipecat.processors.frame_processor import FrameProcessor
from pipecat.tests.utils import run_test

from voicebot.acs.transfer import TransferObserver
from voicebot.agents.decisions import TransferCallFrame


class RecordingCalls:
    def __init__(self, fail: bool = False) -> None:
        self.transfers: list[tuple[str, str]] = []
        self.fail = fail

    async def transfer(self, call_id: str, to: str) -> object:
        self.transfers.append((call_id, to))
        if self.fail:
            raise RuntimeError("call control is not configured")
        return None


class PassThrough(FrameProcessor):
    async def process_frame(self, frame, direction):  # type: ignore[no-untyped-def]
        await super().process_frame(frame, direction)
        await self.push_frame(frame, direction)


async def test_transfer_frame_asks_call_control_once() -> None:
    calls = RecordingCalls()
    observer = TransferObserver("call-1", calls)
    await run_test(
        PassThrough(),
        frames_to_send=[
            TTSSpeakFrame("Let me connect you with a colleague."),
            TransferCallFrame(to="+15550001111", reason="asked for a person"),
            TransferCallFrame(to="+15550002222"),
        ],
        observers=[observer],
    )
    assert calls.transfers == [("call-1", "+15550001111")]


async def test_a_failed_transfer_does_not_break_the_call() -> None:
    calls = RecordingCalls(fail=True)
    down, _ = await run_test(
        PassThrough(),
        frames_to_send=[TransferCallFrame(to="+15550001111")],
        observers=[TransferObserver("call-1", calls)],
    )
    assert calls.transfers == [("call-1", "+15550001111")]
    assert any(isinstance(f, TransferCallFrame) for f in down)
