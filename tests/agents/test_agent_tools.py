"""Tools: typed parameters become the LLM's JSON schema; failures become results, not crashes."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Literal

import pytest

from voicebot.agents import EndCall, Handoff, ToolContext, tool
from voicebot.agents.tools import ToolSpec, make_spec, redacted, run_tool


@tool(timeout_secs=2, redact=["card"])
async def pay(
    ctx: ToolContext,
    amount: float,
    card: str,
    method: Literal["card", "bank"] = "card",
    note: str | None = None,
    attempts: int = 1,
) -> dict[str, object]:
    """Take a payment from the caller.

    Args:
        amount: How much to pay, in dollars.
        card: The card number.
        method: How to pay.
        note: A note for the statement.
        attempts: How many tries.
    """
    ctx.memory["paid"] = amount
    return {"paid": amount, "card": card, "method": method, "attempts": attempts}


@tool
async def explode(ctx: ToolContext) -> None:
    """Always fails."""
    raise RuntimeError("database is down")


@tool(timeout_secs=0.05)
async def hang(ctx: ToolContext) -> None:
    """Never answers."""
    await asyncio.sleep(10)


@tool(name="pass_on")
async def hand_over(ctx: ToolContext, to: str) -> Handoff:
    """Hand over."""
    return ctx.handoff(to, result={"ok": True}, reason="asked")


def spec_of(function: object) -> ToolSpec:
    spec = getattr(function, "__voicebot_tool__", None)
    assert isinstance(spec, ToolSpec)
    return spec


def context() -> ToolContext:
    return ToolContext("call-1", "billing", {}, Path("."))


def test_typed_parameters_become_the_json_schema() -> None:
    schema = spec_of(pay).schema()
    assert schema.name == "pay"
    assert schema.description == "Take a payment from the caller."
    assert schema.required == ["amount", "card"]
    assert schema.properties == {
        "amount": {"type": "number", "description": "How much to pay, in dollars."},
        "card": {"type": "string", "description": "The card number."},
        "method": {"type": "string", "enum": ["card", "bank"], "description": "How to pay."},
        "note": {"type": "string", "description": "A note for the statement."},
        "attempts": {"type": "integer", "description": "How many tries."},
    }
    assert schema.to_default_dict()["parameters"]["required"] == ["amount", "card"]


def test_decorator_options() -> None:
    assert spec_of(pay).timeout_secs == 2
    assert spec_of(pay).redact == {"card"}
    assert spec_of(hand_over).name == "pass_on"
    assert spec_of(explode).timeout_secs == 5.0


def test_a_tool_must_be_async_and_take_ctx_first() -> None:
    def not_async(ctx: ToolContext) -> None: ...

    async def no_ctx(amount: float) -> None: ...

    with pytest.raises(TypeError, match="must be an async function"):
        make_spec(not_async)
    with pytest.raises(TypeError, match="first parameter must be named 'ctx'"):
        make_spec(no_ctx)


async def test_arguments_are_checked_and_converted() -> None:
    ctx = context()
    outcome = await run_tool(spec_of(pay), ctx, {"amount": "12.5", "card": 4111, "extra": 1})
    assert outcome.error is None
    assert outcome.result == {"paid": 12.5, "card": "4111", "method": "card", "attempts": 1}
    assert ctx.memory == {"paid": 12.5}


async def test_bad_arguments_are_an_error_result() -> None:
    outcome = await run_tool(spec_of(pay), context(), {"amount": "lots", "method": "cash"})
    assert outcome.error is not None
    message = outcome.result["error"]
    assert message.startswith("invalid arguments for pay: ")
    assert "amount: input should be a valid number" in message
    assert "card: field required" in message
    assert "method: input should be 'card' or 'bank'" in message


async def test_a_raising_tool_is_an_error_result() -> None:
    outcome = await run_tool(spec_of(explode), context(), {})
    assert outcome.error == "explode failed: RuntimeError: database is down"
    assert outcome.result == {"error": "explode failed; apologise and offer another way"}


async def test_a_hanging_tool_times_out() -> None:
    outcome = await run_tool(spec_of(hang), context(), {})
    assert outcome.error == "hang did not answer within 0.05 s"
    assert "did not answer" in outcome.result["error"]
    assert outcome.latency_ms < 1000


async def test_actions_are_returned_with_their_result() -> None:
    outcome = await run_tool(spec_of(hand_over), context(), {"to": "support"})
    assert outcome.action == Handoff("support", {"ok": True}, "asked")
    assert outcome.result == {"ok": True}
    ended = await run_tool(make_spec(_goodbye), context(), {})
    assert isinstance(ended.action, EndCall) and ended.action.say == "Bye."


async def _goodbye(ctx: ToolContext) -> EndCall:
    """End."""
    return ctx.end_call("Bye.", reason="done")


def test_redaction_masks_sensitive_keys() -> None:
    value = {
        "account_number": "12345678",
        "pin": "1234",
        "nested": {"card": "4111111111111111", "amount": 5},
        "items": [{"password": "hunter2"}],
    }
    assert redacted(value, frozenset({"card"})) == {
        "account_number": "****5678",
        "pin": "****",
        "nested": {"card": "****1111", "amount": 5},
        "items": [{"password": "****"}],
    }
