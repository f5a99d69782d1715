"""The offline policy: intents declared in agent YAML, matched on what the caller said.

Pure and synchronous: :func:`decide` reads one utterance and the call's memory and returns a
:class:`Choice` of what the bot does next (say something, call a tool with extracted slots,
hand off, end the call). :class:`~voicebot.agents.engine.PolicyLLMService` turns that into the
frames and function calls an LLM would produce.

Slots are extracted before rules are tried, most specific first (dates, amounts, regexes, then
digit runs), each taking its span of the text, so the year of a date of birth never becomes a
PIN. Spoken digits ("one two three four", "oh") and simple number words ("fifty", "twenty five",
"one hundred twenty") are read as numbers.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from jinja2 import Template
from loguru import logger

from voicebot.agents.schema import RuleSpec, SlotSpec

# --------------------------------------------------------------------------------------------
# Normalising what the caller said
# --------------------------------------------------------------------------------------------

_UNITS = {
    "zero": 0,
    "oh": 0,
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
}
_TEENS = {
    "ten": 10,
    "eleven": 11,
    "twelve": 12,
    "thirteen": 13,
    "fourteen": 14,
    "fifteen": 15,
    "sixteen": 16,
    "seventeen": 17,
    "eighteen": 18,
    "nineteen": 19,
}
_TENS = {
    "twenty": 20,
    "thirty": 30,
    "forty": 40,
    "fifty": 50,
    "sixty": 60,
    "seventy": 70,
    "eighty": 80,
    "ninety": 90,
}
_SCALES = {"hundred": 100, "thousand": 1000}
_NUMBER_WORD = "|".join(sorted([*_UNITS, *_TEENS, *_TENS, *_SCALES], key=len, reverse=True))
_NUMBER_RUN = re.compile(rf"\b(?:{_NUMBER_WORD})(?:(?:\s+|-)(?:and\s+)?(?:{_NUMBER_WORD}))*\b")


def _number_from_words(words: list[str]) -> str | None:
    """Digits for a run of number words: a digit sequence or one compound number; else None."""
    if all(w in _UNITS for w in words):
        if words == ["oh"]:
            return None  # an interjection, not a zero
        return "".join(str(_UNITS[w]) for w in words)
    total, current = 0, 0
    last: str | None = None  # kind of the previous word: unit, teen, tens, scale
    for word in words:
        if word in _UNITS and last in (None, "tens", "scale") and word != "oh":
            current += _UNITS[word]
            last = "unit"
        elif word in _TEENS and last in (None, "scale"):
            current += _TEENS[word]
            last = "teen"
        elif word in _TENS and last in (None, "scale"):
            current += _TENS[word]
            last = "tens"
        elif word == "hundred" and last in ("unit", "teen") and current < 100:
            current *= 100
            last = "scale"
        elif word == "thousand" and last is not None and total == 0:
            total += max(current, 1) * 1000
            current = 0
            last = "scale"
        else:
            return None
    return str(total + current)


def normalize(text: str) -> str:
    """Lower-case ``text`` with number words as digits and digit groups joined.

    ``"My PIN is one two three four."`` → ``"my pin is 1234."``; ``"1, 2, 3, 4"`` → ``"1234"``;
    ``"1234 5678"`` → ``"12345678"``; ``"fifty dollars"`` → ``"50 dollars"``. Digits keyed on
    the phone (``"DTMF: 1234#"``, as the ``agents`` processor passes them on) → ``"1234"``.
    """
    keyed = _KEYED.fullmatch(text.strip())
    if keyed:
        return keyed.group(1)
    lowered = text.lower().replace("\u2019", "'")

    def words(match: re.Match[str]) -> str:
        parts = [w for w in re.split(r"[\s-]+", match.group(0)) if w and w != "and"]
        digits = _number_from_words(parts)
        return match.group(0) if digits is None else digits

    converted = _NUMBER_RUN.sub(words, lowered)
    # Digits read out one by one, as speech recognisers write them: "1, 2, 3, 4" → "1234"
    # ("1,234" keeps its thousands separator: no space after the comma).
    converted = _SPOKEN_DIGITS.sub(lambda m: re.sub(r"\D", "", m.group(0)), converted)
    return re.sub(r"\b\d+(?:[ -]\d+)+\b", lambda m: re.sub(r"[ -]", "", m.group(0)), converted)


_SPOKEN_DIGITS = re.compile(r"\b\d(?:,?\s+\d)+\b")
#: A keypad entry as pipecat's ``DTMFAggregator`` writes it: the keys, ending at ``#``.
_KEYED = re.compile(r"DTMF:\s*([0-9*]*)#?", re.IGNORECASE)


# --------------------------------------------------------------------------------------------
# Slot extraction
# --------------------------------------------------------------------------------------------

_MONTHS = {
    name: index
    for index, names in enumerate(
        [
            ("january", "jan"),
            ("february", "feb"),
            ("march", "mar"),
            ("april", "apr"),
            ("may",),
            ("june", "jun"),
            ("july", "jul"),
            ("august", "aug"),
            ("september", "sep", "sept"),
            ("october", "oct"),
            ("november", "nov"),
            ("december", "dec"),
        ],
        start=1,
    )
    for name in names
}
_MONTH = "|".join(sorted(_MONTHS, key=len, reverse=True))
_ORD = r"(?:st|nd|rd|th)?"
_DATE_FORMS: list[tuple[re.Pattern[str], Callable[[re.Match[str]], tuple[int, int, int]]]] = [
    (
        re.compile(r"\b(\d{4})-(\d{1,2})-(\d{1,2})\b"),
        lambda m: (int(m[1]), int(m[2]), int(m[3])),
    ),
    (
        re.compile(r"\b(\d{1,2})/(\d{1,2})/(\d{4})\b"),  # US order: month/day/year
        lambda m: (int(m[3]), int(m[1]), int(m[2])),
    ),
    (
        re.compile(rf"\b({_MONTH})\.?\s+(\d{{1,2}}){_ORD},?\s+(\d{{4}})\b"),
        lambda m: (int(m[3]), _MONTHS[m[1]], int(m[2])),
    ),
    (
        re.compile(rf"\b(\d{{1,2}}){_ORD}\s+(?:of\s+)?({_MONTH})\.?,?\s+(\d{{4}})\b"),
        lambda m: (int(m[3]), _MONTHS[m[2]], int(m[1])),
    ),
]
_AMOUNT_FORMS = [
    re.compile(r"\$\s?(\d[\d,]*(?:\.\d{1,2})?)"),
    re.compile(
        r"\b(\d[\d,]*(?:\.\d{1,2})?)\s*(?:dollars?|bucks|usd)\b"
        r"(?:\s*(?:and\s+)?(\d{1,2})\s*cents?\b)?"
    ),
    re.compile(r"\b()(\d{1,2})\s*cents?\b"),
]


@dataclass
class _Text:
    """The utterance, with spans already taken by a slot blanked out."""

    value: str

    def take(self, match: re.Match[str]) -> None:
        start, end = match.span()
        self.value = self.value[:start] + " " * (end - start) + self.value[end:]


def _extract_date(text: _Text) -> str | None:
    for pattern, parts in _DATE_FORMS:
        for match in pattern.finditer(text.value):
            try:
                found = datetime.date(*parts(match))
            except ValueError:
                continue
            text.take(match)
            return found.isoformat()
    return None


def _extract_amount(text: _Text) -> float | None:
    for pattern in _AMOUNT_FORMS:
        match = pattern.search(text.value)
        if match:
            whole = (match.group(1) or "0").replace(",", "")
            cents = match.group(2) if pattern.groups >= 2 and match.group(2) else "0"
            text.take(match)
            return round(float(whole) + int(cents) / 100, 2)
    return None


def _extract_digits(text: _Text, spec: SlotSpec) -> str | None:
    for match in re.finditer(r"\d+", text.value):
        digits = match.group(0)
        if (spec.min is None or len(digits) >= spec.min) and (
            spec.max is None or len(digits) <= spec.max
        ):
            text.take(match)
            return digits
    return None


def _extract_regex(text: _Text, spec: SlotSpec) -> str | None:
    assert spec.pattern is not None
    match = re.search(spec.pattern, text.value)
    if match is None:
        return None
    text.take(match)
    return match.group(1) if match.groups() else match.group(0)


_ORDER = {"date": 0, "amount": 1, "regex": 2, "digits": 3}


def extract_slots(slots: Mapping[str, SlotSpec], normalized: str) -> dict[str, Any]:
    """The slots found in ``normalized`` (see :func:`normalize`), most specific kinds first."""
    text = _Text(normalized)
    found: dict[str, Any] = {}
    for name, spec in sorted(slots.items(), key=lambda item: _ORDER[item[1].extract]):
        value: Any
        if spec.extract == "date":
            value = _extract_date(text)
        elif spec.extract == "amount":
            value = _extract_amount(text)
        elif spec.extract == "regex":
            value = _extract_regex(text, spec)
        else:
            value = _extract_digits(text, spec)
        if value is not None:
            found[name] = value
    return found


# --------------------------------------------------------------------------------------------
# Rules
# --------------------------------------------------------------------------------------------


def phrase_pattern(phrase: str) -> re.Pattern[str]:
    """The regular expression for one ``when`` phrase (see :class:`RuleSpec`)."""
    if phrase.startswith("re:"):
        return re.compile(phrase[3:])
    words = phrase.lower().split()
    parts = [re.escape(w[:-1]) + r"\w*" if w.endswith("*") else re.escape(w) for w in words]
    tail = "" if words and words[-1].endswith("*") else r"\b"
    return re.compile(r"\b" + r"\s+".join(parts) + tail)


@dataclass
class Rule:
    """A compiled :class:`RuleSpec`."""

    spec: RuleSpec
    index: int
    when: list[re.Pattern[str]]
    condition: Callable[..., Any] | None
    say: Template | None
    args: dict[str, Template | Any]
    remember: dict[str, Template | Any]
    origin: str
    """Where the rule comes from, for the decision log: ``billing.yaml#3`` or ``store.yaml#0``."""

    @property
    def label(self) -> str:
        return self.spec.name or self.origin


@dataclass
class Policy:
    """A compiled :class:`PolicySpec`: slots, rules in order, and the fallback."""

    slots: dict[str, SlotSpec] = field(default_factory=dict)
    rules: list[Rule] = field(default_factory=list)
    fallback: Template | None = None


@dataclass
class Choice:
    """What the policy decided for one utterance.

    ``say`` is already rendered, except for tool rules, whose ``rule.say`` is rendered with the
    tool's result once it comes back.
    """

    rule: Rule | None
    heard: dict[str, Any]
    say: str = ""
    tool: str | None = None
    args: dict[str, Any] = field(default_factory=dict)
    handoff: str | None = None
    mode: str | None = None
    end: bool = False


def template_context(memory: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    """Names a template or ``if`` sees: memory keys, ``memory`` itself, and ``extra``."""
    return {**memory, "memory": memory, **extra}


def render(template: Template | Any, context: Mapping[str, Any]) -> Any:
    """Render a template (strings are compiled templates); other values pass unchanged."""
    if isinstance(template, Template):
        return template.render(context).strip()
    return template


def decide(
    utterance: str,
    memory: dict[str, Any],
    policies: list[Policy],
    *,
    fallback: Template | None = None,
    allowed: Callable[[Rule], bool] = lambda rule: True,
    tool_params: Callable[[str], list[str]] = lambda name: [],
    extra: Mapping[str, Any] | None = None,
) -> Choice:
    """Choose the bot's next step for ``utterance``; updates ``memory`` with what was heard.

    Rules of ``policies`` are tried in order (the store's shared rules, then the agent's own);
    slots of all of them are extracted first. ``allowed`` skips rules the agent cannot carry out
    (e.g. a shared rule handing off to an agent this one may not hand off to). A tool rule's
    arguments are ``args``, plus the tool's parameters (named by ``tool_params``) found in memory.
    ``fallback`` is said when no rule applies. Templates see memory, ``heard``, ``utterance`` and
    ``extra``.
    """
    normalized = normalize(utterance)
    slots: dict[str, SlotSpec] = {}
    for policy in policies:
        for name, spec in policy.slots.items():
            slots.setdefault(name, spec)
    heard = extract_slots(slots, normalized)
    memory.update(heard)
    base = {**(extra or {}), "heard": heard, "utterance": utterance}
    for policy in policies:
        for rule in policy.rules:
            if not allowed(rule) or not _applies(rule, normalized, heard, memory, base):
                continue
            choice = Choice(rule, heard)
            context = template_context(memory, **base)
            for key, value in rule.remember.items():
                memory[key] = render(value, context)
            if rule.spec.tool:
                choice.tool = rule.spec.tool
                choice.args = {
                    name: memory[name] for name in tool_params(rule.spec.tool) if name in memory
                }
                context = template_context(memory, **base)
                choice.args.update({k: render(v, context) for k, v in rule.args.items()})
            for key in rule.spec.forget:
                memory.pop(key, None)
            if not rule.spec.tool:
                choice.say = _render_safely(rule.say, template_context(memory, **base), rule.label)
                choice.handoff = rule.spec.handoff
                choice.mode = rule.spec.mode
                choice.end = rule.spec.end
            return choice
    return Choice(
        None, heard, say=_render_safely(fallback, template_context(memory, **base), "fallback")
    )


def _applies(
    rule: Rule,
    normalized: str,
    heard: Mapping[str, Any],
    memory: Mapping[str, Any],
    extra: Mapping[str, Any],
) -> bool:
    if rule.when and not any(p.search(normalized) for p in rule.when):
        return False
    if any(name not in heard for name in rule.spec.heard):
        return False
    if rule.condition is not None:
        try:
            return bool(rule.condition(**template_context(memory, **extra)))
        except Exception as exc:
            logger.warning(f"policy rule {rule.label}: `if` failed: {type(exc).__name__}: {exc}")
            return False
    return True


def _render_safely(template: Template | None, context: Mapping[str, Any], label: str) -> str:
    if template is None:
        return ""
    try:
        return str(render(template, context))
    except Exception as exc:
        logger.warning(f"policy {label}: rendering failed: {type(exc).__name__}: {exc}")
        return ""


def render_reply(rule: Rule, memory: Mapping[str, Any], result: Any, **extra: Any) -> str:
    """The ``say`` of a tool rule, rendered with the tool's ``result``."""
    context = template_context(memory, result=result, **extra)
    return _render_safely(rule.say, context, rule.label)
