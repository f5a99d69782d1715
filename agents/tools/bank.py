"""The bank's tools: identity checks on demo customer data, balances, payments, support.

Customer records come from ``data/customers.yaml`` next to this folder and are never changed:
what a call does (a verified caller, a payment) lives in that call's memory.
"""

from __future__ import annotations

import datetime
import functools
from pathlib import Path
from typing import Any, Literal

import yaml

from voicebot.agents import ToolContext, tool

MAX_ATTEMPTS = 3


@functools.cache
def _customers(store_dir: Path) -> tuple[dict[str, Any], ...]:
    with open(store_dir / "data" / "customers.yaml", encoding="utf-8") as file:
        return tuple(yaml.safe_load(file)["customers"])


def _money(amount: float) -> str:
    return f"${amount:,.2f}"


def _day(iso: str) -> str:
    day = datetime.date.fromisoformat(iso)
    return f"{day:%B} {day.day}, {day.year}"


def _not_verified() -> dict[str, str]:
    return {"error": "I need to verify your identity first."}


@tool(timeout_secs=3, redact=["pin", "date_of_birth", "account_number"])
async def verify_identity(
    ctx: ToolContext,
    account_number: str,
    pin: str | None = None,
    date_of_birth: str | None = None,
    goal: Literal["billing", "support"] | None = None,
) -> Any:
    """Verify the caller with their account number and either their PIN or date of birth.

    Args:
        account_number: The caller's account number, digits only.
        pin: The caller's four-digit PIN, if they gave it.
        date_of_birth: The caller's date of birth as YYYY-MM-DD, if they gave it.
        goal: What the caller wants help with, if they said: billing or support.
    """
    memory = ctx.memory
    for secret in ("pin", "date_of_birth"):  # never keep secrets in the call's memory
        memory.pop(secret, None)
    if not (pin or date_of_birth):
        return {"verified": False, "error": "ask for the PIN or the date of birth"}
    account = "".join(ch for ch in account_number if ch.isdigit())
    match = next(
        (
            c
            for c in _customers(ctx.store_dir)
            if c["account_number"] == account
            and ((pin and c["pin"] == pin.strip()) or c["date_of_birth"] == date_of_birth)
        ),
        None,
    )
    if match is None:
        attempts = memory.get("auth_attempts", 0) + 1
        memory["auth_attempts"] = attempts
        memory.pop("account_number", None)
        if attempts >= MAX_ATTEMPTS:
            return ctx.end_call(
                "I'm sorry, I couldn't verify your identity. For your security I'll end this "
                "call now. Please call back, or visit a branch. Goodbye.",
                reason=f"identity check failed {attempts} times",
                result={"verified": False, "attempts_left": 0},
            )
        return {"verified": False, "attempts_left": MAX_ATTEMPTS - attempts}
    memory["verified"] = True
    memory["customer"] = {
        key: match[key] for key in ("first_name", "last_name", "email", "balance", "last_payment")
    }
    memory["customer"]["account_number"] = account
    memory.pop("auth_attempts", None)
    result = {"verified": True, "first_name": match["first_name"]}
    target = goal or memory.get("goal")
    if target in ("billing", "support"):
        return ctx.handoff(target, result=result, reason=f"verified; caller wants {target}")
    return result


@tool(timeout_secs=3)
async def get_balance(ctx: ToolContext) -> dict[str, Any]:
    """Look up the verified caller's current balance."""
    customer = ctx.memory.get("customer")
    if not ctx.memory.get("verified") or not customer:
        return _not_verified()
    return {"balance": customer["balance"], "balance_text": _money(customer["balance"])}


@tool(timeout_secs=3)
async def get_last_payment(ctx: ToolContext) -> dict[str, Any]:
    """Look up the verified caller's most recent payment."""
    customer = ctx.memory.get("customer")
    if not ctx.memory.get("verified") or not customer:
        return _not_verified()
    last = customer["last_payment"]
    return {
        "amount": last["amount"],
        "date": last["date"],
        "amount_text": _money(last["amount"]),
        "date_text": _day(last["date"]),
    }


@tool(timeout_secs=5)
async def make_payment(ctx: ToolContext, amount: float) -> dict[str, Any]:
    """Take a payment towards the verified caller's balance, from their account on file.

    Args:
        amount: The amount to pay, in dollars.
    """
    customer = ctx.memory.get("customer")
    if not ctx.memory.get("verified") or not customer:
        return _not_verified()
    if amount <= 0:
        return {"error": "The amount must be more than zero."}
    if amount > customer["balance"]:
        return {"error": f"That is more than your balance of {_money(customer['balance'])}."}
    payments = ctx.memory.setdefault("payments", [])
    confirmation = f"P{len(payments) + 1:03d}{customer['account_number'][-4:]}"
    customer["balance"] = round(customer["balance"] - amount, 2)
    customer["last_payment"] = {"amount": amount, "date": datetime.date.today().isoformat()}
    payments.append({"amount": amount, "confirmation": confirmation})
    return {
        "paid": amount,
        "paid_text": _money(amount),
        "new_balance": customer["balance"],
        "new_balance_text": _money(customer["balance"]),
        "confirmation": confirmation,
    }


@tool(timeout_secs=5)
async def reset_password(ctx: ToolContext) -> dict[str, Any]:
    """Send a password reset link to the verified caller's email address on file."""
    customer = ctx.memory.get("customer")
    if not ctx.memory.get("verified") or not customer:
        return _not_verified()
    domain = customer["email"].partition("@")[2]
    return {"sent_to": f"your email address at {domain}", "valid_hours": 24}


@tool(timeout_secs=5)
async def open_ticket(ctx: ToolContext, summary: str) -> dict[str, Any]:
    """Open a support ticket for the verified caller's problem.

    Args:
        summary: One sentence describing the caller's problem.
    """
    if not ctx.memory.get("verified"):
        return _not_verified()
    tickets = ctx.memory.setdefault("tickets", [])
    ticket = f"T-{1001 + len(tickets)}"
    tickets.append({"ticket": ticket, "summary": summary})
    return {"ticket": ticket, "response_time": "two business days"}
