"""The ``voicebot`` command line: ``validate``, ``processors``, ``call``."""

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


def cmd_call(args: argparse.Namespace) -> int:
    """Place one simulated call in-process and print what happened."""
    from voicebot.simulate import main as simulate_main

    return simulate_main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voicebot", description=__doc__)
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO (default), WARNING")
    sub = parser.add_subparsers(dest="command", required=True)

    validate = sub.add_parser("validate", help="check pipeline files, listing every problem")
    validate.add_argument("files", nargs="+", type=Path)
    validate.set_defaults(func=cmd_validate)

    processors = sub.add_parser("processors", help="list processors usable in pipeline YAML")
    processors.set_defaults(func=cmd_processors)

    call = sub.add_parser("call", help="place one simulated call and print the conversation")
    call.add_argument("--pipeline", type=Path, default=Path("pipelines/demo.yaml"))
    call.add_argument(
        "--audio",
        type=Path,
        action="append",
        default=[],
        help="a caller turn as a WAV file (repeat for several turns)",
    )
    call.add_argument(
        "--pause",
        type=float,
        default=2.5,
        help="seconds of caller silence after each turn (default 2.5)",
    )
    call.add_argument("--out", type=Path, help="write the bot's audio to this WAV file")
    call.add_argument("--json", action="store_true", help="print the result as JSON")
    call.add_argument(
        "--fast", action="store_true", help="run on a virtual clock instead of in real time"
    )
    call.set_defaults(func=cmd_call)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
