"""YAML with line numbers and ``${VAR}`` substitution.

:func:`load_yaml` turns a file into plain Python data plus a :class:`Locations` map from key paths
to lines, so later checks (pydantic, the registry) can point at the exact line of a bad value.

Environment substitution applies to string scalars only: ``${VAR}`` must be set,
``${VAR:-default}`` falls back to ``default`` when ``VAR`` is unset or empty, and ``$${`` is a
literal ``${``. Substituted values stay strings; the params models convert them, so
``stop_secs: ${VAD_STOP:-0.2}`` gives 0.2 and ``enabled: ${FLAG:-false}`` gives False.
A reference that is a whole value may stand unquoted even inside ``{...}`` or ``[...]``
(``{deployment: ${DEPLOYMENT:-gpt-4o-mini}}``), where YAML itself would not allow the braces.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from voicebot.build.problems import NO_VALUE, Problem

#: A key path into loaded YAML data: mapping keys and list indexes.
KeyPath = tuple[str | int, ...]

_VAR = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
# An unquoted ${...} that is a whole value: after "key: ", "- ", "[" or "{" or ",", and followed by
# the end of the value. Quoting it lets YAML parse it in flow collections; lines do not move.
_BARE_VAR = re.compile(
    r"(?<=[:\[{,-] )(\$\{[A-Za-z_][A-Za-z0-9_]*(?::-[^}\n]*)?\})(?=[ \t]*(?:[,}\]]|#|$))",
    re.MULTILINE,
)


@dataclass
class Locations:
    """Line numbers (1-based) of every key and value in a YAML document, by key path."""

    file: Path
    lines: dict[KeyPath, int] = field(default_factory=dict)

    def line(self, path: KeyPath) -> int | None:
        """Line of ``path``, or of its nearest ancestor that has one."""
        while True:
            if path in self.lines:
                return self.lines[path]
            if not path:
                return None
            path = path[:-1]


def format_path(path: KeyPath) -> str:
    """``("processors", 1, "stt", "language")`` → ``processors[1].stt.language``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def substitute(
    text: str, env: Mapping[str, str], *, on_missing: Any = None
) -> tuple[str, list[str]]:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in ``text``; returns the text and unset names."""
    missing: list[str] = []

    def repl(match: re.Match[str]) -> str:
        if match.group(0) == "$${":
            return "${"
        name, default = match.group(1), match.group(2)
        value = env.get(name)
        if value:
            return value
        if default is not None:
            return default
        missing.append(name)
        return ""

    return _VAR.sub(repl, text), missing


class _Builder:
    def __init__(self, file: Path, env: Mapping[str, str]) -> None:
        self.locations = Locations(file)
        self.problems: list[Problem] = []
        self._env = env
        self._constructor = yaml.SafeLoader("")

    def build(self, node: yaml.Node, path: KeyPath) -> Any:
        self.locations.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        assert isinstance(node, yaml.ScalarNode)
        if node.tag == "tag:yaml.org,2002:str" and "$" in node.value:
            return self._substituted(node, path)
        return self._constructor.construct_object(node, deep=True)

    def _mapping(self, node: yaml.MappingNode, path: KeyPath) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = self._constructor.construct_object(key_node, deep=True)
            key = str(key)
            child = (*path, key)
            if key in out:
                self.problems.append(
                    Problem(
                        self.locations.file,
                        key_node.start_mark.line + 1,
                        format_path(child),
                        NO_VALUE,
                        "duplicate key",
                        "each key may appear once in a mapping; remove one of them",
                    )
                )
            self.locations.lines[child] = key_node.start_mark.line + 1
            out[key] = self.build(value_node, child)
        return out

    def _substituted(self, node: yaml.ScalarNode, path: KeyPath) -> Any:
        text, missing = substitute(node.value, self._env)
        for name in missing:
            self.problems.append(
                Problem(
                    self.locations.file,
                    node.start_mark.line + 1,
                    format_path(path),
                    node.value,
                    f"environment variable {name} is not set and has no default",
                    f"set {name}, or give a default: ${{{name}:-value}}",
                )
            )
        return text


def load_yaml(
    text: str, file: Path, env: Mapping[str, str]
) -> tuple[Any, Locations, list[Problem]]:
    """Parse one YAML document; returns (data, locations, problems).

    A syntax error yields ``data=None`` and one problem at the error's line.
    """
    try:
        node = yaml.compose(_BARE_VAR.sub(r'"\1"', text), Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        message = f"YAML syntax error: {exc.problem or exc}"
        hint = "check indentation, colons and quotes around this line"
        if line is not None and "${" in "".join(text.splitlines()[max(0, line - 2) : line]):
            hint = 'inside {...} or [...], quote ${VAR} references: key: "${VAR}"'
        return None, Locations(file), [Problem(file, line, "", NO_VALUE, message, hint)]
    if node is None:
        return None, Locations(file), [Problem(file, 1, "", NO_VALUE, "file is empty")]
    builder = _Builder(file, env)
    data = builder.build(node, ())
    return data, builder.locations, builder.problems
