"""Configuration problems: what is wrong, where, and how to fix it.

Every check in ``voicebot.build`` reports :class:`Problem` objects instead of raising on the first
mistake, so a user sees every problem of a file in one run.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a configuration file.

    ``line`` is 1-based (as editors show it) or None when the problem has no place in the file
    (e.g. the file is missing). ``key`` is a dotted path such as ``processors[1].stt.language``.
    """

    file: Path
    line: int | None
    key: str
    value: object
    message: str
    hint: str = ""

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else f"{self.file}"
        key = f" {self.key}:" if self.key else ""
        value = "" if self.value is NO_VALUE else f" (got {self.value!r})"
        text = f"{where}:{key} {self.message}{value}"
        if self.hint:
            text += f"\n    hint: {self.hint}"
        return text


class _NoValue:
    def __repr__(self) -> str:
        return "<no value>"


#: Marker for problems about a missing value (nothing to show after "got").
NO_VALUE: object = _NoValue()


class ConfigError(Exception):
    """Raised when a configuration file has problems; carries all of them."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = list(problems)
        count = len(self.problems)
        body = "\n".join(str(p) for p in self.problems)
        super().__init__(f"{count} problem{'s' if count != 1 else ''}:\n{body}")
