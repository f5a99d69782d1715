"""``voicebot agents``: what the agents of a store are, for people (text) or tools (``--json``).

The store is a folder (``--store``, default ``agents``) or the one a pipeline's ``agents``
processor names (``--pipeline``). For every agent: whether it is the entry agent, its description,
tools, handoffs, voice (and the voice the offline TTS gives it) and engine. With a pipeline the
engine is the one its calls run on: ``llm`` when the pipeline's ``agents.llm`` names an endpoint
and the agent's ``engine`` is ``auto``, else ``policy``; and local voices start from the
pipeline's ``tts: {provider: local, ...}`` settings.

A store (or pipeline) with problems is not listed: every problem is printed as
``voicebot validate`` prints it, and the exit status is 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from voicebot.agents.store import AgentStore, check_store
from voicebot.build.problems import Problem

#: The store listed when neither ``--store`` nor ``--pipeline`` is given.
DEFAULT_STORE = Path("agents")


def describe(
    store: AgentStore,
    *,
    pipeline: bool = False,
    llm: str | None = None,
    tts: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The store as JSON-ready data.

    Args:
        store: A loaded store.
        pipeline: Whether ``llm`` and ``tts`` come from a pipeline; then each agent's
            ``engine`` is the one its calls run on (``llm`` or ``policy``), else its setting
            (``auto`` or ``policy``).
        llm: The LLM provider the pipeline's agents run on; None when it names no endpoint
            (the agents run on their policy).
        tts: The pipeline's local TTS params (``voice``, ``length_scale``), if its TTS is local;
            they are the defaults of the agents' local voices.
    """
    from voicebot.services.local import VOICES, LocalTTSParams, resolve_voice

    local_defaults = LocalTTSParams.model_validate(tts or {})
    agents = []
    for name, agent in store.agents.items():
        spec = agent.spec
        voice: dict[str, Any] | None = None
        if spec.voice is not None:
            requested, pitch, length_scale = spec.voice.local_request()
            resolved = resolve_voice(requested, pitch, length_scale, default=local_defaults)
            voice = {
                "name": spec.voice.name,
                "style": spec.voice.style,
                "rate": spec.voice.rate,
                "local": {
                    "voice": resolved.voice,
                    "pitch": resolved.pitch,
                    "length_scale": resolved.length_scale,
                    "derived": pitch is None and requested not in VOICES,
                },
            }
        engine: str = spec.engine
        if pipeline and engine == "auto":
            engine = "llm" if llm is not None else "policy"
        agents.append(
            {
                "name": name,
                "entry": name == store.entry,
                "description": spec.description,
                "tools": list(spec.tools),
                "handoffs": [{"to": h.to, "mode": h.mode} for h in spec.handoffs],
                "voice": voice,
                "engine": engine,
                "engine_setting": spec.engine,
                "file": str(agent.file),
            }
        )
    return {
        "store": str(store.dir),
        "description": store.spec.description,
        "entry": store.entry,
        "llm": llm if pipeline else None,
        "agents": agents,
    }


def format_text(described: dict[str, Any]) -> str:
    """``describe``'s data as the lines ``voicebot agents`` prints (entry agent marked ``*``)."""
    lines = [f"{described['store']}: {described['description'] or '(no description)'}"]
    if "pipeline" in described:
        llm = described["llm"] or "none configured: the agents run on their offline policy"
        lines.append(f"pipeline: {described['pipeline']}; llm: {llm}")
    lines += [f"entry: {described['entry']}", ""]
    for agent in described["agents"]:
        mark = "*" if agent["entry"] else " "
        lines.append(f"{mark} {agent['name']}: {agent['description'] or '(no description)'}")
        handoffs = ", ".join(
            h["to"] + (" (silent)" if h["mode"] == "silent" else "") for h in agent["handoffs"]
        )
        lines.append(f"    tools:    {', '.join(agent['tools']) or '-'}")
        lines.append(f"    handoffs: {handoffs or '-'}")
        voice = agent["voice"]
        if voice is None:
            lines.append("    voice:    - (the pipeline's TTS voice)")
        else:
            extras = ", ".join(f"{k} {voice[k]}" for k in ("style", "rate") if voice[k])
            local = voice["local"]
            how = "derived from the name" if local["derived"] else "voice.local"
            lines.append(f"    voice:    {voice['name']}" + (f" ({extras})" if extras else ""))
            lines.append(
                f"    local:    {local['voice']}, pitch {local['pitch']:g}, "
                f"length {local['length_scale']:g} ({how})"
            )
        engine = agent["engine"]
        if agent["engine_setting"] != engine:
            engine += f" (engine: {agent['engine_setting']})"
        lines.append(f"    engine:   {engine}")
    return "\n".join(lines)


def _from_pipeline(file: Path) -> tuple[dict[str, Any] | None, list[Problem]]:
    """The pipeline's store, LLM provider and local TTS params, or its problems."""
    from voicebot.agents.backends import parse_llm
    from voicebot.agents.router import AgentsParams
    from voicebot.build.loader import check_pipeline

    spec, problems = check_pipeline(file)
    if spec is None or problems:
        return None, problems
    step = next((s for s in spec.steps if s.name == "agents"), None)
    if step is None or not isinstance(step.params, AgentsParams):
        message = "the pipeline has no `agents` processor: there is no agent store to list"
        return None, [Problem(file, None, "processors", spec.name, message, "use --store DIR")]
    llm = None
    if step.params.llm:
        provider, settings = parse_llm(step.params.llm)
        endpoint = getattr(settings, "endpoint", None) or getattr(settings, "base_url", None)
        llm = provider if provider == "fake" or endpoint else None
    tts = next((s for s in spec.steps if s.name == "tts"), None)
    local_tts = tts.params.model_dump() if tts and tts.provider.name == "local" else None
    folder = step.params.store_path(file.parent)
    return {"folder": folder, "llm": llm, "tts": local_tts}, []


def main(args: argparse.Namespace) -> int:
    """Entry point of ``voicebot agents`` (arguments from :mod:`voicebot.cli`)."""
    if args.store is not None and args.pipeline is not None:
        print("voicebot agents: give --store or --pipeline, not both", file=sys.stderr)
        return 2
    llm, tts = None, None
    if args.pipeline is not None:
        found, problems = _from_pipeline(args.pipeline)
        if found is None:
            return _report(problems, args.json)
        folder, llm, tts = found["folder"], found["llm"], found["tts"]
    else:
        folder = args.store if args.store is not None else DEFAULT_STORE
    store, problems = check_store(folder)
    if store is None or problems:
        return _report(problems, args.json)
    described = describe(store, pipeline=args.pipeline is not None, llm=llm, tts=tts)
    if args.pipeline is not None:
        described = {"pipeline": str(args.pipeline), **described}
    print(json.dumps(described, indent=2) if args.json else format_text(described))
    return 0


def _report(problems: list[Problem], as_json: bool) -> int:
    if as_json:
        print(json.dumps({"problems": [str(p) for p in problems]}, indent=2))
    else:
        for problem in problems:
            print(problem)
    count = len(problems)
    print(f"\n{count} problem{'s' if count != 1 else ''} found.", file=sys.stderr)
    return 1
