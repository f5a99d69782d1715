"""Test pipelines with fake frames: scripted services, a virtual clock, a call harness.

Installed with voicebot, its pytest plugin adds the ``call_harness`` and ``no_leaked_tasks``
fixtures to any project's tests.
"""

from voicebot.testing.clock import virtual_time
from voicebot.testing.fakes import (
    FakeLLMParams,
    FakeLLMService,
    FakeSTTParams,
    FakeSTTService,
    FakeTTSParams,
    FakeTTSService,
    ScriptedReply,
    ScriptedToolCall,
    ScriptedTranscript,
)
from voicebot.testing.harness import CallHarness
from voicebot.testing.recorder import FrameRecorder, Recorded
from voicebot.testing.tasks import LeakedTasksError, no_leaked_tasks
from voicebot.testing.wav import read_wav, sample, write_wav

__all__ = [
    "CallHarness",
    "FakeLLMParams",
    "FakeLLMService",
    "FakeSTTParams",
    "FakeSTTService",
    "FakeTTSParams",
    "FakeTTSService",
    "FrameRecorder",
    "LeakedTasksError",
    "Recorded",
    "ScriptedReply",
    "ScriptedToolCall",
    "ScriptedTranscript",
    "no_leaked_tasks",
    "read_wav",
    "sample",
    "virtual_time",
    "write_wav",
]
