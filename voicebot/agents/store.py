"""Load and check an agent store: a folder of agent YAML, Jinja prompts and tool modules.

Like pipelines, a store is checked in layers and every problem of every file is reported at
once, each with file, line, key, value and a hint:

1. YAML syntax and ``${VAR}`` references (``store.yaml`` and every ``<agent>.yaml``);
2. each file's shape (unknown keys, wrong types, bad regular expressions);
3. tool modules import, and each ``@tool`` is well-formed;
4. templates compile (prompts, greetings, rule texts, ``if`` expressions);
5. references: the entry agent, tools, handoff targets, tools and handoffs of rules, slots named
   by ``heard``;
6. every agent can be reached from the entry agent through handoffs.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import os
import sys
import traceback
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

from jinja2 import ChainableUndefined, FileSystemLoader, Template, TemplateNotFound
from jinja2 import TemplateSyntaxError as JinjaSyntaxError
from jinja2.sandbox import SandboxedEnvironment
from pydantic import BaseModel, ValidationError

from voicebot.agents.policy import Policy, Rule, phrase_pattern
from voicebot.agents.schema import HUMAN, AgentFile, HandoffSpec, PolicySpec, StoreFile
from voicebot.agents.tools import ToolSpec, tools_in
from voicebot.build.loader import pydantic_problems
from voicebot.build.problems import NO_VALUE, ConfigError, Problem
from voicebot.build.yamlsource import KeyPath, Locations, format_path, load_yaml

M = TypeVar("M", bound=BaseModel)

STORE_FILE = "store.yaml"
#: Tool names the router defines itself: ``end_call`` and ``transfer_to_<agent>``.
END_CALL = "end_call"
TRANSFER_PREFIX = "transfer_to_"


@dataclass
class Agent:
    """One agent of a loaded store, with its templates compiled."""

    spec: AgentFile
    file: Path
    prompt: Template | None
    greeting: Template | None
    return_greeting: Template | None
    policy: Policy

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def handoffs(self) -> dict[str, HandoffSpec]:
        """Allowed targets (agents or ``human``) by name."""
        return {h.to: h for h in self.spec.handoffs}


@dataclass
class AgentStore:
    """A loaded, checked agent store; read-only, shared by every call of the process."""

    dir: Path
    spec: StoreFile
    agents: dict[str, Agent]
    tools: dict[str, ToolSpec]
    shared: Policy
    human_say: Template
    human_unavailable: Template
    templates: SandboxedEnvironment = field(repr=False)

    @property
    def entry(self) -> str:
        return self.spec.entry

    def agent(self, name: str) -> Agent:
        return self.agents[name]


def load_store(path: str | Path, *, env: Mapping[str, str] | None = None) -> AgentStore:
    """Load the store in folder ``path``; raises :class:`ConfigError` listing every problem."""
    store, problems = check_store(path, env=env)
    if problems or store is None:
        raise ConfigError(problems)
    return store


def template_environment(folder: Path) -> SandboxedEnvironment:
    """The Jinja environment of a store: sandboxed, ``{% include %}`` from the store folder,
    and undefined names rendering as nothing (memory fills in as the call goes)."""
    return SandboxedEnvironment(
        loader=FileSystemLoader(str(folder)),
        undefined=ChainableUndefined,
        autoescape=False,
        keep_trailing_newline=False,
    )


def check_store(
    path: str | Path, *, env: Mapping[str, str] | None = None
) -> tuple[AgentStore | None, list[Problem]]:
    """Run every check on the store in folder ``path``; returns the store (None if it cannot be
    used) and every problem found."""
    return _Checker(Path(path), dict(os.environ) if env is None else env).run()


@dataclass
class _Loaded:
    data: dict[str, Any]
    locations: Locations


class _Checker:
    def __init__(self, folder: Path, env: Mapping[str, str]) -> None:
        self.folder = folder
        self.env = env
        self.problems: list[Problem] = []
        self.templates = template_environment(folder)

    def problem(
        self,
        file: Path,
        line: int | None,
        key: KeyPath | str,
        value: object,
        message: str,
        hint: str = "",
    ) -> None:
        text = key if isinstance(key, str) else format_path(key)
        self.problems.append(Problem(file, line, text, value, message, hint))

    # -- the layers -----------------------------------------------------------------------------

    def run(self) -> tuple[AgentStore | None, list[Problem]]:
        if not self.folder.is_dir():
            self.problem(
                self.folder,
                None,
                "",
                NO_VALUE,
                "agent store folder not found",
                "give the folder holding store.yaml and one <agent>.yaml per agent",
            )
            return None, self.problems
        store_file = self.folder / STORE_FILE
        store_raw = self._load(store_file)
        store_spec = self._validate(store_raw, StoreFile, store_file)
        agents_raw: dict[Path, _Loaded | None] = {
            p: self._load(p)
            for p in sorted(self.folder.glob("*.yaml"))
            if p.name != STORE_FILE and not p.name.startswith("_")
        }
        specs: dict[str, tuple[AgentFile, _Loaded]] = {}
        for file, loaded in agents_raw.items():
            spec = self._validate(loaded, AgentFile, file)
            if spec is None or loaded is None:
                continue
            if spec.name != file.stem:
                self.problem(
                    file,
                    loaded.locations.line(("name",)),
                    "name",
                    spec.name,
                    f"agent name differs from its file name {file.name!r}",
                    f"name the file {spec.name}.yaml, or write `name: {file.stem}`",
                )
            if spec.name in specs:
                self.problem(
                    file,
                    loaded.locations.line(("name",)),
                    "name",
                    spec.name,
                    f"agent {spec.name!r} is defined twice",
                    f"also in {specs[spec.name][1].locations.file.name}",
                )
                continue
            specs[spec.name] = (spec, loaded)
        if not agents_raw:
            self.problem(
                self.folder,
                None,
                "",
                NO_VALUE,
                "the store has no agents",
                "add one <agent>.yaml per agent next to store.yaml",
            )
        tools = self._load_tools(store_spec, store_raw)

        shared = (
            self._policy(store_spec.policy, store_raw, ("policy",), "store.yaml")
            if store_spec is not None and store_raw is not None
            else Policy()
        )
        agents: dict[str, Agent] = {}
        for name, (spec, loaded) in specs.items():
            agents[name] = self._agent(spec, loaded)
        human_say = human_unavailable = None
        if store_spec is not None and store_raw is not None:
            human_say = self._template(
                store_spec.human.say, store_raw, ("human", "say"), store_file
            )
            human_unavailable = self._template(
                store_spec.human.unavailable, store_raw, ("human", "unavailable"), store_file
            )
            self._check_entry(store_spec, store_raw, specs)
            self._check_shared_rules(store_spec.policy, store_raw, specs, tools)
        for spec, loaded in specs.values():
            self._check_references(spec, loaded, specs, tools, store_spec)
        if store_spec is not None and store_spec.entry in specs:
            self._check_reachable(store_spec.entry, specs)

        if self.problems or store_spec is None or human_say is None or human_unavailable is None:
            return None, sorted(self.problems, key=lambda p: (str(p.file), p.line or 0))
        return (
            AgentStore(
                dir=self.folder,
                spec=store_spec,
                agents=agents,
                tools=tools,
                shared=shared,
                human_say=human_say,
                human_unavailable=human_unavailable,
                templates=self.templates,
            ),
            [],
        )

    def _load(self, file: Path) -> _Loaded | None:
        try:
            text = file.read_text(encoding="utf-8")
        except FileNotFoundError:
            self.problem(
                file,
                None,
                "",
                NO_VALUE,
                "file not found",
                "create it with at least `entry: <agent name>`" if file.name == STORE_FILE else "",
            )
            return None
        except OSError as exc:
            self.problem(file, None, "", NO_VALUE, f"cannot read file: {exc.strerror}")
            return None
        data, locations, problems = load_yaml(text, file, self.env)
        self.problems.extend(problems)
        if data is None:
            return None
        if not isinstance(data, dict):
            self.problem(file, 1, "", NO_VALUE, "the file must be a mapping of keys to values")
            return None
        if problems:
            return None
        return _Loaded(data, locations)

    def _validate(self, loaded: _Loaded | None, model: type[M], file: Path) -> M | None:
        if loaded is None:
            return None
        try:
            return model.model_validate(loaded.data)
        except ValidationError as exc:
            for problem in pydantic_problems(exc, loaded.locations, (), model):
                self.problems.append(_with_alias_keys(problem))
            # Check the rest of the file without the keys in error (already reported), so one
            # bad key does not hide the file's other problems or make the agent "unknown".
            bad = {e["loc"][0] for e in exc.errors() if e["loc"]}
            rest = {k: v for k, v in loaded.data.items() if k not in bad}
            if "name" in bad and model is AgentFile:
                rest["name"] = file.stem
            try:
                return model.model_validate(rest)
            except ValidationError:
                return None

    # -- tools ----------------------------------------------------------------------------------

    def _load_tools(
        self, store_spec: StoreFile | None, store_raw: _Loaded | None
    ) -> dict[str, ToolSpec]:
        tools: dict[str, ToolSpec] = {}
        where: dict[str, str] = {}
        modules: list[tuple[ModuleType, str]] = []
        folder = self.folder / "tools"
        for file in sorted(folder.glob("*.py")) if folder.is_dir() else []:
            if file.name.startswith("_"):
                continue
            module = self._import_file(file)
            if module is not None:
                modules.append((module, str(file.relative_to(self.folder))))
        if store_spec is not None and store_raw is not None:
            for index, name in enumerate(store_spec.imports):
                try:
                    modules.append((importlib.import_module(name), name))
                except Exception as exc:
                    self.problem(
                        store_raw.locations.file,
                        store_raw.locations.line(("imports", index)),
                        ("imports", index),
                        name,
                        f"cannot import module: {type(exc).__name__}: {exc}",
                        "check the module is installed or on PYTHONPATH",
                    )
        for module, origin in modules:
            for spec in tools_in(module):
                if spec.name == END_CALL or spec.name.startswith(TRANSFER_PREFIX):
                    self.problem(
                        Path(getattr(module, "__file__", None) or origin),
                        _def_line(spec),
                        spec.name,
                        spec.name,
                        "this tool name is reserved for the router's own tools",
                        f"rename it (not {END_CALL!r}, not starting with {TRANSFER_PREFIX!r})",
                    )
                    continue
                if spec.name in tools and tools[spec.name] is not spec:
                    self.problem(
                        Path(getattr(module, "__file__", None) or origin),
                        _def_line(spec),
                        spec.name,
                        spec.name,
                        f"tool {spec.name!r} is defined twice",
                        f"also in {where[spec.name]}; rename one (@tool(name=...))",
                    )
                    continue
                tools[spec.name] = spec
                where[spec.name] = origin
        return tools

    def _import_file(self, file: Path) -> ModuleType | None:
        digest = hashlib.sha1(str(file.parent.resolve()).encode()).hexdigest()[:10]
        name = f"_voicebot_store_{digest}.{file.stem}"
        spec = importlib.util.spec_from_file_location(name, file)
        if spec is None or spec.loader is None:
            self.problem(file, None, "", NO_VALUE, "cannot load this file as a Python module")
            return None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except SyntaxError as exc:
            del sys.modules[name]
            self.problem(
                file, exc.lineno, "", NO_VALUE, f"Python syntax error: {exc.msg}", "fix the code"
            )
            return None
        except Exception as exc:
            del sys.modules[name]
            line = next(
                (
                    frame.lineno
                    for frame in reversed(traceback.extract_tb(exc.__traceback__))
                    if Path(frame.filename) == file
                ),
                None,
            )
            self.problem(
                file,
                line,
                "",
                NO_VALUE,
                f"importing the tool module failed: {type(exc).__name__}: {exc}",
                "a tool module must import cleanly; "
                "a @tool function must be `async def f(ctx: ToolContext, ...)`",
            )
            return None
        return module

    # -- templates and policies -----------------------------------------------------------------

    def _template(
        self, text: str | None, loaded: _Loaded, key: KeyPath, file: Path
    ) -> Template | None:
        if not text:
            return None
        try:
            return self.templates.from_string(text)
        except JinjaSyntaxError as exc:
            self._jinja_problem(exc, text, loaded, key)
            return None

    def _jinja_problem(
        self, exc: JinjaSyntaxError, text: str, loaded: _Loaded, key: KeyPath
    ) -> None:
        line = loaded.locations.line(key)
        if line is not None and "\n" in text.strip():
            line += exc.lineno  # a block scalar starts on the line after its key
        self.problem(
            loaded.locations.file,
            line,
            key,
            text if len(text) <= 80 else text[:77] + "...",
            f"Jinja template error: {exc.message}",
            "check the {{ ... }} and {% ... %} around it",
        )

    def _agent(self, spec: AgentFile, loaded: _Loaded) -> Agent:
        file = loaded.locations.file
        prompt: Template | None = None
        if spec.prompt:
            prompt = self._prompt(spec.prompt, loaded)
        return Agent(
            spec=spec,
            file=file,
            prompt=prompt,
            greeting=self._template(spec.greeting, loaded, ("greeting",), file),
            return_greeting=self._template(
                spec.return_greeting, loaded, ("return_greeting",), file
            ),
            policy=self._policy(spec.policy, loaded, ("policy",), file.name),
        )

    def _prompt(self, relative: str, loaded: _Loaded) -> Template | None:
        line = loaded.locations.line(("prompt",))
        if self.folder.resolve() not in (self.folder / relative).resolve().parents:
            self.problem(
                loaded.locations.file,
                line,
                "prompt",
                relative,
                "the prompt must be inside the store folder",
                "write a path such as prompts/billing.jinja",
            )
            return None
        try:
            return self.templates.get_template(Path(relative).as_posix())
        except TemplateNotFound:
            known = sorted(
                str(p.relative_to(self.folder)) for p in self.folder.glob("prompts/*.jinja")
            )
            close = difflib.get_close_matches(relative, known, n=1)
            self.problem(
                loaded.locations.file,
                line,
                "prompt",
                relative,
                "prompt template not found",
                (f"did you mean {close[0]}? " if close else "")
                + "paths are relative to the store folder",
            )
        except JinjaSyntaxError as exc:
            self.problem(
                Path(exc.filename) if exc.filename else self.folder / relative,
                exc.lineno,
                "",
                NO_VALUE,
                f"Jinja template error: {exc.message}",
                "check the {{ ... }} and {% ... %} around this line",
            )
        return None

    def _policy(self, spec: PolicySpec, loaded: _Loaded, base: KeyPath, origin: str) -> Policy:
        file = loaded.locations.file
        rules: list[Rule] = []
        for index, rule in enumerate(spec.rules):
            key: KeyPath = (*base, "rules", index)
            condition = None
            if rule.if_:
                try:
                    condition = self.templates.compile_expression(rule.if_)
                except JinjaSyntaxError as exc:
                    self.problem(
                        file,
                        loaded.locations.line((*key, "if")),
                        (*key, "if"),
                        rule.if_,
                        f"`if` is not a valid expression: {exc.message}",
                        "write a Jinja expression, e.g. `account_number and not verified`",
                    )
            rules.append(
                Rule(
                    spec=rule,
                    index=index,
                    when=[phrase_pattern(p) for p in rule.when],
                    condition=condition,
                    say=self._template(rule.say, loaded, (*key, "say"), file),
                    args=self._values(rule.args, loaded, (*key, "args")),
                    remember=self._values(rule.remember, loaded, (*key, "remember")),
                    origin=f"{origin}#{index}",
                )
            )
        return Policy(
            slots=dict(spec.slots),
            rules=rules,
            fallback=self._template(spec.fallback, loaded, (*base, "fallback"), file),
        )

    def _values(self, values: dict[str, Any], loaded: _Loaded, key: KeyPath) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, value in values.items():
            if isinstance(value, str) and ("{{" in value or "{%" in value):
                out[name] = self._template(value, loaded, (*key, name), loaded.locations.file)
            else:
                out[name] = value
        return out

    # -- references -----------------------------------------------------------------------------

    def _check_entry(
        self, store: StoreFile, loaded: _Loaded, specs: dict[str, tuple[AgentFile, _Loaded]]
    ) -> None:
        if store.entry not in specs:
            self._unknown_agent(
                loaded, ("entry",), store.entry, specs, "the entry agent is not in the store"
            )

    def _unknown_agent(
        self,
        loaded: _Loaded,
        key: KeyPath,
        name: str,
        specs: Mapping[str, object],
        message: str,
        extra: Iterable[str] = (),
    ) -> None:
        known = sorted([*specs, *extra])
        close = difflib.get_close_matches(name, known, n=1)
        self.problem(
            loaded.locations.file,
            loaded.locations.line(key),
            key,
            name,
            message,
            (f"did you mean {close[0]}? " if close else "") + f"agents: {', '.join(known)}",
        )

    def _unknown_tool(
        self, loaded: _Loaded, key: KeyPath, name: str, tools: Mapping[str, ToolSpec]
    ) -> None:
        close = difflib.get_close_matches(name, tools, n=1)
        listed = ", ".join(sorted(tools)) or "none"
        self.problem(
            loaded.locations.file,
            loaded.locations.line(key),
            key,
            name,
            f"unknown tool {name!r}",
            (f"did you mean {close[0]}? " if close else "")
            + f"tools in the store's tools/ folder: {listed}",
        )

    def _check_references(
        self,
        spec: AgentFile,
        loaded: _Loaded,
        specs: dict[str, tuple[AgentFile, _Loaded]],
        tools: dict[str, ToolSpec],
        store: StoreFile | None,
    ) -> None:
        for index, name in enumerate(spec.tools):
            if name not in tools:
                self._unknown_tool(loaded, ("tools", index), name, tools)
        targets = set()
        for index, handoff in enumerate(spec.handoffs):
            targets.add(handoff.to)
            if handoff.to == spec.name:
                self.problem(
                    loaded.locations.file,
                    loaded.locations.line(("handoffs", index)),
                    ("handoffs", index),
                    handoff.to,
                    "an agent cannot hand off to itself",
                    "remove it",
                )
            elif handoff.to != HUMAN and handoff.to not in specs:
                self._unknown_agent(
                    loaded,
                    ("handoffs", index),
                    handoff.to,
                    specs,
                    "unknown handoff target",
                    extra=[HUMAN],
                )
        slots = set(spec.policy.slots) | set(store.policy.slots if store else {})
        for index, rule in enumerate(spec.policy.rules):
            key: KeyPath = ("policy", "rules", index)
            if rule.tool and rule.tool not in spec.tools:
                if rule.tool not in tools:
                    self._unknown_tool(loaded, (*key, "tool"), rule.tool, tools)
                else:
                    self.problem(
                        loaded.locations.file,
                        loaded.locations.line((*key, "tool")),
                        (*key, "tool"),
                        rule.tool,
                        f"the rule calls {rule.tool!r}, which this agent's `tools:` do not list",
                        f"add {rule.tool} to tools:",
                    )
            if rule.handoff and rule.handoff not in targets:
                self.problem(
                    loaded.locations.file,
                    loaded.locations.line((*key, "handoff")),
                    (*key, "handoff"),
                    rule.handoff,
                    f"the rule hands off to {rule.handoff!r}, which this agent's `handoffs:` "
                    "do not list",
                    f"allowed: {', '.join(sorted(targets)) or 'none'}; add it to handoffs:",
                )
            self._check_heard(rule.heard, slots, loaded, (*key, "heard"))

    def _check_heard(
        self, heard: list[str], slots: set[str], loaded: _Loaded, key: KeyPath
    ) -> None:
        for index, name in enumerate(heard):
            if name not in slots:
                self.problem(
                    loaded.locations.file,
                    loaded.locations.line((*key, index)),
                    (*key, index),
                    name,
                    "`heard` names a slot the policy does not extract",
                    f"declared slots: {', '.join(sorted(slots)) or 'none'}; add it to slots:",
                )

    def _check_shared_rules(
        self,
        policy: PolicySpec,
        loaded: _Loaded,
        specs: dict[str, tuple[AgentFile, _Loaded]],
        tools: dict[str, ToolSpec],
    ) -> None:
        for index, rule in enumerate(policy.rules):
            key: KeyPath = ("policy", "rules", index)
            if rule.tool and rule.tool not in tools:
                self._unknown_tool(loaded, (*key, "tool"), rule.tool, tools)
            if rule.handoff and rule.handoff != HUMAN and rule.handoff not in specs:
                self._unknown_agent(
                    loaded,
                    (*key, "handoff"),
                    rule.handoff,
                    specs,
                    "unknown handoff target",
                    extra=[HUMAN],
                )
            self._check_heard(rule.heard, set(policy.slots), loaded, (*key, "heard"))

    def _check_reachable(self, entry: str, specs: dict[str, tuple[AgentFile, _Loaded]]) -> None:
        seen = {entry}
        pending = [entry]
        while pending:
            for handoff in specs[pending.pop()][0].handoffs:
                if handoff.to in specs and handoff.to not in seen:
                    seen.add(handoff.to)
                    pending.append(handoff.to)
        for name, (_, loaded) in specs.items():
            if name not in seen:
                self.problem(
                    loaded.locations.file,
                    loaded.locations.line(("name",)),
                    "name",
                    name,
                    f"agent {name!r} cannot be reached from the entry agent {entry!r}",
                    f"list {name} under `handoffs:` of an agent reachable from {entry}, "
                    "or remove the file",
                )


def _with_alias_keys(problem: Problem) -> Problem:
    """pydantic names the ``if`` field ``if_``; show it as written."""
    if ".if_" in problem.key or problem.key.endswith("if_"):
        return Problem(
            problem.file,
            problem.line,
            problem.key.replace("if_", "if"),
            problem.value,
            problem.message,
            problem.hint.replace("if_", "if"),
        )
    return problem


def _def_line(spec: ToolSpec) -> int | None:
    code = getattr(spec.function, "__code__", None)
    return code.co_firstlineno if code is not None else None
