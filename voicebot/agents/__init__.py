"""Multi-agent conversations from a YAML store: agents, prompts, tools, handoffs.

What a tool module needs is importable from here (``from voicebot.agents import ToolContext,
tool``); the ``agents`` pipeline processor lives in :mod:`voicebot.agents.router`.
"""

from voicebot.agents.store import AgentStore, check_store, load_store
from voicebot.agents.tools import EndCall, Escalate, Handoff, ToolContext, tool

__all__ = [
    "AgentStore",
    "EndCall",
    "Escalate",
    "Handoff",
    "ToolContext",
    "check_store",
    "load_store",
    "tool",
]
