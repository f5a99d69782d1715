"""Load and check a pipeline file: YAML → a validated :class:`PipelineSpec`.

Checks run in layers and every problem of every layer is collected, each with file, line, key,
value and a hint:

1. YAML syntax, duplicate keys;
2. ``${VAR}`` references that are unset and have no default;
3. the file's shape (name, transport, audio, call, processors);
4. the transport profile exists and supports the audio rates;
5. each processor: known name, known provider, params of the right names and types, and what its
   params model's ``check(base_dir)`` finds (e.g. the ``agents`` store it names);
6. neighbours: every processor gets at least one kind of frame it consumes from what is before it,
   and the transport's output gets what it sends.
"""

from __future__ import annotations

import difflib
import importlib
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from voicebot.build.kinds import FrameKind
from voicebot.build.problems import NO_VALUE, ConfigError, Problem
from voicebot.build.registry import DEFAULT, ProcessorSpec, Provider, Registry, default_registry
from voicebot.build.schema import AudioSpec, CallSpec, PipelineFile, TransportProfile
from voicebot.build.yamlsource import KeyPath, Locations, format_path, load_yaml

#: Where transport profiles are looked for, besides ``transports/`` folders found walking up from
#: the pipeline file's folder.
TRANSPORTS_DIR_ENV = "VOICEBOT_TRANSPORTS_DIR"


@dataclass
class Step:
    """One processor entry of a pipeline, resolved and validated."""

    spec: ProcessorSpec
    provider: Provider
    params: BaseModel
    line: int | None = None

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass
class PipelineSpec:
    """A validated pipeline: build it once per call with :func:`voicebot.build.build_pipeline`."""

    name: str
    file: Path
    transport: TransportProfile
    audio: AudioSpec
    call: CallSpec
    steps: list[Step]
    env: Mapping[str, str] = field(default_factory=dict, repr=False)
    """The environment ``${VAR}`` was resolved against (never printed: it may hold secrets)."""

    def step(self, name: str) -> Step:
        """The first step called ``name``; KeyError if there is none."""
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(f"pipeline {self.name!r} has no processor {name!r}")

    def with_provider(
        self, name: str, provider: str, params: BaseModel | Mapping[str, Any]
    ) -> PipelineSpec:
        """A copy with processor ``name`` switched to ``provider`` (e.g. ``fake`` in tests).

        ``params`` may be the provider's params model, another model with a subset of its
        fields, or a mapping. When the step already uses that provider, what ``params`` does not
        set keeps the value from the file.
        """
        if name not in {step.name for step in self.steps}:
            raise KeyError(f"pipeline {self.name!r} has no processor {name!r}")
        steps = []
        for step in self.steps:
            if step.name == name:
                prov = step.spec.providers[provider]
                given = (
                    params.model_dump(exclude_unset=True)
                    if isinstance(params, BaseModel)
                    else dict(params)
                )
                values = step.params.model_dump(exclude_unset=True) if step.provider is prov else {}
                values.update(given)
                step = replace(step, provider=prov, params=prov.params.model_validate(values))
            steps.append(step)
        return replace(self, steps=steps)


def find_transport(name: str, pipeline_file: Path) -> Path | None:
    """The profile file for ``name``: ``$VOICEBOT_TRANSPORTS_DIR``, then ``transports/`` folders
    from the pipeline's folder upwards."""
    candidates: list[Path] = []
    if env_dir := os.environ.get(TRANSPORTS_DIR_ENV):
        candidates.append(Path(env_dir))
    for folder in [pipeline_file.resolve().parent, *pipeline_file.resolve().parents]:
        candidates.append(folder / "transports")
    for folder in candidates:
        path = folder / f"{name}.yaml"
        if path.is_file():
            return path
    return None


def load_pipeline(
    path: str | Path,
    *,
    env: Mapping[str, str] | None = None,
    registry: Registry | None = None,
) -> PipelineSpec:
    """Load ``path``; raises :class:`ConfigError` listing every problem found."""
    spec, problems = check_pipeline(path, env=env, registry=registry)
    if problems or spec is None:
        raise ConfigError(problems)
    return spec


def check_reprompt(
    steps: list[Step], call: CallSpec, file: Path, locations: Locations
) -> list[Problem]:
    """A reprompt (``call.reprompt_after_secs``) needs a step that speaks text (a ``tts``)."""
    if call.reprompt_after_secs is None:
        return []
    speaks = any(
        step.spec.consumes is not None
        and FrameKind.TEXT in step.spec.consumes
        and step.spec.emits is not None
        and FrameKind.AUDIO_OUT in step.spec.emits
        for step in steps
    )
    if speaks:
        return []
    return [
        Problem(
            file,
            locations.line(("call", "reprompt_after_secs")),
            "call.reprompt_after_secs",
            call.reprompt_after_secs,
            "the reprompt is spoken by the pipeline's tts, and this pipeline has none",
            "add a tts step, or remove call.reprompt_after_secs",
        )
    ]


def check_pipeline(
    path: str | Path,
    *,
    env: Mapping[str, str] | None = None,
    registry: Registry | None = None,
) -> tuple[PipelineSpec | None, list[Problem]]:
    """Run every check on ``path``; returns the spec (None if it cannot be built) and problems."""
    file = Path(path)
    registry = registry or default_registry()
    env = dict(os.environ) if env is None else env
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        return None, [Problem(file, None, "", NO_VALUE, f"cannot read file: {exc.strerror}")]

    data, locations, problems = load_yaml(text, file, env)
    if data is None:
        return None, problems
    if not isinstance(data, dict):
        problems.append(
            Problem(
                file,
                1,
                "",
                NO_VALUE,
                "a pipeline file must be a mapping",
                "start with `name:`, `transport:` and `processors:`",
            )
        )
        return None, problems

    raw_processors = data.get("processors")
    try:
        shape = PipelineFile.model_validate(data)
    except ValidationError as exc:
        problems.extend(pydantic_problems(exc, locations, (), PipelineFile))
        shape = None

    transport = _load_transport(data, file, locations, env, problems)
    audio = shape.audio if shape else AudioSpec()
    if transport is not None and shape is not None:
        for key in ("in_rate", "out_rate"):
            rate = getattr(audio, key)
            if rate not in transport.rates:
                problems.append(
                    Problem(
                        file,
                        locations.line(("audio", key)),
                        f"audio.{key}",
                        rate,
                        f"transport {transport.name!r} does not carry {rate} Hz audio",
                        f"use one of {transport.rates}",
                    )
                )

    _import_modules(data.get("imports"), file, locations, problems)
    steps: list[Step] = []
    if isinstance(raw_processors, list):
        for index, entry in enumerate(raw_processors):
            step = _resolve_step(entry, index, registry, locations, problems)
            if step is not None:
                steps.append(step)
        if transport is not None and len(steps) == len(raw_processors):
            problems.extend(check_neighbours(steps, transport, file, locations))
        if shape is not None:
            problems.extend(check_input_rates(steps, audio.in_rate, file))
            problems.extend(check_reprompt(steps, shape.call, file, locations))

    problems = _tidy(problems)
    if problems or shape is None or transport is None:
        return None, problems
    return PipelineSpec(shape.name, file, transport, shape.audio, shape.call, steps, env), []


def _import_modules(
    modules: object, file: Path, locations: Locations, problems: list[Problem]
) -> None:
    """Import ``imports:`` modules, looking in the pipeline file's folder first."""
    if not isinstance(modules, list):
        return
    folder = str(file.resolve().parent)
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        for index, name in enumerate(modules):
            try:
                importlib.import_module(str(name))
            except Exception as exc:
                problems.append(
                    Problem(
                        file,
                        locations.line(("imports", index)),
                        f"imports[{index}]",
                        name,
                        f"cannot import module: {type(exc).__name__}: {exc}",
                        f"put {name}.py next to the pipeline file, or install it",
                    )
                )
    finally:
        if added:
            sys.path.remove(folder)


def _load_transport(
    data: dict[str, Any],
    file: Path,
    locations: Locations,
    env: Mapping[str, str],
    problems: list[Problem],
) -> TransportProfile | None:
    name = data.get("transport")
    if not isinstance(name, str) or not name:
        return None
    profile_path = find_transport(name, file)
    line = locations.line(("transport",))
    if profile_path is None:
        problems.append(
            Problem(
                file,
                line,
                "transport",
                name,
                f"no transport profile {name!r}",
                f"create transports/{name}.yaml next to or above the pipeline's folder, "
                f"or set {TRANSPORTS_DIR_ENV}",
            )
        )
        return None
    pdata, plocs, pproblems = load_yaml(profile_path.read_text(encoding="utf-8"), profile_path, env)
    problems.extend(pproblems)
    if not isinstance(pdata, dict):
        return None
    try:
        return TransportProfile.model_validate(pdata)
    except ValidationError as exc:
        problems.extend(pydantic_problems(exc, plocs, (), TransportProfile))
        return None


def _resolve_step(
    entry: object,
    index: int,
    registry: Registry,
    locations: Locations,
    problems: list[Problem],
) -> Step | None:
    file = locations.file
    base: KeyPath = ("processors", index)
    line = locations.line(base)
    raw: object
    if isinstance(entry, str):
        name, raw = entry, {}
    elif isinstance(entry, dict) and len(entry) == 1:
        name, raw = next(iter(entry.items()))
        raw = {} if raw is None else raw
    else:
        problems.append(
            Problem(
                file,
                line,
                format_path(base),
                entry,
                "a processor entry is one name, or one mapping name → params",
                "write `- stt: {provider: local}` or `- echo`",
            )
        )
        return None
    path: KeyPath = (*base, name)
    try:
        spec = registry.get(name)
    except LookupError as exc:
        message, hint = exc.args if len(exc.args) == 2 else (str(exc), "")
        problems.append(Problem(file, locations.line(path), format_path(path), name, message, hint))
        return None
    if not isinstance(raw, dict):
        problems.append(
            Problem(
                file,
                locations.line(path),
                format_path(path),
                raw,
                "params must be a mapping",
                f"write `- {name}: {{key: value}}`",
            )
        )
        return None

    values = dict(raw)
    if spec.needs_provider_key:
        chosen = values.pop("provider", spec.default_provider)
        if chosen is None:
            problems.append(
                Problem(
                    file,
                    locations.line(path),
                    f"{format_path(path)}.provider",
                    NO_VALUE,
                    f"{name} needs a provider",
                    f"add `provider:` with one of: {', '.join(sorted(spec.providers))}",
                )
            )
            return None
        if chosen not in spec.providers:
            problems.append(
                Problem(
                    file,
                    locations.line((*path, "provider")),
                    f"{format_path(path)}.provider",
                    chosen,
                    f"unknown provider for {name}",
                    f"use one of: {', '.join(sorted(spec.providers))}",
                )
            )
            return None
        prov = spec.providers[chosen]
    else:
        prov = spec.providers[DEFAULT]
    try:
        params = prov.params.model_validate(values)
    except ValidationError as exc:
        problems.extend(pydantic_problems(exc, locations, path, prov.params))
        return None
    # A params model may check what pydantic cannot, such as the files it names:
    # `def check(self, base_dir: Path) -> list[Problem]` (base_dir: the pipeline file's folder).
    check = getattr(params, "check", None)
    if callable(check):
        problems.extend(check(file.resolve().parent))
    return Step(spec, prov, params, locations.line(path))


def check_input_rates(steps: list[Step], in_rate: int, file: Path) -> list[Problem]:
    """Providers that cannot run at the pipeline's input rate (Silero: 8 or 16 kHz only)."""
    problems = []
    for step in steps:
        rates = step.provider.input_rates
        if rates is not None and in_rate not in rates:
            problems.append(
                Problem(
                    file,
                    step.line,
                    f"{step.name}.provider",
                    step.provider.name,
                    f"{step.name} {step.provider.name!r} runs at "
                    f"{' or '.join(str(r) for r in rates)} Hz, not audio.in_rate {in_rate}",
                    f"set audio.in_rate: {max(rates)} (the transport resamples the call to it)",
                )
            )
    return problems


def _tidy(problems: list[Problem]) -> list[Problem]:
    """Sort by place; drop type errors caused by an unset ``${VAR}`` (already reported)."""
    unset = {(p.file, p.key) for p in problems if p.message.startswith("environment variable")}
    kept = [
        p
        for p in problems
        if (p.file, p.key) not in unset or p.message.startswith("environment variable")
    ]
    return sorted(kept, key=lambda p: (str(p.file), p.line or 0))


def check_neighbours(
    steps: list[Step], transport: TransportProfile, file: Path, locations: Locations
) -> list[Problem]:
    """Kinds flow downstream: what a processor does not swallow passes on to the next one."""
    problems: list[Problem] = []
    available = set(transport.emits)
    unknown_before: str | None = None
    for index, step in enumerate(steps):
        spec = step.spec
        consumes = spec.consumes
        if consumes and unknown_before is None and not (consumes & available):
            prev = steps[index - 1].name if index else f"transport {transport.name!r}"
            problems.append(
                Problem(
                    file,
                    step.line,
                    f"processors[{index}].{step.name}",
                    step.name,
                    f"{step.name} consumes {_fmt(consumes)} but nothing before it produces that "
                    f"(before it: {_fmt(available)})",
                    f"move it after a processor that emits {_fmt(consumes)}, "
                    f"or check the order around {prev}",
                )
            )
        if spec.emits is None:
            unknown_before = unknown_before or step.name
            continue
        available = (available - spec.swallows) | set(spec.emits)
    wanted = set(transport.consumes)
    if wanted and unknown_before is None and not (wanted & available):
        last = steps[-1] if steps else None
        problems.append(
            Problem(
                file,
                last.line if last else locations.line(("processors",)),
                "processors",
                NO_VALUE,
                f"transport {transport.name!r} sends {_fmt(wanted)} but no processor produces it",
                "end the pipeline with a processor that emits it (e.g. tts for audio_out)",
            )
        )
    return problems


def _fmt(kinds: set[FrameKind] | frozenset[FrameKind]) -> str:
    return ", ".join(sorted(k.value for k in kinds)) or "nothing"


def pydantic_problems(
    exc: ValidationError, locations: Locations, base: KeyPath, model: type[BaseModel]
) -> list[Problem]:
    """One :class:`Problem` per pydantic error, placed at the offending key's line."""
    out: list[Problem] = []
    for err in exc.errors():
        loc: KeyPath = tuple(p for p in err["loc"] if isinstance(p, str | int))
        path = (*base, *loc)
        kind = err["type"]
        value: object
        if kind == "extra_forbidden":
            message, value = "unknown key", loc[-1] if loc else NO_VALUE
            fields = _fields_at(model, loc[:-1])
            close = difflib.get_close_matches(str(value), fields, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            hint += f"known keys: {', '.join(fields)}" if fields else "remove it"
        elif kind == "missing":
            message, value = "required key is missing", NO_VALUE
            hint = f"add `{loc[-1]}:`" if loc else "add it"
        else:
            message, value = err["msg"].lower(), err.get("input", NO_VALUE)
            hint = _TYPE_HINTS.get(kind, "")
        out.append(
            Problem(locations.file, locations.line(path), format_path(path), value, message, hint)
        )
    return out


def _fields_at(model: type[BaseModel], loc: KeyPath) -> list[str]:
    """Field names of the (nested) model at ``loc``, for "did you mean" hints."""
    for part in loc:
        if not isinstance(part, str) or part not in model.model_fields:
            return []
        annotation = model.model_fields[part].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


_TYPE_HINTS = {
    "float_parsing": "expected a number, e.g. 0.2",
    "int_parsing": "expected a whole number",
    "bool_parsing": "expected true or false",
    "string_type": "expected a string",
    "literal_error": "use one of the allowed values",
    "list_type": "expected a list: one `- item` per line",
    "dict_type": "expected a mapping: `key: value` lines",
    "too_short": "add at least one item",
}
