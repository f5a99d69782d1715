"""The ``voicebot`` command line: ``validate``, ``processors``, ``agents``, ``call``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from voicebot.logs import configure_logging

# pipecat and the services are imported inside the commands, after logging is set up.


def cmd_validate(args: argparse.Namespace) -> int:
    """Check pipeline files; print every problem; exit 1 if there is any."""
    from voicebot.build.loader import check_pipeline

    total = 0
    for file in args.files:
        _, problems = check_pipeline(file)
        total += len(problems)
        if problems:
            for problem in problems:
                print(problem)
        else:
            print(f"{file}: ok")
    if total:
        print(f"\n{total} problem{'s' if total != 1 else ''} found.", file=sys.stderr)
    return 1 if total else 0


def cmd_processors(args: argparse.Namespace) -> int:
    """List the processors YAML can name, with their providers and frame kinds."""
    from voicebot.build.registry import default_registry

    registry = default_registry()
    for name in registry.names():
        spec = registry.get(name)
        consumes = ", ".join(sorted(spec.consumes or [])) or "?"
        emits = ", ".join(sorted(spec.emits or [])) or "?"
        providers = "" if not spec.needs_provider_key else f" [{', '.join(sorted(spec.providers))}]"
        print(f"{name}{providers}: {consumes} → {emits}")
        if spec.description:
            print(f"    {spec.description}")
    return 0


def cmd_agents(args: argparse.Namespace) -> int:
    """List an agent store's agents; print every problem and exit 1 if it is broken."""
    from voicebot.agents.listing import main as agents_main

    return agents_main(args)


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the server (uvicorn) until interrupted."""
    from voicebot.acs.control import CallControlSettingsError
    from voicebot.build.problems import ConfigError
    from voicebot.config import load_settings
    from voicebot.server import create_app
    from voicebot.server.workers import serve_workers, share_signing_secret

    overrides = {
        k: v
        for k, v in {"pipeline": args.pipeline, "host": args.host, "port": args.port}.items()
        if v is not None
    }
    settings = load_settings(**overrides)
    workers = args.workers or settings.workers
    if workers > 1:
        share_signing_secret()
        settings = load_settings(**overrides)
    try:  # checks the pipeline and settings now, also when the workers build their own app
        app = create_app(settings)
    except ConfigError as exc:
        print(f"voicebot serve: {settings.pipeline}: {exc}", file=sys.stderr)
        return 1
    except CallControlSettingsError as exc:
        print(f"voicebot serve: {exc}", file=sys.stderr)
        return 1
    if workers > 1:
        return serve_workers(overrides, args.log_level, workers, settings.host, settings.port)

    from voicebot.server.drain import serve

    serve(app)
    return 0


def cmd_media_url(args: argparse.Namespace) -> int:
    """Print a signed media-stream URL for a call id (for tests and manual calls)."""
    from voicebot.acs.tokens import media_url
    from voicebot.config import load_settings

    settings = load_settings()
    if settings.signing_secret is None:
        print(
            "voicebot media-url: set VOICEBOT_SIGNING_SECRET to the server's signing secret",
            file=sys.stderr,
        )
        return 2
    base = args.base or settings.base_url
    key = settings.signing_secret.get_secret_value().encode()
    print(media_url(base, key, args.call_id, args.ttl or settings.media_token_ttl_secs))
    return 0


def cmd_call(args: argparse.Namespace) -> int:
    """Place one simulated call and print what happened."""
    from voicebot.simulate import main as simulate_main

    return simulate_main(args)


def cmd_bench(args: argparse.Namespace) -> int:
    """Load-test voicebot and stock pipecat with simulated ACS calls."""
    from voicebot.bench.runner import main as bench_main

    return bench_main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voicebot", description=__doc__)
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO (default), WARNING")
    sub = parser.add_subparsers(dest="command", required=True)

    validate = sub.add_parser("validate", help="check pipeline files, listing every problem")
    validate.add_argument("files", nargs="+", type=Path)
    validate.set_defaults(func=cmd_validate)

    processors = sub.add_parser("processors", help="list processors usable in pipeline YAML")
    processors.set_defaults(func=cmd_processors)

    agents = sub.add_parser(
        "agents",
        help="list an agent store's agents: tools, handoffs, voices, engine",
        description="List the agents of a store (the entry agent marked *) with their "
        "description, tools, handoffs, voice (and offline voice) and engine. A broken store "
        "prints every problem, as validate does, and exits 1.",
    )
    where = agents.add_mutually_exclusive_group()
    where.add_argument("--store", type=Path, help="agent store folder (default agents)")
    where.add_argument(
        "--pipeline", type=Path, help="the store a pipeline's agents processor names, its LLM"
    )
    agents.add_argument("--json", action="store_true", help="print the listing as JSON")
    agents.set_defaults(func=cmd_agents)

    serve = sub.add_parser("serve", help="run the server: ACS media, call control, health")
    serve.add_argument("--pipeline", type=Path, help="pipeline YAML (default $VOICEBOT_PIPELINE)")
    serve.add_argument("--host", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8000)")
    serve.add_argument(
        "--workers",
        type=int,
        help="worker processes sharing the port (default $VOICEBOT_WORKERS or 1)",
    )
    serve.set_defaults(func=cmd_serve)

    url = sub.add_parser("media-url", help="print a signed media-stream URL for a call id")
    url.add_argument("--call-id", required=True)
    url.add_argument("--base", help="server base URL, e.g. ws://127.0.0.1:8000")
    url.add_argument("--ttl", type=int, help="seconds the URL stays valid")
    url.set_defaults(func=cmd_media_url)

    call = sub.add_parser(
        "call",
        help="place one simulated call and print the conversation",
        description="Place one simulated ACS call and print, per caller turn, what was "
        "recognised, which agent answered, what the bot said and the response latency. "
        "By default a server for --pipeline starts in this process (127.0.0.1, a free port) "
        "and the call goes over a real WebSocket, as ACS would place it. --url calls a running "
        "server instead (texts are then unavailable: timings and audio only). --fast uses no "
        "sockets: the pipeline runs in the test harness on a virtual clock.",
    )
    call.add_argument(
        "--audio",
        type=Path,
        action="append",
        default=[],
        help="a caller turn as a 16-bit WAV file (repeat for several turns; default: two "
        "shipped samples)",
    )
    call.add_argument(
        "--pipeline",
        type=Path,
        help="pipeline YAML of the in-process server or --fast (default pipelines/acs_phone.yaml)",
    )
    call.add_argument(
        "--url",
        help="call a running server: a signed media URL from `voicebot media-url`, or its base "
        "(ws://host:port) with VOICEBOT_SIGNING_SECRET set",
    )
    call.add_argument(
        "--pause",
        type=float,
        default=2.5,
        help="seconds the caller stays silent after each turn, at least; it also waits for the "
        "bot to finish answering (default 2.5)",
    )
    call.add_argument(
        "--rate",
        type=int,
        choices=(16000, 24000),
        default=16000,
        help="call audio rate in Hz over the socket (default 16000)",
    )
    call.add_argument("--out", type=Path, help="write the bot's audio, as heard, to this WAV file")
    call.add_argument("--json", action="store_true", help="print the result as JSON")
    call.add_argument(
        "--fast",
        action="store_true",
        help="no sockets: run the pipeline in the test harness on a virtual clock",
    )
    call.set_defaults(func=cmd_call)

    bench = sub.add_parser(
        "bench",
        help="load test: N simulated ACS calls against voicebot and stock pipecat",
        description="Start each server in its own process, place N concurrent simulated ACS "
        "calls on it over real sockets for --duration seconds, and report per-turn framework "
        "overhead, outbound pacing, server CPU and memory per call. See benchmarks/README.md.",
    )
    bench.add_argument("--calls", default="10", help="concurrent calls: N or N,N,... (a ramp)")
    bench.add_argument("--ramp", help="numbers of calls to run in turn, e.g. 10,50,100")
    bench.add_argument("--duration", type=float, default=40.0, help="seconds per call")
    bench.add_argument("--json", type=Path, help="write the report as JSON to this file")
    bench.add_argument("--plot", type=Path, help="write latency and CPU against calls (PNG)")
    bench.add_argument("--url", help="a running voicebot (ws://host:port) instead of starting one")
    bench.add_argument("--only", choices=("voicebot", "pipecat"), help="run one side only")
    bench.add_argument("--pipeline", type=Path, default=Path("benchmarks/pipelines/bench.yaml"))
    bench.add_argument("--pipecat-max-calls", type=int, default=25, help="skip stock above this")
    bench.add_argument("--pause-ms", type=int, default=3000, help="caller silence after a turn")
    bench.add_argument("--stagger", type=float, help="seconds over which callers connect")
    bench.add_argument(
        "--workers", type=int, default=1, help="voicebot worker processes (serve --workers)"
    )
    bench.set_defaults(func=cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
